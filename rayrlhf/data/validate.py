"""Semantic checks on records, and the one call that reads, checks and fails loudly.

``read_records`` reports rows it cannot parse; ``validate_records`` reports records that parse
but would train badly: empty text, a comparison of a response with itself, unknown roles, and
prompts or responses longer than the token budget.
"""
from __future__ import annotations

import logging
import math

from rayrlhf.data import columns as mapping
from rayrlhf.data.formats import ReadResult, read_records
from rayrlhf.data.problems import Problem
from rayrlhf.data.schema import MARGIN_LEVELS, ROLES, PreferenceRecord, PromptRecord, SFTRecord

__all__ = [
    "DataValidationError",
    "Problem",
    "load_validated",
    "validate_records",
    "validate_source",
]

log = logging.getLogger(__name__)

_RECORD_TYPES = {"preference": PreferenceRecord, "sft": SFTRecord, "prompt": PromptRecord}
_SHOWN = 50


class DataValidationError(ValueError):
    """A data source has problems; ``problems`` lists them all, the message the first 50."""

    def __init__(self, problems: list[Problem], source: str = "data"):
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[:_SHOWN]]
        if len(self.problems) > _SHOWN:
            lines.append(f"... and {len(self.problems) - _SHOWN} more")
        count = f"{len(self.problems)} problem{'' if len(self.problems) == 1 else 's'}"
        super().__init__(f"{count} in {source}:\n" + "\n".join(lines))


def validate_records(
    records: list,
    kind: str,
    tokenizer=None,
    max_prompt_tokens: int | None = None,
    max_response_tokens: int | None = None,
) -> list[Problem]:
    """Problems of records that parse but should not be trained on.

    Token limits need ``tokenizer``: the prompt is counted as rendered with the chat template
    and generation prompt, a response with its EOS, as ``rayrlhf.data.tokenize`` encodes them.
    """
    if (max_prompt_tokens is not None or max_response_tokens is not None) and tokenizer is None:
        raise ValueError("max_prompt_tokens / max_response_tokens need a tokenizer to count tokens")
    expected = _RECORD_TYPES[kind]
    problems, seen = [], set()
    for i, record in enumerate(records):
        src = record.source
        file, line = (src.file, src.line) if src is not None else ("<records>", i + 1)
        ranks = record.meta.get("rank_pair") if isinstance(record, PreferenceRecord) else None

        def report(field: str, reason: str, code: str = "") -> None:
            if ranks is not None:  # a pair of a ranked row: say it of the row's responses, once
                field, reason = _ranked_problem(field, reason, ranks)
            if (file, line, field, reason) not in seen:
                seen.add((file, line, field, reason))
                problems.append(Problem(file, line, field, reason, code))

        if not isinstance(record, expected):
            found = type(record).__name__
            report("<record>", f"expected a {expected.__name__} for kind {kind!r}, found {found}")
            continue
        _check_prompt(record.prompt, report)
        for field in _response_fields(record):
            _check_text(getattr(record, field), field, report)
        if isinstance(record, PreferenceRecord):
            _check_comparison(record, report)
        if tokenizer is not None:
            _check_lengths(record, tokenizer, max_prompt_tokens, max_response_tokens, report)
    return problems


def _ranked_problem(field: str, reason: str, ranks) -> tuple[str, str]:
    """A pair's problem as one of its ranked row: ``chosen`` is the response ranked ranks[0]."""
    a, b = (int(r) + 1 for r in ranks)
    if field == "rejected" and reason.startswith("identical to chosen"):
        return "responses", (f"the responses ranked {a} and {b} (1 = best) are identical; "
                             "a ranking needs different responses")
    if field in ("chosen", "rejected"):
        return "responses", f"the response ranked {a if field == 'chosen' else b} (1 = best): {reason}"
    return field, reason


def _response_fields(record) -> tuple[str, ...]:
    if isinstance(record, PreferenceRecord):
        return ("chosen", "rejected")
    if isinstance(record, SFTRecord):
        return ("response",)
    return ()


def _check_text(value, field: str, report) -> bool:
    if not isinstance(value, str):
        report(field, f"expected a string, found {type(value).__name__}")
        return False
    if not value.strip():
        report(field, "empty or whitespace only; expected the text of the assistant's reply")
        return False
    return True


