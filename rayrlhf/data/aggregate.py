"""Aggregate several annotators' labels of the same pairs into one preference per pair.

Methods, each giving the probability p that a pair's response is preferred:
    majority  hard votes: p = share of the annotators whose ``chosen`` it is
    mean      soft labels: p = mean over annotators of their probability (``p_chosen``)
    weighted  soft labels weighted by group: p = sum_a w_a p_a / sum_a w_a, where w_a is the
              weight of annotator a's group on prompts carrying one of that group's tags, and
              ``default_weight`` elsewhere (and for annotators without a group)
The winner becomes ``chosen`` with ``p_chosen = p``. A tie (p exactly 0.5) has no winner: the
pair is left out of the output and counted, never written as a coin flip.

Weights file (YAML):
    groups:
      safety: {tags: [unsafe], weight: 3.0}
    default_weight: 1.0
A prompt's tags come from tag columns of its rows: a true boolean column is the tag named like
the column (toyworld's ``unsafe: true`` is the tag ``unsafe``), a string is a tag, a list of
strings is several.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from rayrlhf.data.panel import Joined, Label
from rayrlhf.data.problems import Problem, describe

METHODS = ("majority", "mean", "weighted")


@dataclass(frozen=True)
class Weights:
    """Group weights: group -> (the tags it concerns, its weight there), and the default weight."""

    groups: dict[str, tuple[frozenset[str], float]]
    default: float = 1.0


def _positive(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{where}: expected a positive number, found {describe(value)}")
    return float(value)


def parse_weights(data, path: str) -> Weights:
    """Weights from the parsed YAML of ``path``; ValueError naming the file and field."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with groups and default_weight, found {describe(data)}")
    unknown = sorted(set(data) - {"groups", "default_weight"})
    if unknown:
        raise ValueError(f"{path}: {unknown[0]}: unknown key; expected groups and default_weight")
    default = _positive(data.get("default_weight", 1.0), f"{path}: default_weight")
    groups_in = data.get("groups") or {}
    if not isinstance(groups_in, dict):
        raise ValueError(f"{path}: groups: expected a mapping of group -> {{tags, weight}}, "
                         f"found {describe(groups_in)}")
    groups = {}
    for name, spec in groups_in.items():
        where = f"{path}: groups.{name}"
        if not isinstance(spec, dict) or set(spec) - {"tags", "weight"}:
            raise ValueError(f"{where}: expected {{tags: [..], weight: number}}, found {describe(spec)}")
        tags = spec.get("tags")
        if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{where}.tags: expected a non-empty list of tag names, found {describe(tags)}")
        groups[str(name)] = (frozenset(tags), _positive(spec.get("weight"), f"{where}.weight"))
    return Weights(groups, default)


def load_weights(path: str) -> Weights:
    """Read and check a weights YAML file."""
    import yaml

    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from e
    return parse_weights(data, path)


def parse_groups(text: str, annotators: list[str]) -> dict[str, str]:
    """``a=G1,b=G2`` -> {annotator: group}; ValueError on a malformed entry or an unknown name."""
    groups = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, sep, group = entry.partition("=")
        if not sep or not name.strip() or not group.strip():
            raise ValueError(f"--groups: {entry!r} is not ANNOTATOR=GROUP")
        if name.strip() not in annotators:
            raise ValueError(f"--groups: unknown annotator {name.strip()!r}; the annotators are "
                             f"{', '.join(annotators)}")
        groups[name.strip()] = group.strip()
    return groups


def row_tags(label: Label, columns: tuple[str, ...], problems: list[Problem]) -> set[str]:
    """The tags of one row, from its tag columns (booleans, strings, lists of strings)."""
    tags = set()
    src = label.record.source
    for column in columns:
        value = label.record.meta.get(column)
        if value is None or value is False:
            continue
        if value is True:
            tags.add(column)
        elif isinstance(value, str):
            tags.add(value)
        elif isinstance(value, list) and all(isinstance(t, str) for t in value):
            tags.update(value)
        else:
            problems.append(Problem(src.file, src.line, column, "expected a boolean, a tag or a list "
                                    f"of tags for a tag column, found {describe(value)}"))
    return tags


def annotator_weight(group: str | None, tags: set[str], weights: Weights) -> float:
    """The group's weight if the prompt carries one of the group's tags, else the default."""
    if group in weights.groups and weights.groups[group][0] & tags:
        return weights.groups[group][1]
    return weights.default


