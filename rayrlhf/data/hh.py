"""Anthropic HH transcripts: ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` (Bai et al. 2022).

Anthropic/hh-rlhf stores each comparison as two full transcripts that share every turn but the
last reply; Dahoas/rm-static stores the shared part as a prompt ending in ``"\\n\\nAssistant:"``.
"""
from __future__ import annotations

import os
import re

from rayrlhf.data.fields import check_prompt
from rayrlhf.data.problems import RowError
from rayrlhf.data.schema import Message

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def looks_like_transcript(value: object) -> bool:
    return isinstance(value, str) and value.lstrip().startswith("Human:") and ASSISTANT in value


def parse_transcript(text: str, field: str) -> list[Message]:
    """Turns of a transcript, Human -> user and Assistant -> assistant, contents stripped."""
    stripped = text.lstrip()
    if stripped.startswith(("Human:", "Assistant:")):  # some rows drop the leading blank line
        text = "\n\n" + stripped
    parts = _TURN.split(text)
    lead = parts[0].strip()
    if lead:
        shown = lead if len(lead) <= 40 else lead[:37] + "..."
        raise RowError(
            field,
            f"text before the first 'Human:' turn ({shown!r}); "
            "expected the transcript to start with '\\n\\nHuman:'",
        )
    if len(parts) == 1:
        expected = "'\\n\\nHuman: ...\\n\\nAssistant: ...'"
        raise RowError(field, f"no 'Human:' or 'Assistant:' turns; expected {expected}")
    return [
        {"role": _ROLE[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)
    ]


def parse_prompt(text: str, field: str) -> list[Message]:
    """A transcript that ends with an opened ``"\\n\\nAssistant:"`` turn, as a chat prompt."""
    turns = parse_transcript(text, field)
    if turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns = turns[:-1]
    return check_prompt(turns, field)


def split_pair(chosen: str, rejected: str) -> tuple[list[Message], str, str]:
    """(prompt, chosen reply, rejected reply) from two hh-rlhf transcripts.

    The prompt is the shared text up to and including its last ``"\\n\\nAssistant:"``; each reply is
    the rest of its transcript, stripped. Identical transcripts or an empty final reply are left
    for ``validate_records`` to report.
    """
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT)
    if cut < 0:
        raise RowError(
            "chosen",
            "chosen and rejected share no '\\n\\nAssistant:' turn; expected two transcripts that "
            "differ only in the final Assistant reply",
        )
    end = cut + len(ASSISTANT)
    prompt = parse_prompt(chosen[:end], "chosen")
    replies = []
    for field, transcript in (("chosen", chosen), ("rejected", rejected)):
        reply = transcript[end:]
        if HUMAN in reply or ASSISTANT in reply:
            raise RowError(
                field,
                "chosen and rejected diverge before their final Assistant turn; expected them to "
                "share every turn but the last reply",
            )
        replies.append(reply.strip())
    return prompt, replies[0], replies[1]
