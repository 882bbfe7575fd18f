"""One flat dict of namespaced metrics per step, to the console, metrics.jsonl and TensorBoard,
and as Ray gauges to the Ray dashboard and Prometheus (``rayrlhf.telemetry``); to Weights &
Biases too when the run names a W&B project (``run.wandb_project``).

Keys are namespaced by slash: ``train/loss``, ``eval/ppl``, ``timing/step``. On resume, lines
past the checkpoint's step are dropped first, so the file reads as one uninterrupted run.
A run's resolved config goes to W&B as the run's config and to TensorBoard as its
hyper-parameters (``hparams``); held-out samples go to TensorBoard as text (``log_samples``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

from rayrlhf.telemetry import RayMetrics, as_number
from rayrlhf.utils.ray_init import run_name_of


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    def __init__(self, run_dir: str, resume_step: int | None = None, tensorboard: bool = True, echo: bool = True,
                 filename: str = "metrics.jsonl", publish: bool = True, run_name: str | None = None,
                 wandb_project: str | None = None, config: dict | None = None, job_type: str | None = None,
                 wandb_entity: str | None = None, wandb_group: str | None = None):
        """``publish``: mirror each step into Ray gauges tagged ``run=<run_name>`` (the run folder's
        name by default; nothing happens outside Ray). ``wandb_project``: log to that W&B project
        as well, under ``wandb_entity`` and in ``wandb_group`` (a pipeline's stages share one),
        with ``config`` (the resolved config, a plain dict) and ``job_type`` (the command: sft,
        rm, ppo, rs, ...); an error names ``pip install wandb`` when wandb is missing.
        ``config`` is also written to TensorBoard as hyper-parameters, once, when the run starts
        (not on resume). ``run_settings(cfg, kind)`` gives these keywords from a config."""
        os.makedirs(run_dir, exist_ok=True)
        self.run_name = run_name or run_name_of(run_dir)
        self._wandb = start_wandb(wandb_project, self.run_name, run_dir, config=config, job_type=job_type,
                                  entity=wandb_entity, group=wandb_group) if wandb_project else None
        self._ray = RayMetrics(self.run_name) if publish else None
        self.path = os.path.join(run_dir, filename)
        self.echo = echo
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif os.path.exists(self.path):
            os.remove(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = open_tensorboard(run_dir, resume_step) if tensorboard else None
        if self._tb is not None and config is not None and resume_step is None:
            write_hparams(self._tb, config)

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    if json.loads(line).get("step", 0) <= step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut by the crash
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(kept)

    def log(self, step: int, metrics: dict) -> None:
        row = {"step": step, **{k: v if isinstance(v, (list, dict)) else _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
        if self._ray is not None:
            self._ray.publish(metrics)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if k != "step" and as_number(v) is not None}, step=step)
        if self.echo:
            # A plain write: Ray Train patches print() in workers and would echo each line twice.
            sys.stdout.write(format_metrics(step, metrics) + "\n")
            sys.stdout.flush()

    def log_samples(self, step: int, examples: list[dict], tag: str = "eval/samples") -> None:
        """Held-out generations (``prompt``, ``response``, ``reward``, ``gold_reward`` when
        known) as one markdown table under ``tag`` in TensorBoard at ``step``; none, nothing."""
        if self._tb is not None and examples:
            self._tb.add_text(tag, samples_markdown(examples), step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def run_settings(cfg, job_type: str) -> dict:
    """The ``MetricsLogger`` keywords a stage's config decides: its W&B project, entity and
    group (``run.*``), ``job_type`` and the resolved config as a plain dict."""
    run = cfg.run
    return {"config": dataclasses.asdict(cfg), "job_type": job_type, "wandb_project": run.wandb_project,
            "wandb_entity": run.wandb_entity, "wandb_group": run.wandb_group}


def start_wandb(project: str, run_name: str, run_dir: str, config: dict | None = None, job_type: str | None = None,
                entity: str | None = None, group: str | None = None):
    """A W&B run in ``project`` named after the run, its files under the run folder, with the
    run's config, job type (the command), entity and group (the pipeline, for its stages)."""
    try:
        import wandb
    except ImportError:
        raise RuntimeError(f"run.wandb_project is {project!r} but wandb is not installed: pip install wandb "
                           "(or leave run.wandb_project unset)") from None
    return wandb.init(project=project, name=run_name, dir=run_dir, config=config, job_type=job_type,
                      entity=entity, group=group)


def open_tensorboard(run_dir: str, resume_step: int | None):
    """A ``SummaryWriter`` on ``<run_dir>/tensorboard`` (events past ``resume_step`` purged), or
    None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=resume_step)
    except Exception:  # tensorboard is optional at run time
        return None


def hparam_leaves(config: dict, prefix: str = "") -> dict:
    """``{"train": {"lr": 1e-5}}`` -> ``{"train.lr": 1e-5}``: the numbers, strings and booleans
    of a nested config; lists, empty sections and unset (None) values are left out."""
    out = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(hparam_leaves(v, f"{prefix}{k}."))
        elif isinstance(v, (bool, int, float, str)):
            out[f"{prefix}{k}"] = v
    return out


def write_hparams(writer, config: dict) -> None:
    """The config's leaves as the run's hyper-parameters (TensorBoard's HPARAMS tab), written to
    the run's own event file, not the sub-run ``SummaryWriter.add_hparams`` makes; booleans
    show as 1 and 0."""
    from torch.utils.tensorboard.summary import hparams

    for summary in hparams(hparam_leaves(config), {}):
        writer.file_writer.add_summary(summary)


def _cell(value) -> str:
    if value is None:
        return ""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def samples_markdown(examples: list[dict]) -> str:
    """A markdown table of prompt | response | reward, and gold_reward when any example has it."""
    cols = ["prompt", "response", "reward"]
    if any(x.get("gold_reward") is not None for x in examples):
        cols.append("gold_reward")
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(_cell(x.get(c)) for c in cols) + " |" for x in examples]
    return "\n".join(lines)


def format_metrics(step: int, metrics: dict, limit: int = 8) -> str:
    parts = []
    for k, v in list(metrics.items())[:limit]:
        v = _clean(v)
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return f"step {step}: " + " ".join(parts)


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
