"""Readers for the preference, SFT and prompt formats users have, into the records of ``schema``.

Each format is a parser from one row (a dict) to a list of records; ``read_records`` runs it
over a source, turning every structural problem into a ``Problem`` with the file, the 1-based
line and the field, and carrying on with the next row.

Preference formats (``kind="preference"``):
    explicit               prompt, chosen, rejected (TRL; strings or messages)
    implicit               chosen, rejected: two conversations that differ in the last reply (TRL)
    hh-rlhf                chosen, rejected: two "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts
    rm-static              prompt transcript, chosen, rejected replies (Dahoas/rm-static)
    stack-exchange-paired  question, response_j (better), response_k (lvwerra/stack-exchange-paired)
    ranked                 prompt, responses best first or ``scores`` (InstructGPT's K-way rankings)
    sharegpt               conversations (ShareGPT from/value turns), chosen, rejected replies
SFT formats (``kind="sft"``): messages, prompt-completion, prompt-response, sharegpt
(``conversations`` ending with the gpt turn), alpaca (instruction, optional input, output).
Prompt formats (``kind="prompt"``): prompt, messages, sharegpt, alpaca (instruction, input), and
every preference format (its prompts). ShareGPT and Alpaca are read by ``chat_formats``.
``columns`` maps our column names to a file's (``{"prompt": "question"}``; ``columns.py``).
Any preference row may carry ``margin``: a Llama 2 label or a number, and ``p_chosen``: a soft
label, the probability in [0, 1] that ``chosen`` is preferred (`rayrlhf label` writes it; the
reward-model and DPO losses use it). Columns a format does not use go to ``meta``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain, islice

from rayrlhf.data import chat_formats as chat
from rayrlhf.data import columns as mapping
from rayrlhf.data import fields, hh
from rayrlhf.data.problems import ROW, Problem, RowError, describe
from rayrlhf.data.rows import Context as _Context
from rayrlhf.data.rows import meta as _meta
from rayrlhf.data.rows import pair as _pair
from rayrlhf.data.schema import PromptRecord, Source, SFTRecord
from rayrlhf.data.sources import Row, open_rows

KINDS = ("preference", "sft", "prompt")


@dataclass
class ReadResult:
    """What ``read_records`` found in a source."""

    records: list = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    format: str = "unknown"
    """The format the rows were read as (the detected one when ``format="auto"``)."""
    n_rows: int = 0
    """Rows read, blank lines not counted; one ranked row may give several records."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Reason -> count of comparisons left out on purpose (``tie``: equal scores in a ranking)."""
    dropped_by_file: dict[str, dict[str, int]] = field(default_factory=dict)
    """The same counts per file of the source (a folder holds several), files with none left out."""
    rows_by_file: dict[str, int] = field(default_factory=dict)
    """Rows read per file of the source."""
    kind: str = "unknown"
    """``preference``, ``sft`` or ``prompt`` (the detected one when ``kind="auto"``)."""


# ---- preference -------------------------------------------------------------------------------


def _explicit(row: dict, ctx: _Context) -> list:
    prompt = fields.prompt(row["prompt"], "prompt")
    chosen = fields.response(row["chosen"], "chosen")
    rejected = fields.response(row["rejected"], "rejected")
    return [_pair(row, ("prompt", "chosen", "rejected"), prompt, chosen, rejected, ctx)]


def _implicit(row: dict, ctx: _Context) -> list:
    chosen = fields.messages(row["chosen"], "chosen")
    rejected = fields.messages(row["rejected"], "rejected")
    if len(chosen) != len(rejected):
        raise RowError(
            "rejected",
            f"has {len(rejected)} messages and chosen has {len(chosen)}; expected the same prompt "
            "messages in both, followed by one different assistant reply",
        )
    for i in range(len(chosen) - 1):
        if chosen[i] != rejected[i]:
            raise RowError(
                f"rejected[{i}]",
                f"differs from chosen[{i}]; expected chosen and rejected to share every message "
                "but the last (the shared messages are the prompt)",
            )
    prompt, chosen_reply = fields.final_reply(chosen, "chosen")
    _, rejected_reply = fields.final_reply(rejected, "rejected")
    return [_pair(row, ("chosen", "rejected"), prompt, chosen_reply, rejected_reply, ctx)]


