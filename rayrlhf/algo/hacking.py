"""A reward-hacking alarm: the proxy reward the policy is trained on keeps rising while a signal
it is not trained on falls, or while the responses' length drifts far from where it started.

The watched signal is a gold reward where the task has one (toyworld's ``gold/reward``) or any
per-iteration metric the user names (a held-out reward model scored beside the training ones,
``reward/<name>`` with weight 0). Trends are compared as means over windows of iterations, so
one noisy batch neither fires nor clears the alarm:

    proxy rising    mean of the last ``window`` proxy values > mean of the ``window`` before
    watch falling   best window mean of the watched signal so far - its last window mean >= the
                    larger of min_drop and z standard errors of a difference of two window means
                    (from the spread of the watched values), so batch noise does not fire it
    length drift    last window's mean length / first window's mean length >= length_ratio (or <= 1/it)
    alarm           proxy rising and (watch falling or length drift)

It is a pure function of the per-iteration history (``HackingWatch.state`` is that history), so
a resumed run decides as the uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROXY_KEY = "rollout/reward_mean"
LENGTH_KEY = "rollout/response_length"


@dataclass
class HackingSection:
    """The reward-hacking alarm (``rayrlhf.algo.hacking``): the proxy reward keeps rising while
    the watched signal falls, or the response length drifts, judged over windows of iterations."""

    watch: str = "gold/reward"
    """Per-iteration metric the policy is not trained on: a gold reward (``gold/<name>``) or a
    held-out reward model scored beside the training ones (``reward/<name>``, weight 0). When a
    run has no such metric only the length drift counts; "" turns the alarm off."""
    window: int = 5
    """Iterations each trend is averaged over; the alarm needs two windows of history."""
    min_drop: float = 0.02
    """The watched signal's last window mean at least this far below its best window mean, and
    at least ``z`` standard errors (from the spread of its per-iteration values), counts as falling."""
    z: float = 3.0
    """Standard errors of a difference of two window means a fall must exceed: batch noise must
    not fire the alarm (the best of many noisy window means sits above the rest by chance)."""
    length_ratio: float = 1.5
    """Mean response length this many times (or 1/this of) its first window's mean counts as drift."""
    stop: bool = False
    """End training at the iteration the alarm fires: checkpoint, export and summary as at the end."""

    def validate(self) -> list[str]:
        out = []
        if self.window < 1:
            out.append(f"window: must be at least 1, got {self.window}")
        if self.length_ratio <= 1.0:
            out.append(f"length_ratio: must be above 1, got {self.length_ratio}")
        return out


def alarm_figures(proxy: list[float], watched: list[float], lengths: list[float], s: HackingSection) -> dict:
    """The alarm's figures after the last iteration of these per-iteration series (``watched``
    may be empty: then only the length drift counts). Before two windows of history there is no
    trend and the alarm is 0."""
    w = s.window
    out = {"hacking/alarm": 0.0}
    if len(proxy) < 2 * w:
        return out
    change = float(np.mean(proxy[-w:]) - np.mean(proxy[-2 * w:-w]))
    out["hacking/proxy_change"] = change
    falling = drift = False
    if len(watched) >= w:
        values = np.asarray(watched, dtype=np.float64)
        means = np.convolve(values, np.ones(w) / w, mode="valid")
        drop = float(means.max() - means[-1])
        noise = s.z * float(values.std(ddof=1)) * (2.0 / w) ** 0.5 if len(values) > 1 else 0.0
        out["hacking/watch_drop"], out["hacking/watch_threshold"] = drop, max(s.min_drop, noise)
        falling = drop >= out["hacking/watch_threshold"]
    if len(lengths) >= 2 * w and np.mean(lengths[:w]) > 0:
        ratio = float(np.mean(lengths[-w:]) / np.mean(lengths[:w]))
        out["hacking/length_ratio"] = ratio
        drift = ratio >= s.length_ratio or ratio <= 1.0 / s.length_ratio
    out["hacking/alarm"] = float(change > 0 and (falling or drift))
    return out


class HackingWatch:
    """Feeds each iteration's metrics to ``alarm_figures``; ``state`` / ``load`` keep the history
    with the run's checkpoints."""

    def __init__(self, settings: HackingSection):
        self.s = settings
        self.proxy: list[float] = []
        self.watched: list[float] = []
        self.lengths: list[float] = []
        self.fired_at: int | None = None

    def update(self, step: int, metrics: dict) -> dict:
        if not self.s.watch or PROXY_KEY not in metrics:
            return {}  # watch "": the alarm is off
        self.proxy.append(float(metrics[PROXY_KEY]))
        if self.s.watch in metrics:
            self.watched.append(float(metrics[self.s.watch]))
        if LENGTH_KEY in metrics:
            self.lengths.append(float(metrics[LENGTH_KEY]))
        out = alarm_figures(self.proxy, self.watched, self.lengths, self.s)
        if out["hacking/alarm"] and self.fired_at is None:
            self.fired_at = step
        return out

    def reason(self, figures: dict) -> str:
        parts = [f"the proxy reward rose by {figures.get('hacking/proxy_change', 0.0):.3f} over the last "
                 f"{self.s.window} iterations"]
        if figures.get("hacking/watch_drop", 0.0) >= figures.get("hacking/watch_threshold", float("inf")):
            parts.append(f"{self.s.watch} fell {figures['hacking/watch_drop']:.3f} below its best")
        ratio = figures.get("hacking/length_ratio")
        if ratio is not None and (ratio >= self.s.length_ratio or ratio <= 1.0 / self.s.length_ratio):
            parts.append(f"the responses' length is {ratio:.2f} times its start")
        return "; ".join(parts)

    def state(self) -> dict:
        return {"proxy": self.proxy, "watched": self.watched, "lengths": self.lengths, "fired_at": self.fired_at}

    def load(self, state: dict) -> None:
        self.proxy, self.watched = list(state.get("proxy", [])), list(state.get("watched", []))
        self.lengths, self.fired_at = list(state.get("lengths", [])), state.get("fired_at")
