"""Demonstrations of judging: preference pairs rendered as the judge's prompt and answer, for
fine-tuning a judge with `rayrlhf sft` (a generative reward model) when no instruction-tuned
judge is at hand: toyworld writes them, and any preference file can be turned into them."""
from __future__ import annotations

import random

from rayrlhf.feedback.judge import conversation_text
from rayrlhf.feedback.template import JudgeTemplate


def judge_sft_rows(template: JudgeTemplate, records: list, seed: int = 0, both: bool = True) -> list[dict]:
    """SFT rows ``{"messages": [user: the judge's prompt, assistant: ending + choice]}`` of each
    pair, ``chosen`` the better one: in both orders (a judge trained so has no position bias to
    learn), or (``both=False``) each in a seeded random order."""
    if template.kind != "pairwise":
        raise ValueError("judge_sft_rows: demonstrations of a pairwise template; this one is kind direct")
    rng = random.Random(f"judge-sft/{seed}")
    rows = []
    for i, r in enumerate(records):
        principles = template.principles_for(seed, i)
        text = conversation_text(r.prompt)
        orders = [True, False] if both else [rng.random() < 0.5]
        for chosen_first in orders:
            first, second = (r.chosen, r.rejected) if chosen_first else (r.rejected, r.chosen)
            answer = template.labels[0 if chosen_first else 1]
            rows.append({"messages": [{"role": "user", "content": template.question(text, first, second, principles)},
                                      {"role": "assistant", "content": template.reply() + answer}]})
    return rows
