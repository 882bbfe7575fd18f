"""One flat dict of namespaced metrics per step, to the console, metrics.jsonl and TensorBoard,
and as Ray gauges to the Ray dashboard and Prometheus (``rayrlhf.telemetry``); to Weights &
Biases too when the run names a W&B project (``run.wandb_project``).

Keys are namespaced by slash: ``train/loss``, ``eval/ppl``, ``timing/step``. On resume, lines
past the checkpoint's step are dropped first, so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import sys

from rayrlhf.telemetry import RayMetrics, as_number


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    def __init__(self, run_dir: str, resume_step: int | None = None, tensorboard: bool = True, echo: bool = True,
                 filename: str = "metrics.jsonl", publish: bool = True, run_name: str | None = None,
                 wandb_project: str | None = None):
        """``publish``: mirror each step into Ray gauges tagged ``run=<run_name>`` (the run folder's
        name by default; nothing happens outside Ray). ``wandb_project``: log to that W&B project
        as well; an error names ``pip install wandb`` when wandb is missing."""
        os.makedirs(run_dir, exist_ok=True)
        self.run_name = run_name or os.path.basename(os.path.normpath(run_dir))
        self._wandb = start_wandb(wandb_project, self.run_name, run_dir) if wandb_project else None
        self._ray = RayMetrics(self.run_name) if publish else None
        self.path = os.path.join(run_dir, filename)
        self.echo = echo
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif os.path.exists(self.path):
            os.remove(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=resume_step)
            except Exception:  # tensorboard is optional at run time
                self._tb = None

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

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def start_wandb(project: str, run_name: str, run_dir: str):
    """A W&B run in ``project`` named after the run, its files under the run folder."""
    try:
        import wandb
    except ImportError:
        raise RuntimeError(f"run.wandb_project is {project!r} but wandb is not installed: pip install wandb "
                           "(or leave run.wandb_project unset)") from None
    return wandb.init(project=project, name=run_name, dir=run_dir)


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