def _check_prompt(prompt, report) -> None:
    if not isinstance(prompt, list) or not prompt:
        report("prompt", "empty; expected a list of at least one message")
        return
    for j, message in enumerate(prompt):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            known = ", ".join(ROLES)
            report(f"prompt[{j}].role", f"unknown role {role!r}; expected one of {known}")
            continue
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            report(f"prompt[{j}].content", f"empty {role} message; expected text")


def _check_comparison(record: PreferenceRecord, report) -> None:
    if isinstance(record.chosen, str) and isinstance(record.rejected, str):
        if record.chosen.strip() and record.chosen.strip() == record.rejected.strip():
            report("rejected", "identical to chosen; a comparison needs two different responses")
    if record.margin_label is not None and record.margin_label not in MARGIN_LEVELS:
        known = ", ".join(MARGIN_LEVELS)
        report("margin_label", f"unknown label {record.margin_label!r}; expected one of {known}")
    if record.margin is not None and not math.isfinite(record.margin):
        report("margin", f"{record.margin} is not a finite number")


def _check_lengths(record, tokenizer, max_prompt_tokens, max_response_tokens, report) -> None:
    from rayrlhf.data.tokenize import encode_response, render_prompt

    if max_prompt_tokens is not None and isinstance(record.prompt, list) and record.prompt:
        n = len(render_prompt(tokenizer, record.prompt))
        if n > max_prompt_tokens:
            report("prompt", f"{n} tokens with the chat template, more than "
                   f"max_prompt_tokens={max_prompt_tokens}; shorten it or raise the limit", TOO_LONG)
    if max_response_tokens is None:
        return
    for field in _response_fields(record):
        text = getattr(record, field)
        if isinstance(text, str):
            n = len(encode_response(tokenizer, text))
            if n > max_response_tokens:
                report(field, f"{n} tokens with EOS, more than max_response_tokens="
                       f"{max_response_tokens}; it would be truncated in training", TOO_LONG)


TOO_LONG = "too_long"


def drop_too_long(records: list, problems: list[Problem]) -> tuple[list, list[Problem], list[Problem]]:
    """Leave out the rows whose only problems are token limits.

    Returns (records kept, the remaining problems, the too-long problems of the rows left out):
    the caller reports how many rows were left out and why.
    """
    long_rows = {(p.file, p.line) for p in problems if p.code == TOO_LONG}
    other = [p for p in problems if p.code != TOO_LONG]
    bad_rows = {(p.file, p.line) for p in other}
    dropped = long_rows - bad_rows
    kept = [r for r in records if r.source is None or (r.source.file, r.source.line) not in dropped]
    return kept, other, [p for p in problems if p.code == TOO_LONG and (p.file, p.line) in dropped]


def validate_source(
    source: str,
    kind: str,
    format: str = "auto",
    tokenizer=None,
    max_prompt_tokens: int | None = None,
    max_response_tokens: int | None = None,
    split: str = "train",
    limit: int | None = None,
    columns: dict[str, str] | None = None,
) -> tuple[ReadResult, list[Problem]]:
    """Read ``source`` and check its records: (what was read, every problem in line order).

    ``columns`` maps our column names to the file's (``read_records``); problems name the file's.
    """
    result = read_records(source, kind, format=format, split=split, limit=limit, columns=columns)
    problems = list(result.problems)
    if not result.n_rows and not problems:
        # An empty file is a mistake (a failed export, the wrong path), not a dataset of nothing.
        problems.append(Problem(str(source), 0, "<source>", "no rows; expected at least one record"))
    if result.kind in _RECORD_TYPES:
        problems += [mapping.name_theirs(p, columns) for p in validate_records(
            result.records, result.kind, tokenizer, max_prompt_tokens, max_response_tokens
        )]
    problems.sort(key=lambda p: (p.file, p.line))
    return result, problems


