"""The agreement report of ``rayrlhf data agreement``: a dict (for --json) and its text.

Every statistic says on how many pairs it was measured; pairs some annotator did not label are
counted per annotator, and kappas that are undefined (one label everywhere) are null with a note.
A label is "first" or "second" of the pair's two responses in sorted order (``panel``), so the
kappas' chance terms come from how often each annotator prefers the first of them.
"""
from __future__ import annotations

import math
from itertools import combinations

from rayrlhf.data.agreement import (
    cohen_kappa,
    fleiss_kappa,
    kappa_undefined_reason,
    majority,
    percent_agreement,
)
from rayrlhf.data.panel import Joined
from rayrlhf.data.schema import MARGIN_LEVELS

NO_MARGIN = "(no margin label)"


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def pairwise(joined: Joined) -> list[dict]:
    """Percent agreement and Cohen's kappa of every two annotators, on the pairs both labelled."""
    out = []
    for a, b in combinations(joined.annotators, 2):
        ids = [pid for pid in joined.order if pid in a.labels and pid in b.labels]
        la = [a.labels[pid].winner for pid in ids]
        lb = [b.labels[pid].winner for pid in ids]
        kappa = cohen_kappa(la, lb)
        row = {"a": a.name, "b": b.name, "pairs": len(ids),
               "agreement": _num(percent_agreement(la, lb)), "cohen_kappa": _num(kappa)}
        if math.isnan(kappa):
            row["note"] = kappa_undefined_reason(la + lb)
        out.append(row)
    return out


def fleiss(joined: Joined) -> dict:
    """Fleiss' kappa over all annotators, on the pairs every one of them labelled."""
    items = [[a.labels[pid].winner for a in joined.annotators] for pid in joined.common]
    kappa = fleiss_kappa(items) if len(joined.annotators) >= 2 else math.nan
    out = {"pairs": len(items), "fleiss_kappa": _num(kappa)}
    if math.isnan(kappa):
        out["note"] = kappa_undefined_reason([x for labels in items for x in labels])
    return out


def with_majority(joined: Joined) -> dict:
    """Each annotator's agreement with the majority of the others (others tied: left out, counted)."""
    out = {}
    for a in joined.annotators:
        agree, ties = [], 0
        for pid, label in a.labels.items():
            others = [b.labels[pid].winner for b in joined.annotators if b is not a and pid in b.labels]
            if not others:
                continue
            top = majority(others)
            if top is None:
                ties += 1
            else:
                agree.append(label.winner == top)
        out[a.name] = {"pairs": len(agree), "agreement": _num(_mean(agree)), "others_tied": ties}
    return out


def by_margin(joined: Joined) -> dict:
    """Agreement of an annotator with each other annotator, by the first one's own margin label."""
    pooled: dict[str, list[bool]] = {}
    for a in joined.annotators:
        for pid, label in a.labels.items():
            level = label.record.margin_label or NO_MARGIN
            for b in joined.annotators:
                if b is not a and pid in b.labels:
                    pooled.setdefault(level, []).append(label.winner == b.labels[pid].winner)
    levels = [lvl for lvl in MARGIN_LEVELS + (NO_MARGIN,) if lvl in pooled]
    levels += sorted(set(pooled) - set(levels))
    return {lvl: {"comparisons": len(pooled[lvl]), "agreement": _num(_mean(pooled[lvl]))} for lvl in levels}


def with_gold(joined: Joined) -> dict | None:
    """Each annotator's agreement with the gold order (gold ties left out and counted); None if
    no row carries gold scores."""
    if not any(label.gold is not None for a in joined.annotators for label in a.labels.values()):
        return None
    out = {}
    for a in joined.annotators:
        agree, ties, no_gold = [], 0, 0
        for label in a.labels.values():
            if label.gold is None:
                no_gold += 1
            elif label.gold[0] == label.gold[1]:
                ties += 1
            else:
                agree.append(label.winner == ("first" if label.gold[0] > label.gold[1] else "second"))
        out[a.name] = {"pairs": len(agree), "agreement": _num(_mean(agree)), "gold_ties": ties,
                       "no_gold": no_gold}
    return out


def build_report(joined: Joined) -> dict:
    """Every statistic of ``rayrlhf data agreement`` as one JSON-ready dict."""
    report = {
        "annotators": {a.name: a.source for a in joined.annotators},
        "pairs": len(joined.order),
        "pairs_labelled_by_all": len(joined.common),
        "pairs_not_labelled": dict(joined.missing),
        "pairwise": pairwise(joined),
        "fleiss": fleiss(joined),
        "with_majority_of_others": with_majority(joined),
        "by_margin": by_margin(joined),
    }
    gold = with_gold(joined)
    if gold is not None:
        report["with_gold"] = gold
    return report


def _mean(xs: list[bool]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _kappa(x: float | None, note: str = "") -> str:
    return f"{x:.3f}" if x is not None else f"undefined ({note or 'no pairs'})"


def format_report(report: dict) -> list[str]:
    """The report as the lines ``rayrlhf data agreement`` prints."""
    names = list(report["annotators"])
    lines = [f"{len(names)} annotators ({', '.join(names)}), {report['pairs']} pairs, "
             f"{report['pairs_labelled_by_all']} labelled by all"]
    for name, n in report["pairs_not_labelled"].items():
        if n:
            lines.append(f"  {name} ({report['annotators'][name]}): did not label {n} of the pairs")
    if not report["pairs_labelled_by_all"]:
        lines.append("  no pair is labelled by every annotator: do the files share ids (a row's id, "
                     "else the prompt and responses)?")
    lines.append("pairwise (on the pairs both labelled):")
    for row in report["pairwise"]:
        kappa = _kappa(row["cohen_kappa"], row.get("note", ""))
        lines.append(f"  {row['a']} vs {row['b']}: {row['pairs']} pairs, agreement "
                     f"{_pct(row['agreement'])}, Cohen's kappa {kappa}")
    f = report["fleiss"]
    kappa = _kappa(f["fleiss_kappa"], f.get("note", ""))
    lines.append(f"Fleiss' kappa (all annotators, {f['pairs']} pairs): {kappa}")
    lines.append("agreement with the majority of the others (others tied: left out):")
    for name, m in report["with_majority_of_others"].items():
        lines.append(f"  {name}: {_pct(m['agreement'])} of {m['pairs']} pairs, {m['others_tied']} tied")
    lines.append("agreement with each other annotator, by the annotator's own margin label:")
    for level, m in report["by_margin"].items():
        lines.append(f"  {level}: {_pct(m['agreement'])} of {m['comparisons']} comparisons")
    if "with_gold" in report:
        lines.append("agreement with gold (gold ties left out):")
        for name, g in report["with_gold"].items():
            extra = f", {g['no_gold']} without gold" if g["no_gold"] else ""
            lines.append(f"  {name}: {_pct(g['agreement'])} of {g['pairs']} pairs, "
                         f"{g['gold_ties']} gold ties left out{extra}")
    return lines
