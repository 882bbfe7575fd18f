"""Several annotators' labels of the same preference pairs, read and joined by pair id.

Each file is one annotator's labels, read as preference records by the reader ``rayrlhf data
validate`` uses. A pair's id is the row's ``id`` field, or else ``pair_id`` of its text, so
the same pair joins whichever response a file lists first. Labels are kept in one orientation
per pair: ``first`` is the alphabetically first of the two responses, and ``p_first`` the
probability that the annotator prefers it: from the optional ``p_chosen`` column (the
probability that ``chosen`` is preferred, 1.0 when absent); the hard label is the row's
``chosen``.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

from rayrlhf.data.problems import Problem, describe
from rayrlhf.data.schema import PreferenceRecord
from rayrlhf.data.validate import validate_source

GOLD_COLUMNS = ("gold_chosen", "gold_rejected")


@dataclass
class Label:
    """One annotator's label of one pair, oriented by the pair's sorted responses."""

    pair_id: str
    first: str
    second: str
    p_first: float
    """Probability that the annotator prefers ``first``."""
    first_chosen: bool
    """Whether the row's ``chosen`` (the hard label) is ``first``."""
    record: PreferenceRecord
    gold: tuple[float, float] | None = None
    """Gold scores of (first, second), from the row's gold_chosen / gold_rejected."""

    @property
    def winner(self) -> str:
        """The hard label: "first" or "second"."""
        return "first" if self.first_chosen else "second"


@dataclass
class Annotations:
    """One annotator's labels: pair id -> Label, in file order."""

    name: str
    source: str
    labels: dict[str, Label] = field(default_factory=dict)


@dataclass
class Joined:
    """The annotators' labels joined by pair id."""

    annotators: list[Annotations]
    order: list[str]
    """Every pair id, in the order first seen (the first file's order, then the others')."""
    common: list[str]
    """The pair ids every annotator labelled, in ``order``."""
    missing: dict[str, int]
    """Annotator -> pairs (of ``order``) that annotator did not label."""


def prompt_text(prompt: list[dict]) -> str:
    """A prompt's messages as text, one ``role: content`` line each."""
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt)


def pair_id(record: PreferenceRecord) -> str:
    """A stable id of (prompt, {chosen, rejected}): the same in either response order."""
    key = [prompt_text(record.prompt), sorted([record.chosen, record.rejected])]
    return hashlib.sha256(json.dumps(key, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def _number(value, field_name: str, where: tuple[str, int], problems: list[Problem]) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.append(Problem(*where, field_name, f"expected a finite number, found {describe(value)}"))
        return None
    return float(value)


def to_label(record: PreferenceRecord, problems: list[Problem]) -> Label | None:
    """The Label of a record, or None with the problems of its ``id``, ``p_chosen`` and gold."""
    where = (record.source.file, record.source.line) if record.source else ("<records>", 0)
    meta = record.meta
    n_before = len(problems)
    if "id" in meta and (isinstance(meta["id"], bool) or not isinstance(meta["id"], (str, int))):
        problems.append(Problem(*where, "id", f"expected a string or integer, found {describe(meta['id'])}"))
    # The reader checked it is a probability (rayrlhf.data.fields.probability).
    p_chosen = 1.0 if record.p_chosen is None else record.p_chosen
    gold = None
    present = [c for c in GOLD_COLUMNS if meta.get(c) is not None]
    if len(present) == 1:
        other = next(c for c in GOLD_COLUMNS if c not in present)
        problems.append(Problem(*where, other, f"missing or null while {present[0]} is given; "
                                "expected both gold scores or neither"))
    elif present:
        gold = tuple(_number(meta[c], c, where, problems) for c in GOLD_COLUMNS)
    if len(problems) > n_before:
        return None
    pid = str(meta["id"]) if "id" in meta else pair_id(record)
    first_chosen = record.chosen <= record.rejected
    first, second = sorted([record.chosen, record.rejected])
    if gold is not None and not first_chosen:
        gold = (gold[1], gold[0])
    return Label(pid, first, second, p_chosen if first_chosen else 1.0 - p_chosen, first_chosen,
                 record, gold)


def read_annotations(source: str, name: str) -> tuple[Annotations, list[Problem]]:
    """Read one annotator's file; every problem (row, field, reason), nothing left out silently."""
    result, problems = validate_source(source, "preference")
    annotations = Annotations(name, source)
    if problems:
        return annotations, problems
    lines: dict[str, int] = {}
    for record in result.records:
        label = to_label(record, problems)
        if label is None:
            continue
        if label.pair_id in annotations.labels:
            problems.append(Problem(record.source.file, record.source.line, "id",
                                    f"pair {label.pair_id!r} is also at line {lines[label.pair_id]}; "
                                    "expected each pair once per annotator"))
            continue
        annotations.labels[label.pair_id] = label
        lines[label.pair_id] = record.source.line
    return annotations, problems


def join(annotators: list[Annotations]) -> tuple[Joined, list[Problem]]:
    """Join by pair id; a pair id whose responses differ between files is a problem."""
    problems = []
    seen: dict[str, Label] = {}
    order = []
    for a in annotators:
        for pid, label in a.labels.items():
            if pid not in seen:
                seen[pid] = label
                order.append(pid)
            elif (label.first, label.second) != (seen[pid].first, seen[pid].second):
                src = seen[pid].record.source
                problems.append(Problem(label.record.source.file, label.record.source.line, "id",
                                        f"pair {pid!r} has other responses than in {src.file} line "
                                        f"{src.line}; expected the same two responses for one id"))
    common = [pid for pid in order if all(pid in a.labels for a in annotators)]
    missing = {a.name: sum(pid not in a.labels for pid in order) for a in annotators}
    return Joined(annotators, order, common, missing), problems


def annotator_names(sources: list[str], names: str | None) -> list[str]:
    """``--names a,b`` split, or each file's stem; ValueError on a wrong count or a repeat."""
    from pathlib import Path

    found = [n.strip() for n in names.split(",")] if names else [Path(s).stem for s in sources]
    if len(found) != len(sources):
        raise ValueError(f"--names gives {len(found)} names for {len(sources)} files; expected one per file")
    if len(set(found)) != len(found) or not all(found):
        raise ValueError(f"annotator names {found} repeat or are empty; give distinct ones with --names")
    return found
