"""What `rayrlhf revise` writes: every round, the accepted revisions as SFT rows and as
preference pairs (revision over original), and the summary."""
from __future__ import annotations

import math
from collections import Counter

from rayrlhf.actors.reward import last_user_text
from rayrlhf.feedback.revise import Item, Round


def accepted_revision(rounds: list[Round]) -> str | None:
    """The item's accepted revision, or None when no round was accepted."""
    return rounds[-1].revision if rounds and rounds[-1].accepted else None


def round_rows(items: list[Item], rounds: list[list[Round]]) -> list[dict]:
    """One row per round of every item, items never accepted included."""
    rows = []
    for it, rs in zip(items, rounds):
        critiqued = it.response
        for r in rs:
            rows.append({"item": r.item, "source": it.where, "round": r.round, "prompt": it.prompt,
                         "critiqued": critiqued, "principle": r.principle, "critique": r.critique,
                         "revision": r.revision, "p_acceptable": r.p_acceptable, "accepted": r.accepted,
                         "reason": r.reason})
            critiqued = r.revision
    return rows


def _carried(it: Item) -> dict:
    return {k: v for k, v in it.meta.items() if k not in ("messages", "prompt", "chosen", "rejected", "source")}


def sft_rows(items: list[Item], rounds: list[list[Round]]) -> list[dict]:
    """Accepted revisions as SFT rows (messages format), with the row's other columns."""
    rows = []
    for it, rs in zip(items, rounds):
        rev = accepted_revision(rs)
        if rev is not None:
            rows.append({"messages": it.prompt + [{"role": "assistant", "content": rev}], **_carried(it),
                         "source": it.where, "revise": {"rounds": len(rs), "p_acceptable": rs[-1].p_acceptable,
                                                        "original": it.response}})
    return rows


def pair_rows(items: list[Item], rounds: list[list[Round]]) -> tuple[list[dict], int]:
    """Explicit preference rows, chosen = accepted revision, rejected = original; and how many
    accepted revisions equal their original (no pair to learn from: left out, counted)."""
    rows, same = [], 0
    for it, rs in zip(items, rounds):
        rev = accepted_revision(rs)
        if rev is None:
            continue
        if rev.strip() == it.response.strip():
            same += 1
            continue
        rows.append({"prompt": it.prompt, "chosen": rev, "rejected": it.response, **_carried(it),
                     "source": it.where, "revise": {"rounds": len(rs), "p_acceptable": rs[-1].p_acceptable}})
    return rows, same


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _counts(items: list[Item], rounds: list[list[Round]], suffix: str) -> dict:
    done = [accepted_revision(rs) is not None for rs in rounds]
    out = {f"revise/items{suffix}": len(items), f"revise/accepted{suffix}": sum(done),
           f"revise/never_accepted{suffix}": len(items) - sum(done),
           f"revise/accepted_share{suffix}": _mean([float(d) for d in done]),
           f"revise/mean_rounds{suffix}": _mean([float(len(rs)) for rs in rounds])}
    return out


def _gold(items, rounds, gold_fns: dict, suffix: str) -> dict:
    out = {}
    for name, fn in gold_fns.items():
        score = lambda it, text: float(fn(last_user_text(it.prompt), text))  # noqa: E731
        acc = [(it, accepted_revision(rs)) for it, rs in zip(items, rounds) if accepted_revision(rs) is not None]
        out[f"gold/{name}/original{suffix}"] = _mean([score(it, it.response) for it in items])
        out[f"gold/{name}/accepted_original{suffix}"] = _mean([score(it, it.response) for it, _ in acc])
        out[f"gold/{name}/accepted_revision{suffix}"] = _mean([score(it, rev) for it, rev in acc])
    return out


def summarize(items: list[Item], rounds: list[list[Round]], gold_fns: dict, tag_field: str | None,
              max_rounds: int) -> dict:
    """Items, accepted share, rounds per item, and (``gold_fns``) mean gold of the originals, and
    of the accepted items' originals vs their revisions; overall, then on the items whose
    ``tag_field`` is true (``@<field>``) and false (``@not_<field>``)."""
    hist = Counter(len(rs) for rs in rounds)
    at = Counter(len(rs) for rs in rounds if accepted_revision(rs) is not None)
    out = {"revise/max_rounds": max_rounds, **_counts(items, rounds, ""),
           "revise/rounds_histogram": {str(k): hist.get(k, 0) for k in range(1, max_rounds + 1)},
           "revise/accepted_at_round": {str(k): at.get(k, 0) for k in range(1, max_rounds + 1)},
           "revise/p_acceptable_last_mean": _mean([rs[-1].p_acceptable for rs in rounds if rs])}
    out.update(_gold(items, rounds, gold_fns, ""))
    if tag_field and any(tag_field in it.meta for it in items):
        for flag, suffix in ((True, f"@{tag_field}"), (False, f"@not_{tag_field}")):
            keep = [k for k, it in enumerate(items) if bool(it.meta.get(tag_field, False)) == flag]
            sub_items, sub_rounds = [items[k] for k in keep], [rounds[k] for k in keep]
            out.update(_counts(sub_items, sub_rounds, suffix))
            out.update(_gold(sub_items, sub_rounds, gold_fns, suffix))
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
