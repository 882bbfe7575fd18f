"""A reward-hacking alarm: the proxy reward the policy is trained on keeps rising while a signal
it is not trained on falls, or while the responses' length drifts far from where it started.

The watched signal is a gold reward where the task has one (toyworld's ``gold/reward``) or any
per-iteration metric the user names (a held-out reward model scored beside the training ones,
``reward/<name>`` with weight 0). A second signal needs no gold: the agreement of the proxy
with other reward models (``agree_with``: a held-out one, or replicas of a trained one on other
seeds), each iteration the Spearman rank correlation over its samples between the proxy reward
and each of them, averaged (``hacking/agreement``). While the policy improves, reward models
trained on the same preferences rank its samples alike; once it exploits what one of them got
wrong, they stop agreeing. Trends are compared as means over windows of iterations, so one
noisy batch neither fires nor clears the alarm:

    proxy rising    mean of the last ``window`` proxy values > mean of the ``window`` before
    watch falling   best window mean of the watched signal so far - its last window mean >= the
                    larger of min_drop and z standard errors of a difference of two window means
                    (from the spread of the watched values), so batch noise does not fire it
    agreement falling  the same test on the agreement, with min_agreement_drop
    length drift    last window's mean length / first window's mean length >= length_ratio (or <= 1/it)
    alarm           proxy rising and (watch falling or agreement falling or length drift)

It is a pure function of the per-iteration history (``HackingWatch.state`` is that history), so
a resumed run decides as the uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PROXY_KEY = "rollout/reward_mean"
LENGTH_KEY = "rollout/response_length"
AGREEMENT_KEY = "hacking/agreement"


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
    agree_with: list[str] = field(default_factory=list)
    """Reward sources (names under ``rewards``) whose agreement with the proxy is watched: a
    held-out reward model (weight 0) or replicas of a trained one on other seeds. Each
    iteration's ``hacking/agreement`` is the mean over them of the Spearman rank correlation,
    over the iteration's samples, between the proxy reward and the source's scores (one per
    source as ``hacking/agreement/<name>``); a fall of its window mean counts as the watched
    signal's fall does. Empty: not watched."""
    min_agreement_drop: float = 0.1
    """The agreement's last window mean at least this far below its best (and ``z`` standard
    errors) counts as falling."""
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
        if self.min_agreement_drop <= 0:
            out.append(f"min_agreement_drop: must be above 0, got {self.min_agreement_drop}")
        return out


def check_agree_with(s: HackingSection, sources: list[str], where: str) -> list[str]:
    """``agree_with`` names reward sources of the run, each once."""
    out = [f"{where}.agree_with: {n!r} is not a reward source (sources: {sources})"
           for n in s.agree_with if n not in sources]
    if len(set(s.agree_with)) != len(s.agree_with):
        out.append(f"{where}.agree_with: names a source twice: {s.agree_with}")
    return out


