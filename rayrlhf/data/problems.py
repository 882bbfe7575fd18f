"""What goes wrong in a data file, said so that a user can find the row and fix it."""
from __future__ import annotations

from dataclasses import dataclass

ROW = "<row>"  # the field named by problems that concern a whole row (broken JSON, not an object)


@dataclass(frozen=True)
class Problem:
    """One problem in one row: ``file:line: field: reason``.

    ``line`` is 1-based (the JSONL line, or the row of a Parquet file or dataset); ``field`` is a
    dotted path into the row such as ``chosen[1].role``; ``reason`` says what was found and what
    is expected.
    """

    file: str
    line: int
    field: str
    reason: str
    code: str = ""
    """A machine-readable kind where callers act on it ("too_long": over a token limit)."""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.reason}"


class RowError(Exception):
    """Raised by a row parser at the first structural problem of a row; becomes a Problem."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def describe(value: object) -> str:
    """A short JSON-flavoured description of a value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return f"an object with keys {sorted(map(str, value))}"
    return type(value).__name__