def _hh_rlhf(row: dict, ctx: _Context) -> list:
    chosen = fields.text(row["chosen"], "chosen")
    rejected = fields.text(row["rejected"], "rejected")
    prompt, chosen_reply, rejected_reply = hh.split_pair(chosen, rejected)
    return [_pair(row, ("chosen", "rejected"), prompt, chosen_reply, rejected_reply, ctx)]


def _rm_static(row: dict, ctx: _Context) -> list:
    prompt = hh.parse_prompt(fields.text(row["prompt"], "prompt"), "prompt")
    chosen = fields.text(row["chosen"], "chosen").strip()
    rejected = fields.text(row["rejected"], "rejected").strip()
    return [_pair(row, ("prompt", "chosen", "rejected"), prompt, chosen, rejected, ctx)]


def _stack_exchange(row: dict, ctx: _Context) -> list:
    prompt = [{"role": "user", "content": fields.text(row["question"], "question")}]
    chosen = fields.text(row["response_j"], "response_j")
    rejected = fields.text(row["response_k"], "response_k")
    return [_pair(row, ("question", "response_j", "response_k"), prompt, chosen, rejected, ctx)]


def _ranked(row: dict, ctx: _Context) -> list:
    """All K(K-1)/2 (better, worse) pairs of a ranking, as InstructGPT trains on them."""
    prompt = fields.prompt(row["prompt"], "prompt")
    responses = row["responses"]
    if not isinstance(responses, list):
        found = describe(responses)
        raise RowError("responses", f"expected a list of responses, best first, found {found}")
    if len(responses) < 2:
        found = len(responses)
        raise RowError("responses", f"found {found} response(s); a ranking needs at least 2")
    for i, r in enumerate(responses):
        fields.text(r, f"responses[{i}]")
    k = len(responses)
    scores = row.get("scores")
    order = list(range(k))
    if scores is not None:
        if not isinstance(scores, list) or len(scores) != k:
            found = describe(scores)
            raise RowError("scores", f"expected a list of {k} numbers, one per response, found {found}")
        for i, s in enumerate(scores):
            if isinstance(s, bool) or not isinstance(s, (int, float)) or s != s:
                raise RowError(f"scores[{i}]", f"expected a number, found {describe(s)}")
        order.sort(key=lambda i: -scores[i])  # stable: equal scores keep their list order
    records = []
    for a in range(k):
        for b in range(a + 1, k):
            better, worse = order[a], order[b]
            if scores is not None and scores[better] == scores[worse]:
                ctx.dropped["tie"] = ctx.dropped.get("tie", 0) + 1
                continue
            records.append(
                _pair(row, ("prompt", "responses", "scores"), prompt, responses[better],
                      responses[worse], ctx, group=ctx.group, rank_pair=(a, b))
            )
    return records


# ---- SFT and prompts --------------------------------------------------------------------------


def _sft_messages(row: dict, ctx: _Context) -> list:
    prompt, reply = fields.final_reply(fields.messages(row["messages"], "messages"), "messages")
    return [SFTRecord(prompt, reply, ctx.source, _meta(row, ("messages",)))]


def _sft_pair(response_column: str) -> Callable:
    def parse(row: dict, ctx: _Context) -> list:
        prompt = fields.prompt(row["prompt"], "prompt")
        reply = fields.response(row[response_column], response_column)
        return [SFTRecord(prompt, reply, ctx.source, _meta(row, ("prompt", response_column)))]

    return parse


def _prompt(row: dict, ctx: _Context) -> list:
    prompt = fields.prompt(row["prompt"], "prompt")
    return [PromptRecord(prompt, ctx.source, _meta(row, ("prompt",)))]


def _prompt_messages(row: dict, ctx: _Context) -> list:
    """A conversation's prompt: its messages, less a final assistant reply if there is one."""
    turns = fields.messages(row["messages"], "messages")
    if turns[-1]["role"] == "assistant":
        turns = turns[:-1]
    prompt = fields.check_prompt(turns, "messages")
    return [PromptRecord(prompt, ctx.source, _meta(row, ("messages",)))]


def _prompts_of(parse: Callable) -> Callable:
    """The prompt of each row of a preference format (one per row, also for rankings)."""

    def parse_prompts(row: dict, ctx: _Context) -> list:
        pairs = parse(row, _Context(ctx.source, ctx.group, {}))
        if not pairs:
            return []
        meta = {k: v for k, v in pairs[0].meta.items() if k != "rank_pair"}
        return [PromptRecord(pairs[0].prompt, ctx.source, meta)]

    return parse_prompts