def ranks(x) -> np.ndarray:
    """Ranks 1..n of ``x``, ties sharing their mean rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tied = x == v
        r[tied] = r[tied].mean()
    return r


def spearman(a, b) -> float | None:
    """Spearman's rank correlation of two equal-length series (None when either is constant or
    has fewer than 2 values: no ranking to agree on)."""
    if len(a) < 2 or len(a) != len(b):
        return None
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement_metrics(proxy, scores: dict, names: list[str]) -> dict:
    """``hacking/agreement/<name>`` (Spearman of ``proxy`` and ``scores[name]`` over one
    iteration's samples) for each of ``names``, and their mean ``hacking/agreement``; a source
    whose ranking is undefined this iteration (constant scores) is left out of both."""
    out = {}
    for name in names:
        rho = spearman(list(proxy), list(scores[name]))
        if rho is not None:
            out[f"{AGREEMENT_KEY}/{name}"] = rho
    if out:
        out[AGREEMENT_KEY] = float(np.mean(list(out.values())))
    return out


def _fall(series: list[float], w: int, z: float, min_drop: float) -> tuple[float, float]:
    """How far the last window mean of ``series`` sits below its best, and the threshold a fall
    must reach: the larger of ``min_drop`` and ``z`` standard errors of a difference of two
    window means."""
    values = np.asarray(series, dtype=np.float64)
    means = np.convolve(values, np.ones(w) / w, mode="valid")
    noise = z * float(values.std(ddof=1)) * (2.0 / w) ** 0.5 if len(values) > 1 else 0.0
    return float(means.max() - means[-1]), max(min_drop, noise)


def alarm_figures(proxy: list[float], watched: list[float], lengths: list[float], s: HackingSection,
                  agreement: list[float] = ()) -> dict:
    """The alarm's figures after the last iteration of these per-iteration series (``watched``
    and ``agreement`` may be empty: then they do not count). Before two windows of history there
    is no trend and the alarm is 0."""
    w = s.window
    out = {"hacking/alarm": 0.0}
    if len(proxy) < 2 * w:
        return out
    change = float(np.mean(proxy[-w:]) - np.mean(proxy[-2 * w:-w]))
    out["hacking/proxy_change"] = change
    falling = disagreeing = drift = False
    if len(watched) >= w:
        out["hacking/watch_drop"], out["hacking/watch_threshold"] = _fall(watched, w, s.z, s.min_drop)
        falling = out["hacking/watch_drop"] >= out["hacking/watch_threshold"]
    if len(agreement) >= w:
        out["hacking/agreement_drop"], out["hacking/agreement_threshold"] = _fall(
            list(agreement), w, s.z, s.min_agreement_drop)
        disagreeing = out["hacking/agreement_drop"] >= out["hacking/agreement_threshold"]
    if len(lengths) >= 2 * w and np.mean(lengths[:w]) > 0:
        ratio = float(np.mean(lengths[-w:]) / np.mean(lengths[:w]))
        out["hacking/length_ratio"] = ratio
        drift = ratio >= s.length_ratio or ratio <= 1.0 / s.length_ratio
    out["hacking/alarm"] = float(change > 0 and (falling or disagreeing or drift))
    return out


class HackingWatch:
    """Feeds each iteration's metrics to ``alarm_figures``; ``state`` / ``load`` keep the history
    with the run's checkpoints."""

    def __init__(self, settings: HackingSection):
        self.s = settings
        self.proxy: list[float] = []
        self.watched: list[float] = []
        self.lengths: list[float] = []
        self.agreement: list[float] = []
        self.fired_at: int | None = None

    def update(self, step: int, metrics: dict) -> dict:
        if not self.s.watch or PROXY_KEY not in metrics:
            return {}  # watch "": the alarm is off
        self.proxy.append(float(metrics[PROXY_KEY]))
        if self.s.watch in metrics:
            self.watched.append(float(metrics[self.s.watch]))
        if LENGTH_KEY in metrics:
            self.lengths.append(float(metrics[LENGTH_KEY]))
        if AGREEMENT_KEY in metrics:
            self.agreement.append(float(metrics[AGREEMENT_KEY]))
        out = alarm_figures(self.proxy, self.watched, self.lengths, self.s, self.agreement)
        if out["hacking/alarm"] and self.fired_at is None:
            self.fired_at = step
        return out

    def observe(self, step: int, metrics: dict, unit: str, section: str) -> bool:
        """``update`` with step ``step``'s metrics, its figures added to them; the first time
        the alarm fires, print why (``unit`` names the step, ``section`` the config section);
        True when it fired now and ``stop`` says to end training here."""
        fired_before = self.fired_at
        metrics.update(self.update(step, metrics))
        if self.fired_at is None or fired_before is not None:
            return False
        print(f"[rayrlhf] {unit} {step}: reward-hacking alarm: {self.reason(metrics)}"
              + (f"; stopping here ({section}.hacking.stop)" if self.s.stop else ""), flush=True)
        return self.s.stop

    def reason(self, figures: dict) -> str:
        parts = [f"the proxy reward rose by {figures.get('hacking/proxy_change', 0.0):.3f} over the last "
                 f"{self.s.window} iterations"]
        if figures.get("hacking/watch_drop", 0.0) >= figures.get("hacking/watch_threshold", float("inf")):
            parts.append(f"{self.s.watch} fell {figures['hacking/watch_drop']:.3f} below its best")
        if figures.get("hacking/agreement_drop", 0.0) >= figures.get("hacking/agreement_threshold", float("inf")):
            parts.append(f"its rank agreement with {', '.join(self.s.agree_with)} fell "
                         f"{figures['hacking/agreement_drop']:.3f} below its best")
        ratio = figures.get("hacking/length_ratio")
        if ratio is not None and (ratio >= self.s.length_ratio or ratio <= 1.0 / self.s.length_ratio):
            parts.append(f"the responses' length is {ratio:.2f} times its start")
        return "; ".join(parts)

    def state(self) -> dict:
        return {"proxy": self.proxy, "watched": self.watched, "lengths": self.lengths, "agreement": self.agreement,
                "fired_at": self.fired_at}

    def load(self, state: dict) -> None:
        self.proxy, self.watched = list(state.get("proxy", [])), list(state.get("watched", []))
        self.lengths, self.fired_at = list(state.get("lengths", [])), state.get("fired_at")
        self.agreement = list(state.get("agreement", []))
