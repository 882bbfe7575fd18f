"""Simulated annotators: noisy Bradley-Terry preferences and Llama 2 margin labels.

An annotator perceives the gold difference of two responses with logistic noise,

    d = g(a) - g(b) + T * eps,    eps ~ Logistic(0, 1),

prefers ``a`` when d > 0, so P(a preferred) = sigmoid((g(a) - g(b)) / T) (Bradley & Terry
1952), and labels the margin by |d| against ``MARGIN_THRESHOLDS`` (Llama 2, Touvron et al.
2023, Sec. 3.2.1: "significantly better" .. "negligibly better"). Pairs with equal gold scores
get a coin-flip preference and a margin that says nothing about the pair. Which gold score is
used is the annotator's ``preference``: "helpfulness" and "safety" as in Llama 2's two
preference sets, or "reward" (the gated combination) for ranked lists.

DEFAULT_TEMPERATURE is set so that two independent annotators agree on 72-75% of the pairs of
the generated preference sets (InstructGPT, Ouyang et al. 2022, reports 72.6 +- 1.5% among its
labelers); MARGIN_THRESHOLDS put 15-35% of the pairs in each margin level, and about 94% of
the pairs labelled "significantly better" follow the noise-free gold order (ties count as
misses). ``write_toyworld`` measures all three and records them in manifest.json.

Ranked lists sort by g + T * Gumbel noise, a Plackett-Luce draw with scores g / T whose
pairwise marginals are the same Bradley-Terry preferences.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from rayrlhf.data.schema import MARGIN_LEVELS
from rayrlhf.tasks.toyworld.gold import GOLD

DEFAULT_TEMPERATURE = 0.25
# Lower bounds on the perceived difference |d| for MARGIN_LEVELS[:3]; below the last one the
# label is "negligibly better".
MARGIN_THRESHOLDS = (1.0, 0.55, 0.2)


@dataclass
class Judgement:
    """One annotated comparison. Gold scores are those of the annotator's preference type."""

    chosen: str
    rejected: str
    margin: str  # one of MARGIN_LEVELS
    gold_chosen: float
    gold_rejected: float
    first_preferred: bool  # whether the first response given to ``compare`` was chosen
    perceived: float  # |d|, the perceived difference behind the margin label


def margin_level(perceived: float, thresholds: tuple[float, ...] = MARGIN_THRESHOLDS) -> str:
    """Map a perceived difference |d| >= 0 to a Llama 2 margin label."""
    for level, lower in zip(MARGIN_LEVELS[:-1], thresholds, strict=True):
        if perceived >= lower:
            return level
    return MARGIN_LEVELS[-1]


class Annotator:
    """A seeded simulated labeler; its draws depend only on its seed and call order."""

    def __init__(
        self,
        seed: int | str = 0,
        temperature: float = DEFAULT_TEMPERATURE,
        preference: str = "helpfulness",
        thresholds: tuple[float, ...] = MARGIN_THRESHOLDS,
    ):
        if preference not in GOLD:
            raise ValueError(f"preference must be one of {sorted(GOLD)}, got {preference!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if len(thresholds) != len(MARGIN_LEVELS) - 1 or list(thresholds) != sorted(thresholds, reverse=True):
            raise ValueError(
                f"thresholds must be {len(MARGIN_LEVELS) - 1} decreasing numbers, got {thresholds}"
            )
        self.temperature = temperature
        self.preference = preference
        self.thresholds = thresholds
        self.gold = GOLD[preference]
        self.rng = random.Random(f"toyworld-annotator/{seed}")

    def _uniform(self) -> float:
        u = self.rng.random()
        return u if u > 0.0 else 1e-12

    def compare(self, prompt, a: str, b: str) -> Judgement:
        """Label the pair (a, b) for ``prompt`` (text or messages)."""
        ga, gb = self.gold(prompt, a), self.gold(prompt, b)
        u = self._uniform()
        d = ga - gb + self.temperature * math.log(u / (1.0 - u))  # logistic noise
        first = d > 0 if d != 0 else self.rng.random() < 0.5
        level = margin_level(abs(d), self.thresholds)
        if first:
            return Judgement(a, b, level, ga, gb, True, abs(d))
        return Judgement(b, a, level, gb, ga, False, abs(d))

    def rank(self, prompt, responses: list[str]) -> list[str]:
        """``responses`` ordered best first by g + T * Gumbel (a Plackett-Luce draw)."""
        keys = [
            self.gold(prompt, r) - self.temperature * math.log(-math.log(self._uniform())) for r in responses
        ]
        order = sorted(range(len(responses)), key=lambda i: -keys[i])
        return [responses[i] for i in order]
