"""The pipeline report: ``<run>/report/`` with index.html, report.md and PNG plots.

    rayrlhf report runs/quickstart                  # writes runs/quickstart/report/index.html
    rayrlhf report runs/quickstart/ppo              # one stage's run: runs/quickstart/ppo/report/

``collect`` reads the run folder into plain dicts, ``plots`` draws the figures, ``sections``
says what each part of the run shows, ``page`` writes that as HTML and Markdown.
"""
from __future__ import annotations

import os

from rayrlhf.utils.fs import atomic_dir, recover_dir


def write_report(run_dir: str, out_dir: str | None = None) -> str:
    """Write the report of the pipeline run or stage run in ``run_dir``; returns the path of
    index.html. A folder that holds neither raises ``folders.NoRunError`` and writes nothing.

    The folder (default ``<run_dir>/report``) is built beside its final place and renamed
    over any old report, so a reader sees the old report or the new one, never half of one.
    """
    from rayrlhf.report import collect, page, plots, sections

    out_dir = os.path.abspath(out_dir or os.path.join(run_dir, "report"))
    run = collect.load_run(run_dir)
    recover_dir(out_dir)
    with atomic_dir(out_dir) as tmp:
        blocks = sections.build(run, plots.make_plots(run, tmp))
        with open(os.path.join(tmp, "index.html"), "w", encoding="utf-8") as f:
            f.write(page.to_html(blocks))
        with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as f:
            f.write(page.to_markdown(blocks))
    return os.path.join(out_dir, "index.html")


__all__ = ["write_report"]
