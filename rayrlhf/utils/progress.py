"""The driver's progress bar: resume-aware (starts at the step counter), a few key metrics."""
from __future__ import annotations

import sys

SHOWN = ("rollout/reward_mean", "kl/per_response", "actor/loss", "timing/step")


class _Bar:
    def __init__(self, total: int, initial: int, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True,
                        disable=not sys.stderr.isatty())

    def update(self, n: int, metrics: dict | None = None) -> None:
        if metrics:
            self.bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3g}" for k in SHOWN if k in metrics}, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def progress(total: int, initial: int = 0, desc: str = "") -> _Bar:
    return _Bar(total, initial, desc)
