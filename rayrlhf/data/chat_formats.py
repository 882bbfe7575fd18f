"""Readers for ShareGPT ``conversations`` rows and Alpaca ``instruction``/``input``/``output`` rows.

ShareGPT (``sharegpt``): ``{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt",
...}]}``; turns may use ``role``/``content`` keys instead. Roles human/user -> user, gpt/assistant
-> assistant, system -> system. As SFT the last turn is the assistant's reply; as prompts the
conversation is the prompt when it ends with the user, else every turn before its last assistant
turn; as preferences ``chosen``/``rejected`` are the two replies to the conversation (a string, one
turn ``{"from": "gpt", "value": ...}``, or a list of one such turn).

Alpaca (``alpaca``): ``instruction``, optional ``input``, ``output``, optional ``system``; the user
message is the instruction, followed by ``"\\n\\n"`` and the input when the input is not empty.
"""
from __future__ import annotations

from rayrlhf.data import fields
from rayrlhf.data.problems import RowError, describe
from rayrlhf.data.rows import Context, meta, pair
from rayrlhf.data.schema import Message, PromptRecord, SFTRecord

ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
              "system": "system"}
_KNOWN = ", ".join(ROLE_NAMES)


def turn(value: object, field: str) -> Message:
    """One ShareGPT turn, ``{"from", "value"}`` or ``{"role", "content"}``, as a message."""
    if not isinstance(value, dict):
        raise RowError(field, f"expected a turn like {{\"from\": \"human\", \"value\": \"...\"}}, "
                              f"found {describe(value)}")
    role_key, text_key = ("from", "value") if "from" in value or "role" not in value else ("role", "content")
    role, text = value.get(role_key), value.get(text_key)
    if role is None:
        raise RowError(f"{field}.{role_key}", f"missing; expected one of {_KNOWN}")
    if not isinstance(role, str) or role.lower() not in ROLE_NAMES:
        shown = repr(role) if isinstance(role, str) else describe(role)
        raise RowError(f"{field}.{role_key}", f"unknown role {shown}; expected one of {_KNOWN}")
    if text is None:
        raise RowError(f"{field}.{text_key}", "missing; expected the turn's text as a string")
    if not isinstance(text, str):
        raise RowError(f"{field}.{text_key}", f"expected a string, found {describe(text)}")
    return {"role": ROLE_NAMES[role.lower()], "content": text}


def conversation(value: object, field: str) -> list[Message]:
    if not isinstance(value, list):
        raise RowError(field, f'expected a list of turns like [{{"from": "human", "value": "..."}}], '
                              f"found {describe(value)}")
    if not value:
        raise RowError(field, "empty list; expected at least one turn")
    return [turn(t, f"{field}[{i}]") for i, t in enumerate(value)]


def reply(value: object, field: str) -> str:
    """A reply given as a string, one assistant turn, or a list of one assistant turn."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if len(value) != 1:
            raise RowError(field, f"expected a single assistant turn, found {len(value)} turns")
        message, where = turn(value[0], f"{field}[0]"), f"{field}[0]"
    elif isinstance(value, dict):
        message, where = turn(value, field), field
    else:
        raise RowError(field, f"expected a string or an assistant turn, found {describe(value)}")
    if message["role"] != "assistant":
        raw = value[0] if isinstance(value, list) else value
        key = "from" if "from" in raw else "role"
        raise RowError(f"{where}.{key}", f"expected the assistant's turn (gpt), found {raw[key]!r}")
    return message["content"]


def sharegpt_sft(row: dict, ctx: Context) -> list:
    turns = conversation(row["conversations"], "conversations")
    prompt, response = fields.final_reply(turns, "conversations")
    return [SFTRecord(prompt, response, ctx.source, meta(row, ("conversations",)))]


def sharegpt_prompt(row: dict, ctx: Context) -> list:
    turns = conversation(row["conversations"], "conversations")
    if turns[-1]["role"] != "user":
        last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=len(turns))
        turns = turns[:last]
    prompt = fields.check_prompt(turns, "conversations")
    return [PromptRecord(prompt, ctx.source, meta(row, ("conversations",)))]


def sharegpt_preference(row: dict, ctx: Context) -> list:
    prompt = fields.check_prompt(conversation(row["conversations"], "conversations"), "conversations")
    chosen, rejected = reply(row["chosen"], "chosen"), reply(row["rejected"], "rejected")
    return [pair(row, ("conversations", "chosen", "rejected"), prompt, chosen, rejected, ctx)]


_ALPACA = ("instruction", "input", "output", "system")


def alpaca_prompt_messages(row: dict) -> list[Message]:
    instruction = fields.text(row["instruction"], "instruction")
    extra = row.get("input")
    if extra is not None:
        extra = fields.text(extra, "input")
    user = instruction + "\n\n" + extra if extra and extra.strip() else instruction
    system = row.get("system")
    if system is not None:
        system = fields.text(system, "system")
    head = [{"role": "system", "content": system}] if system and system.strip() else []
    return head + [{"role": "user", "content": user}]


def alpaca_sft(row: dict, ctx: Context) -> list:
    prompt = alpaca_prompt_messages(row)
    response = fields.text(row["output"], "output")
    return [SFTRecord(prompt, response, ctx.source, meta(row, _ALPACA))]


def alpaca_prompt(row: dict, ctx: Context) -> list:
    """The prompt of an Alpaca row; its ``output``, if any, stays in ``meta``."""
    prompt = alpaca_prompt_messages(row)
    return [PromptRecord(prompt, ctx.source, meta(row, ("instruction", "input", "system")))]