def _sharegpt_prompts(row: dict, ctx: _Context) -> list:
    """A conversation's prompt; with ``chosen`` and ``rejected``, as every preference format's."""
    if "chosen" in row and "rejected" in row:
        return _prompts_of(chat.sharegpt_preference)(row, ctx)
    return chat.sharegpt_prompt(row, ctx)


@dataclass(frozen=True)
class _Format:
    columns: tuple[str, ...]  # required; missing or null is a problem
    parse: Callable[[dict, _Context], list]


PREFERENCE_FORMATS = {
    "explicit": _Format(("prompt", "chosen", "rejected"), _explicit),
    "implicit": _Format(("chosen", "rejected"), _implicit),
    "hh-rlhf": _Format(("chosen", "rejected"), _hh_rlhf),
    "rm-static": _Format(("prompt", "chosen", "rejected"), _rm_static),
    "stack-exchange-paired": _Format(("question", "response_j", "response_k"), _stack_exchange),
    "ranked": _Format(("prompt", "responses"), _ranked),
    "sharegpt": _Format(("conversations", "chosen", "rejected"), chat.sharegpt_preference),
}
SFT_FORMATS = {
    "messages": _Format(("messages",), _sft_messages),
    "prompt-completion": _Format(("prompt", "completion"), _sft_pair("completion")),
    "prompt-response": _Format(("prompt", "response"), _sft_pair("response")),
    "sharegpt": _Format(("conversations",), chat.sharegpt_sft),
    "alpaca": _Format(("instruction", "output"), chat.alpaca_sft),
}
PROMPT_FORMATS = {
    "prompt": _Format(("prompt",), _prompt),
    "messages": _Format(("messages",), _prompt_messages),
    "alpaca": _Format(("instruction",), chat.alpaca_prompt),
    **{name: _Format(f.columns, _prompts_of(f.parse)) for name, f in PREFERENCE_FORMATS.items()},
    "sharegpt": _Format(("conversations",), _sharegpt_prompts),
}
FORMATS = {"preference": PREFERENCE_FORMATS, "sft": SFT_FORMATS, "prompt": PROMPT_FORMATS}
_PREFERENCE_MARKERS = {"chosen", "response_j", "responses"}
_PROMPT_COLUMNS = (("prompt", "prompt"), ("messages", "messages"), ("conversations", "sharegpt"),
                   ("instruction", "alpaca"))


def detect_kind(row: dict) -> str:
    """``preference`` if the row has chosen (or response_j, responses), ``sft`` if it has a
    response (messages or conversations ending with the assistant, completion, response,
    output), else ``prompt``."""
    if _PREFERENCE_MARKERS & set(row):
        return "preference"
    for key in ("messages", "conversations"):
        turns = row.get(key)
        if isinstance(turns, list) and turns:
            last = turns[-1]
            role = last.get("role", last.get("from")) if isinstance(last, dict) else None
            return "sft" if chat.ROLE_NAMES.get(str(role).lower()) == "assistant" else "prompt"
    if {"completion", "response"} & set(row) or {"instruction", "output"} <= set(row):
        return "sft"
    return "prompt"


def detect_format(kind: str, row: dict) -> str:
    """The format of ``kind`` that a (well-formed) row looks like; ValueError if none."""
    cols = set(row)
    found = None
    if kind == "preference" or (kind == "prompt" and _PREFERENCE_MARKERS & cols):
        if {"question", "response_j", "response_k"} <= cols:
            found = "stack-exchange-paired"
        elif {"conversations", "chosen", "rejected"} <= cols:
            found = "sharegpt"
        elif {"prompt", "responses"} <= cols:
            found = "ranked"
        elif {"chosen", "rejected"} <= cols and "prompt" in cols:
            if hh.looks_like_transcript(row["prompt"]):
                found = "rm-static"
            elif isinstance(row["chosen"], list) and len(row["chosen"]) > 1:
                found = "implicit"  # whole conversations next to a prompt column
            else:
                found = "explicit"
        elif {"chosen", "rejected"} <= cols:
            found = "implicit" if isinstance(row["chosen"], list) else "hh-rlhf"
    elif kind == "sft":
        if "messages" in cols:
            found = "messages"
        elif "conversations" in cols:
            found = "sharegpt"
        elif {"instruction", "output"} <= cols:
            found = "alpaca"
        elif {"prompt", "completion"} <= cols:
            found = "prompt-completion"
        elif {"prompt", "response"} <= cols:
            found = "prompt-response"
    elif kind == "prompt":
        found = next((name for key, name in _PROMPT_COLUMNS if key in cols), None)
    if found is None:
        known = "; ".join(f"{name} ({', '.join(f.columns)})" for name, f in FORMATS[kind].items())
        raise ValueError(
            f"cannot tell the {kind} format from the columns {sorted(cols)}; "
            f"expected one of: {known}"
        )
    return found


