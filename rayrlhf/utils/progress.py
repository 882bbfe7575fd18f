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


class _ActorBar:
    """Ray's tqdm: drawn by the driver, one line per actor's bar, whatever the actor's stdout."""

    def __init__(self, total: int, initial: int, desc: str):
        from ray.experimental.tqdm_ray import tqdm

        self.desc = desc
        self.bar = tqdm(total=total, desc=desc, unit="step")
        self.bar.n = initial

    def update(self, n: int, metrics: dict | None = None) -> None:
        shown = {k.split("/")[-1]: metrics[k] for k in SHOWN + ("train/loss",) if k in (metrics or {})}
        if shown:
            self.bar.set_description(self.desc + " " + " ".join(f"{k}={v:.3g}" for k, v in shown.items()))
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


class _NoBar:
    def update(self, n: int, metrics: dict | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def actor_progress(total: int, initial: int = 0, desc: str = "", enabled: bool = True):
    """A progress bar for a loop inside a Ray actor (Ray's tqdm, shown by the driver); a bar
    that draws nothing when disabled or outside Ray."""
    from rayrlhf.telemetry import ray_active

    return _ActorBar(total, initial, desc) if enabled and ray_active() else _NoBar()
