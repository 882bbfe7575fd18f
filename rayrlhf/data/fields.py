"""Parsers for the fields every format shares: text, chat messages, prompts, responses, margins.

Each parser returns the canonical value or raises ``RowError(field, reason)`` naming the dotted
path of the offending field (``chosen[1].role``) and saying what was found and what is expected.
"""
from __future__ import annotations

import math
import re

from rayrlhf.data.problems import RowError, describe
from rayrlhf.data.schema import MARGIN_LEVELS, ROLES, Message

_ROLE_LIST = ", ".join(ROLES)
# Llama 2's fourth level is "negligibly better / unsure"; annotation tools write it either way.
_UNSURE = ("negligibly better / unsure", "unsure")


def text(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise RowError(field, f"expected a string, found {describe(value)}")
    return value


def messages(value: object, field: str) -> list[Message]:
    """A non-empty list of ``{"role", "content"}`` objects with known roles and string contents.

    Keys other than role and content (``name``, ids, ...) are dropped.
    """
    if not isinstance(value, list):
        raise RowError(
            field,
            f'expected a list of messages like [{{"role": "user", "content": "..."}}], '
            f"found {describe(value)}",
        )
    if not value:
        raise RowError(field, "empty list; expected at least one message")
    out = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            found = describe(message)
            raise RowError(where, f"expected a message with 'role' and 'content', found {found}")
        role, content = message.get("role"), message.get("content")
        if role is None:
            hint = ""
            if "from" in message:
                hint = (" (ShareGPT-style 'from'/'value' turns are read from a 'conversations' column, format "
                        f"'sharegpt': data.columns: {{conversations: {field}}})")
            raise RowError(f"{where}.role", f"missing; expected one of {_ROLE_LIST}{hint}")
        if role not in ROLES:
            raise RowError(f"{where}.role", f"unknown role {role!r}; expected one of {_ROLE_LIST}")
        if content is None:
            raise RowError(f"{where}.content", "missing; expected the message text as a string")
        if not isinstance(content, str):
            raise RowError(f"{where}.content", f"expected a string, found {describe(content)}")
        out.append({"role": role, "content": content})
    return out


def check_prompt(prompt: list[Message], field: str) -> list[Message]:
    """A prompt must end with the user's turn: the policy answers right after it."""
    if not prompt:
        raise RowError(field, "no prompt: expected at least one user message before the response")
    if prompt[-1]["role"] != "user":
        last = prompt[-1]["role"]
        raise RowError(field, f"the prompt must end with a user message, found {last!r} last")
    return prompt


def prompt(value: object, field: str) -> list[Message]:
    """A prompt given as a string (one user message) or as a list of messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return check_prompt(messages(value, field), field)
    raise RowError(field, f"expected a string or a list of messages, found {describe(value)}")


def response(value: object, field: str) -> str:
    """A response given as a string or as ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        found = describe(value)
        expected = "a string or a list of one assistant message"
        raise RowError(field, f"expected {expected}, found {found}")
    turns = messages(value, field)
    if len(turns) != 1:
        raise RowError(
            field,
            f"expected a single assistant message, found {len(turns)} messages "
            "(if it holds the whole conversation, use format 'implicit')",
        )
    if turns[0]["role"] != "assistant":
        raise RowError(f"{field}[0].role", f"expected 'assistant', found {turns[0]['role']!r}")
    return turns[0]["content"]


def final_reply(turns: list[Message], field: str) -> tuple[list[Message], str]:
    """Split a conversation into (prompt, text of the final assistant message)."""
    last = len(turns) - 1
    if turns[last]["role"] != "assistant":
        raise RowError(
            f"{field}[{last}].role",
            f"the last message must be the assistant's reply, found {turns[last]['role']!r}",
        )
    return check_prompt(turns[:last], field), turns[last]["content"]


def margin(value: object) -> tuple[str | None, float | None]:
    """The optional ``margin`` field: (Llama 2 label, None), (None, number) or (None, None)."""
    if value is None:
        return None, None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isnan(value):  # a null in a numeric Parquet / pandas column
            return None, None
        if math.isfinite(value):
            return None, float(value)
    if isinstance(value, str):
        key = " ".join(re.sub(r"[_-]", " ", value).lower().split())
        key = re.sub(r"\s*/\s*", " / ", key)
        if key in MARGIN_LEVELS:
            return key, None
        if key in _UNSURE:
            return "negligibly better", None
    levels = ", ".join(repr(m) for m in MARGIN_LEVELS)
    found = describe(value)
    raise RowError("margin", f"unknown margin {found}; expected one of {levels}, or a number")


def probability(value: object, field: str) -> float | None:
    """An optional probability in [0, 1] (a soft label), or None when absent."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isnan(value):  # a null in a numeric Parquet / pandas column
            return None
        if 0.0 <= value <= 1.0:
            return float(value)
    raise RowError(field, f"must be a probability in [0, 1], got {describe(value)}")
