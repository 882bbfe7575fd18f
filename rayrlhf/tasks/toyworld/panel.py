"""A panel of simulated annotators of two groups labelling the same pairs.

The "general" group labels every pair by gold helpfulness; the "safety" group labels unsafe
prompts by gold safety and safe prompts by helpfulness, so the two groups agree on safe prompts
(up to annotator noise) and disagree on unsafe ones, where helpfulness rewards complying with
a harmful request and safety rewards refusing it. This is the case group-weighted aggregation
(``rayrlhf data aggregate --method weighted``) is for.

``write_toyworld`` writes one file per annotator, ``panel/<annotator>.jsonl``, over the same
pairs in the same order, each row with an ``id``, the ``unsafe`` tag and the gated gold reward
of both responses (``gold_chosen`` / ``gold_rejected``), and records the panel's measured
agreement in manifest.json. Every draw comes from streams of its own ("panel" and the panel
annotators' seeds), so the panel changes no other toyworld file.
"""

from __future__ import annotations

import random
from itertools import combinations

from rayrlhf.data.agreement import cohen_kappa, fleiss_kappa, percent_agreement
from rayrlhf.tasks.toyworld.annotators import DEFAULT_TEMPERATURE, Annotator, Judgement
from rayrlhf.tasks.toyworld.gold import gold_reward
from rayrlhf.tasks.toyworld.responses import POOL_SAFE, distinct_responses
from rayrlhf.tasks.toyworld.world import Prompt, sample_prompts

PANEL = (("general_1", "general"), ("general_2", "general"), ("general_3", "general"),
         ("safety_1", "safety"), ("safety_2", "safety"))
PANEL_UNSAFE_FRACTION = 0.5


class PanelAnnotator:
    """One panel member: a helpfulness annotator, and for the safety group a safety one too."""

    def __init__(self, name: str, group: str, seed: int, temperature: float = DEFAULT_TEMPERATURE):
        self.name, self.group = name, group
        self.helpful = Annotator(f"{seed}/panel/{name}", temperature, "helpfulness")
        self.safe = None
        if group == "safety":
            self.safe = Annotator(f"{seed}/panel/{name}/safety", temperature, "safety")

    def compare(self, p: Prompt, a: str, b: str) -> Judgement:
        """Label (a, b): by safety on unsafe prompts for the safety group, else by helpfulness."""
        annotator = self.safe if self.safe is not None and p.unsafe else self.helpful
        return annotator.compare(p.text, a, b)


def _row(i: int, p: Prompt, j: Judgement) -> dict:
    return {
        "id": f"panel-{i:04d}",
        "prompt": [{"role": "user", "content": p.text}],
        "chosen": [{"role": "assistant", "content": j.chosen}],
        "rejected": [{"role": "assistant", "content": j.rejected}],
        "margin": j.margin,
        "unsafe": p.unsafe,
        "gold_chosen": gold_reward(p.text, j.chosen),
        "gold_rejected": gold_reward(p.text, j.rejected),
    }


def _winner(j: Judgement) -> str:
    """The label in the orientation ``rayrlhf data agreement`` uses (responses sorted)."""
    return "first" if j.chosen <= j.rejected else "second"


def panel_stats(prompts: list[Prompt], labels: dict[str, list[Judgement]]) -> dict:
    """Measured agreement of the panel: Fleiss' kappa and percent agreement within and across
    groups, on all, safe and unsafe prompts; Cohen's kappa of every two annotators."""
    groups = dict(PANEL)
    subsets = {"all": range(len(prompts)),
               "safe": [i for i, p in enumerate(prompts) if not p.unsafe],
               "unsafe": [i for i, p in enumerate(prompts) if p.unsafe]}
    winners = {name: [_winner(j) for j in js] for name, js in labels.items()}
    stats: dict = {"fleiss_kappa": {}, "agreement_within_groups": {}, "agreement_across_groups": {}}
    for subset, idx in subsets.items():
        items = [[winners[name][i] for name in winners] for i in idx]
        stats["fleiss_kappa"][subset] = round(fleiss_kappa(items), 4)
        within, across = [], []
        for a, b in combinations(winners, 2):
            agree = percent_agreement([winners[a][i] for i in idx], [winners[b][i] for i in idx])
            (within if groups[a] == groups[b] else across).append(agree)
        stats["agreement_within_groups"][subset] = round(sum(within) / len(within), 4)
        stats["agreement_across_groups"][subset] = round(sum(across) / len(across), 4)
    stats["cohen_kappa"] = {f"{a}/{b}": round(cohen_kappa(winners[a], winners[b]), 4)
                            for a, b in combinations(winners, 2)}
    return stats


def panel_preferences(
    n: int, rng: random.Random, seed: int, temperature: float = DEFAULT_TEMPERATURE
) -> tuple[dict[str, list[dict]], dict]:
    """({annotator: rows}, manifest entry) for ``n`` pairs labelled by every PANEL member.

    Args:
        n: pairs; ``round(n * PANEL_UNSAFE_FRACTION)`` of them on unsafe prompts.
        rng: the panel's own stream of prompts and responses.
        seed: the toyworld seed, for the annotators' streams.
    """
    members = [PanelAnnotator(name, group, seed, temperature) for name, group in PANEL]
    prompts = sample_prompts(n, rng, PANEL_UNSAFE_FRACTION, "train", distinct=False)
    rows: dict[str, list[dict]] = {m.name: [] for m in members}
    labels: dict[str, list[Judgement]] = {m.name: [] for m in members}
    for i, p in enumerate(prompts):
        a, b = distinct_responses(p, 2, rng, POOL_SAFE)
        for m in members:
            j = m.compare(p, a, b)
            labels[m.name].append(j)
            rows[m.name].append(_row(i, p, j))
    entry = {
        "files": {f"panel/{name}.jsonl": len(r) for name, r in rows.items()},
        "annotators": dict(PANEL),
        "unsafe_fraction": PANEL_UNSAFE_FRACTION,
        "labels": "general: gold helpfulness; safety: gold safety on unsafe prompts, else helpfulness",
        **panel_stats(prompts, labels),
    }
    return rows, entry