def _check_format(kind: str, format: str) -> None:
    if format != "auto" and format not in FORMATS[kind]:
        known = ", ".join(FORMATS[kind])
        raise ValueError(f"unknown {kind} format {format!r}; expected one of {known}")


def read_records(
    source: str, kind: str, format: str = "auto", split: str = "train", limit: int | None = None,
    columns: dict[str, str] | None = None,
) -> ReadResult:
    """Read ``source`` as records of ``kind`` in ``format``.

    Args:
        source: a .jsonl/.json/.parquet file, a folder of them, a ``save_to_disk`` folder, or a
            Hugging Face dataset name.
        kind: ``preference``, ``sft``, ``prompt``, or ``auto`` (from the first row's columns).
        format: a name from ``FORMATS[kind]``, or ``auto`` (from the first row).
        split: the split of a dataset name or of a saved DatasetDict.
        limit: read at most this many rows.
        columns: our column name -> the file's (``{"prompt": "question"}``), applied to every row
            before the format is detected; problems name the file's columns.

    Returns:
        A ReadResult: the records of the well-formed rows, and one Problem per malformed row.
    """
    if kind not in KINDS + ("auto",):
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)} or auto")
    if kind != "auto":
        _check_format(kind, format)
    wrong = mapping.check(columns)
    if wrong:
        raise ValueError("; ".join(wrong))
    columns = dict(columns or {})
    rows = open_rows(source, split)
    if columns:
        rows = map(lambda row: _renamed(row, columns), rows)
    if limit is not None:
        rows = islice(rows, limit)
    head = []  # rows up to the first object, which decides kind and format
    for row in rows:
        head.append(row)
        if isinstance(row.value, dict):
            break
    result = ReadResult(
        kind="unknown" if kind == "auto" else kind, format="unknown" if format == "auto" else format
    )
    spec = None
    if head and isinstance(head[-1].value, dict):
        first = head[-1].value
        result.kind = detect_kind(first) if kind == "auto" else kind
        _check_format(result.kind, format)
        result.format = detect_format(result.kind, first) if format == "auto" else format
        spec = FORMATS[result.kind][result.format]
    for group, row in enumerate(chain(head, rows)):
        result.n_rows += 1
        result.rows_by_file[row.file] = result.rows_by_file.get(row.file, 0) + 1
        try:
            if row.problem is not None:
                raise RowError(row.problem.field, row.problem.reason)
            ctx = _Context(Source(row.file, row.line), group, result.dropped_by_file.setdefault(row.file, {}))
            result.records.extend(_parse_row(row.value, spec, result.format, ctx))
        except RowError as e:
            problem = Problem(row.file, row.line, e.field, e.reason)
            result.problems.append(problem if row.problem else mapping.name_theirs(problem, columns))
    result.dropped_by_file = {f: d for f, d in result.dropped_by_file.items() if d}
    for counts in result.dropped_by_file.values():
        for why, n in counts.items():
            result.dropped[why] = result.dropped.get(why, 0) + n
    return result


def _parse_row(value: object, spec: _Format | None, format: str, ctx: _Context) -> list:
    if not isinstance(value, dict) or spec is None:
        wanted = f" with fields {', '.join(spec.columns)}" if spec else ""
        raise RowError(ROW, f"expected an object{wanted}, found {describe(value)}")
    missing = [c for c in spec.columns if value.get(c) is None]
    if missing:
        needed = ", ".join(spec.columns)
        raise RowError(missing[0], f"missing or null; format {format!r} needs the fields {needed}")
    return spec.parse(value, ctx)


def _renamed(row: Row, columns: dict[str, str]) -> Row:
    """The row read through the column mapping; a mapping problem becomes the row's problem."""
    if row.problem is not None or not isinstance(row.value, dict):
        return row
    try:
        return Row(row.file, row.line, mapping.rename(row.value, columns))
    except RowError as e:
        return Row(row.file, row.line, None, Problem(row.file, row.line, e.field, e.reason))
