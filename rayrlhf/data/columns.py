"""Column mapping: read files whose columns have other names (``data.columns``, ``--columns``).

A mapping goes from our column names to the file's: ``{"prompt": "question", "chosen": "better"}``
reads the file's ``question`` as ``prompt`` and ``better`` as ``chosen``. It is applied to every
row before the format is detected and the row is read; a mapped column missing from a row is a
problem of that row, and problems name the file's columns, not ours.
"""
from __future__ import annotations

from rayrlhf.data.problems import RowError

OURS = (
    "prompt", "chosen", "rejected", "responses", "scores", "margin", "p_chosen", "messages",
    "completion", "response", "question", "response_j", "response_k", "conversations",
    "instruction", "input", "output", "system",
)
"""The column names the readers know (``formats`` and ``chat_formats``)."""


def check(columns: dict | None) -> list[str]:
    """What is wrong with a mapping, one line per problem (empty when it is usable)."""
    out = []
    for ours, theirs in (columns or {}).items():
        if ours not in OURS:
            out.append(f"columns: unknown column {ours!r}; expected one of {', '.join(OURS)}")
        if not isinstance(theirs, str) or not theirs:
            out.append(f"columns.{ours}: expected the file's column name, found {theirs!r}")
    targets = [t for t in (columns or {}).values()]
    for theirs in sorted({t for t in targets if isinstance(t, str) and targets.count(t) > 1}):
        both = ", ".join(o for o, t in columns.items() if t == theirs)
        out.append(f"columns: {both} all map to the file's column {theirs!r}; map each to its own column")
    return out


def parse(text: str) -> dict[str, str]:
    """``"prompt=question,chosen=better"`` -> ``{"prompt": "question", "chosen": "better"}``."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise ValueError(f"columns: expected OURS=THEIRS pairs separated by commas, found {item!r}")
        out[ours.strip()] = theirs.strip()
    return out


def rename(row: dict, columns: dict[str, str]) -> dict:
    """The row with the file's mapped columns under our names; RowError if one is missing, or
    if the file also has an unmapped column of the name it would be read as."""
    for ours, theirs in columns.items():
        if theirs not in row:
            raise RowError(theirs, f"missing; the column mapping {ours}={theirs} reads {ours!r} from it")
    mapped = set(columns.values())
    out = {k: v for k, v in row.items() if k not in mapped}
    for ours, theirs in columns.items():
        if ours in out:
            raise RowError(ours, f"the file has its own column {ours!r}, and the column mapping "
                                 f"{ours}={theirs} reads {ours!r} from {theirs!r}; map or rename one of them")
        out[ours] = row[theirs]
    return out


def theirs(field: str, columns: dict[str, str] | None) -> str:
    """A problem's field (``chosen[1].role``) named by the file's column (``better[1].role``)."""
    for ours, name in (columns or {}).items():
        if field == ours or field.startswith((ours + "[", ours + ".")):
            return name + field[len(ours):]
    return field


def name_theirs(problem, columns: dict[str, str] | None):
    """``problem`` with its field named by the file's column; a reason about a whole mapped
    column says which of ours it was read as."""
    from dataclasses import replace

    field = theirs(problem.field, columns)
    if field == problem.field:
        return problem
    reason = problem.reason
    if field in (columns or {}).values():
        ours = next(o for o, t in columns.items() if t == field)
        reason = f"{reason} (the file's column {field!r}, read as {ours!r})"
    return replace(problem, field=field, reason=reason)
