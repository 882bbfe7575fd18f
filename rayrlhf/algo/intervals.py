"""Percentile-bootstrap intervals of figures that are means over prompts.

A held-out figure is the mean over prompts of each prompt's mean over its samples, so the
prompts are the unit that is resampled: ``interval`` draws ``resamples`` sets of as many
prompts as there are, with replacement, and takes the ``(1 - level) / 2`` and
``(1 + level) / 2`` quantiles of their means (the percentile bootstrap; Efron and Tibshirani
1993, chapter 13). A difference between two policies evaluated on the same prompts, such as a
gain over the starting policy, is the mean of the per-prompt differences, and its interval
resamples those differences (``paired_interval``): what is common to both policies on a prompt
cancels, which makes the interval of a difference much narrower than two separate intervals
suggest. Everything is seeded: the same values and seed give the same interval.

Interval keys: a figure ``f`` has ``f_ci_low`` and ``f_ci_high`` beside it (``interval_keys``).
"""
from __future__ import annotations

import numpy as np

CI_LOW, CI_HIGH = "_ci_low", "_ci_high"
CHUNK = 256  # resamples drawn at once, so memory stays (CHUNK, prompts) however many are asked


def is_interval_key(key: str) -> bool:
    return key.endswith((CI_LOW, CI_HIGH))


def per_prompt_means(values, samples_per_prompt: int) -> np.ndarray:
    """Each prompt's mean over its samples; a prompt's samples are consecutive in ``values``.

    Shape: (P * samples_per_prompt,) -> (P,).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if samples_per_prompt < 1 or v.size % samples_per_prompt:
        raise ValueError(f"{v.size} values do not split into groups of {samples_per_prompt} samples per prompt")
    return v.reshape(-1, samples_per_prompt).mean(axis=1)


def bootstrap_means(values, resamples: int, seed: int) -> np.ndarray:
    """Means of ``resamples`` resamples of ``values`` with replacement, each as long as ``values``.

    Shape: (P,) -> (resamples,).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("no values to resample")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        out[start:start + size] = v[rng.integers(0, v.size, size=(size, v.size))].mean(axis=1)
    return out


def interval(values, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its percentile-bootstrap interval at ``level``.

    The quantiles are numpy's default (linear interpolation between order statistics).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    means = bootstrap_means(values, resamples, seed)
    low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(np.mean(np.asarray(values, dtype=np.float64))), float(low), float(high)


def paired_interval(after, before, level: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of ``after - before``, prompt by prompt: both are values of the same
    prompts in the same order, and the interval resamples the per-prompt differences."""
    a, b = np.asarray(after, dtype=np.float64), np.asarray(before, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must be of the same prompts: shapes {a.shape} and {b.shape}")
    return interval(a - b, level, resamples, seed)


def interval_keys(key: str, mean: float, low: float, high: float) -> dict:
    """``{key: mean, key_ci_low: low, key_ci_high: high}``."""
    return {key: mean, key + CI_LOW: low, key + CI_HIGH: high}