def load_validated(
    source: str,
    kind: str,
    format: str = "auto",
    tokenizer=None,
    max_prompt_tokens: int | None = None,
    max_response_tokens: int | None = None,
    split: str = "train",
    limit: int | None = None,
    drop_invalid: bool = False,
    columns: dict[str, str] | None = None,
) -> list:
    """The records of ``source``, or DataValidationError listing every problem.

    With ``drop_invalid``, records from rows with problems are left out (and counted in a
    warning) instead: for large public sets with a few known-bad rows (hh-rlhf has identical and
    empty replies).
    """
    result, problems = validate_source(
        source, kind, format, tokenizer, max_prompt_tokens, max_response_tokens, split, limit, columns
    )
    if not result.records and not problems:
        problems = [Problem(str(source), 0, "<source>", "no rows; expected at least one record")]
    if problems and not drop_invalid:
        raise DataValidationError(problems, str(source))
    if problems:
        bad = {(p.file, p.line) for p in problems}
        kept = [r for r in result.records if (r.source.file, r.source.line) not in bad]
        if not kept:
            raise DataValidationError(problems, str(source))
        log.warning("%s: dropped %d records from %d rows with problems", source,
                    len(result.records) - len(kept), len(bad))
        return kept
    return result.records


def read_splits(data, kind: str, tokenizer=None, max_response_tokens: int | None = None) -> tuple[dict, dict]:
    """Read and check every train and eval source of a data section; one error for all problems.

    ``data`` has ``train``, ``eval``, ``format``, ``split``, ``max_prompt_tokens``, ``too_long``
    and ``limit``, and may have ``columns`` (our column name -> the file's). Returns ({"train": records, "eval": records}, a report per source). With
    ``too_long: drop`` the rows whose only problems are token limits are left out, counted in
    the report and printed; every other problem still stops the run.
    """
    problems, report = [], {"sources": {}}
    parts: dict[str, list] = {"train": [], "eval": []}
    for split, sources in (("train", data.train), ("eval", data.eval)):
        for source in sources:
            result, found = validate_source(
                source, kind, format=data.format, split=data.split, tokenizer=tokenizer,
                max_prompt_tokens=data.max_prompt_tokens, max_response_tokens=max_response_tokens,
                limit=data.limit, columns=getattr(data, "columns", None),
            )
            records, dropped_long = result.records, []
            if data.too_long == "drop":
                records, found, dropped_long = drop_too_long(records, found)
            problems.extend(found)
            parts[split].extend(records)
            long_rows = _rows_by_file(dropped_long)
            n_long = sum(len(lines) for lines in long_rows.values())
            report["sources"][source] = {"format": result.format, "rows": result.n_rows,
                                         "records": len(records), "problems": len(found),
                                         "dropped": dict(result.dropped, too_long=n_long),
                                         "too_long": [str(p) for p in dropped_long],
                                         "files": _file_report(result, records, long_rows)}
            if n_long:
                print(f"[rayrlhf] {source}: left out {_rows(n_long)} over the token limits "
                      f"({_where(long_rows)}) (data.too_long: drop; listed in data_report.json)", flush=True)
    if problems:
        raise DataValidationError(problems)
    return parts, report


def _rows(n: int) -> str:
    return f"{n} row{'' if n == 1 else 's'}"


def _rows_by_file(problems: list[Problem]) -> dict[str, list[int]]:
    """file -> the sorted 1-based lines (within that file) the problems name, each row once."""
    out: dict[str, set[int]] = {}
    for p in problems:
        out.setdefault(p.file, set()).add(p.line)
    return {f: sorted(lines) for f, lines in sorted(out.items())}


def _where(rows: dict[str, list[int]], shown: int = 10) -> str:
    """``a.jsonl: 1 row, line 2; b.jsonl: 2 rows, lines 2, 3`` (the first ``shown`` lines of each)."""
    parts = []
    for file, lines in rows.items():
        listed = ", ".join(map(str, lines[:shown])) + (", ..." if len(lines) > shown else "")
        parts.append(f"{file}: {_rows(len(lines))}, line{'' if len(lines) == 1 else 's'} {listed}")
    return "; ".join(parts)


def _file_report(result: ReadResult, records: list, long_rows: dict[str, list[int]]) -> dict:
    """Per file of the source: rows read, records kept, and what was left out, by reason."""
    kept: dict[str, int] = {}
    for r in records:
        if r.source is not None:
            kept[r.source.file] = kept.get(r.source.file, 0) + 1
    out = {}
    for file, n in result.rows_by_file.items():
        dropped = dict(result.dropped_by_file.get(file, {}))
        if long_rows.get(file):
            dropped["too_long"] = len(long_rows[file])
        out[file] = {"rows": n, "records": kept.get(file, 0), "dropped": dropped}
    return out
