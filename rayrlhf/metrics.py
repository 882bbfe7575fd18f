"""One flat dict of namespaced metrics per step, to the console, metrics.jsonl and TensorBoard.

Keys are namespaced by slash: ``train/loss``, ``eval/ppl``, ``timing/step``. On resume, lines
past the checkpoint's step are dropped first, so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import sys


def _clean(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    def __init__(self, run_dir: str, resume_step: int | None = None, tensorboard: bool = True, echo: bool = True,
                 filename: str = "metrics.jsonl"):
        os.makedirs(run_dir, exist_ok=True)
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
        if self.echo:
            # A plain write: Ray Train patches print() in workers and would echo each line twice.
            sys.stdout.write(format_metrics(step, metrics) + "\n")
            sys.stdout.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


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
