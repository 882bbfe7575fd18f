"""What every row parser shares: where the row came from, and how a preference pair is built."""
from __future__ import annotations

from dataclasses import dataclass

from rayrlhf.data import fields
from rayrlhf.data.schema import PreferenceRecord, Source

OPTIONAL = ("margin", "p_chosen")  # preference columns any format may carry


@dataclass
class Context:
    source: Source
    group: int  # 0-based index of the row in this read
    dropped: dict[str, int]


def meta(row: dict, used: tuple[str, ...]) -> dict:
    """The row's columns the format does not use (kept on the record, never dropped)."""
    return {k: v for k, v in row.items() if k not in used and k not in OPTIONAL}


def pair(row, used, prompt, chosen, rejected, ctx: Context, **extra) -> PreferenceRecord:
    label, number = fields.margin(row.get("margin"))
    return PreferenceRecord(
        prompt, chosen, rejected, label, number, ctx.source, {**meta(row, used), **extra},
        fields.probability(row.get("p_chosen"), "p_chosen"),
    )
