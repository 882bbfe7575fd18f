"""What the TRL-side scripts share: the work file, the step clock and the result file."""
import argparse
import json
import os
import time

import torch
from transformers import TrainerCallback


def load_work() -> tuple[dict, str]:
    """(work, result path) from ``--work work.json --out result.json``; seeds torch and sets
    its threads as the work says."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    a = parser.parse_args()
    with open(a.work, encoding="utf-8") as f:
        work = json.load(f)
    torch.manual_seed(work["seed"])
    torch.set_num_threads(work["threads"])
    return work, a.out


class StepClock(TrainerCallback):
    """Each step's end time (and the logged value of ``key``), taken at the log calls that carry
    ``key``; the first step's end also leaves ``first_step`` in the output folder, which
    compare.py watches to time start-up as it does rayrlhf's."""

    def __init__(self, out_dir: str, key: str):
        self.ends, self.values, self.key = [], [], key
        self.marker = os.path.join(out_dir, "first_step")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and self.key in logs:
            self.ends.append(time.perf_counter())
            self.values.append(float(logs[self.key]))
            if len(self.ends) == 1:
                open(self.marker, "w").close()

    def step_seconds(self, t_start: float) -> list[float]:
        return [b - a for a, b in zip([t_start] + self.ends[:-1], self.ends)]


def write_result(path: str, t0: float, t_start: float, clock: StepClock, per_step: int, **extra) -> None:
    import trl

    result = {"side": "trl", "version": trl.__version__, "generation": "transformers generate",
              "setup_seconds": t_start - t0, "step_seconds": clock.step_seconds(t_start),
              "samples_per_step": per_step, **extra}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f)