def p_first(labels: dict[str, Label], method: str, weights: dict[str, float] | None = None) -> float:
    """The aggregate probability that a pair's ``first`` response is preferred.

    Args:
        labels: annotator -> Label of the pair (the annotators who labelled it).
        method: one of METHODS.
        weights: annotator -> weight, for ``weighted``.
    """
    if method == "majority":
        return sum(lab.winner == "first" for lab in labels.values()) / len(labels)
    if method == "mean":
        return sum(lab.p_first for lab in labels.values()) / len(labels)
    if method == "weighted":
        total = sum(weights[name] for name in labels)
        return sum(weights[name] * lab.p_first for name, lab in labels.items()) / total
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


@dataclass
class Aggregated:
    """The output rows and what was left out or incomplete."""

    rows: list[dict]
    ties: int
    incomplete: int
    """Pairs aggregated over fewer than all annotators."""
    flipped: int
    """Pairs whose aggregated chosen is not the first file's chosen."""


def aggregate(joined: Joined, method: str, groups: dict[str, str] | None = None,
              weights: Weights | None = None, tag_columns: tuple[str, ...] = ("unsafe", "tags"),
              text_style: bool = False) -> tuple[Aggregated, list[Problem]]:
    """One explicit-format row per pair (in ``joined.order``), ties left out and counted."""
    problems: list[Problem] = []
    rows, ties, incomplete, flipped = [], 0, 0, 0
    for pid in joined.order:
        labels = {a.name: a.labels[pid] for a in joined.annotators if pid in a.labels}
        incomplete += len(labels) < len(joined.annotators)
        w = None
        if method == "weighted":
            tags = set().union(*(row_tags(lab, tag_columns, problems) for lab in labels.values()))
            w = {n: annotator_weight((groups or {}).get(n), tags, weights or Weights({})) for n in labels}
        p = p_first(labels, method, w)
        if math.isclose(p, 0.5, abs_tol=1e-9):
            ties += 1
            continue
        first_file = joined.annotators[0].labels.get(pid)
        flipped += first_file is not None and (p > 0.5) != first_file.first_chosen
        rows.append(output_row(next(iter(labels.values())), labels, p, w, text_style, method == "majority"))
    return Aggregated(rows, ties, incomplete, flipped), problems


def _swap_sides(meta: dict) -> dict:
    """``meta`` with every X_chosen / X_rejected pair of columns (gold scores) swapped."""
    out = dict(meta)
    for key in meta:
        if key.endswith("_chosen") and key[: -len("_chosen")] + "_rejected" in meta:
            other = key[: -len("_chosen")] + "_rejected"
            out[key], out[other] = meta[other], meta[key]
    return out


def output_row(carried: Label, labels: dict[str, Label], p: float, weights: dict[str, float] | None,
               text_style: bool, hard: bool) -> dict:
    """The explicit-format row of one aggregated pair.

    ``chosen`` is the winner, ``p_chosen`` the aggregate probability that it is preferred,
    ``votes`` each annotator's probability that it is (with ``hard``, the annotator's vote: 1.0 if
    its ``chosen`` is the winner, else 0.0). The other
    columns are the carried row's (gold scores swapped to the new sides); ``margin`` and
    ``p_chosen`` of that row are one annotator's label, so they are not carried.
    """
    first_wins = p > 0.5
    chosen, rejected = (carried.first, carried.second) if first_wins else (carried.second, carried.first)
    meta = {k: v for k, v in carried.record.meta.items() if k != "id"}
    if first_wins != carried.first_chosen:
        meta = _swap_sides(meta)
    prompt = carried.record.prompt
    if text_style and len(prompt) == 1 and prompt[0].get("role") == "user":
        prompt = prompt[0]["content"]

    def reply(text: str):
        return text if text_style else [{"role": "assistant", "content": text}]

    def vote(lab: Label) -> float:
        p_first = float(lab.first_chosen) if hard else lab.p_first
        return round(p_first if first_wins else 1.0 - p_first, 6)

    votes = {n: vote(lab) for n, lab in labels.items()}
    row = {"id": carried.pair_id, "prompt": prompt, "chosen": reply(chosen), "rejected": reply(rejected),
           "p_chosen": round(p if first_wins else 1.0 - p, 6), "votes": votes}
    if weights is not None:
        row["weights"] = dict(weights)
    return {**row, **{k: v for k, v in meta.items() if k not in row}}
