"""Canonical records every reader produces and every stage consumes.

Whatever the file format (TRL-style, hh-rlhf transcripts, rm-static, stack-exchange-paired,
ranked lists, conversational messages, ShareGPT conversations, Alpaca instructions), a reader
turns each row into one of these records.
Prompts are always a list of chat messages; responses are the text of the final assistant
turn. Tokenization (``rayrlhf.data.tokenize``) renders them with the tokenizer's chat template.
"""
from __future__ import annotations

from dataclasses import dataclass, field

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}

ROLES = ("system", "user", "assistant")

# Llama 2 (Touvron et al. 2023, Table 27): the four annotator margin levels, best first.
MARGIN_LEVELS = ("significantly better", "better", "slightly better", "negligibly better")
# The "margin small" column of Table 27; "margin large" is (3, 2, 1, 0).
DEFAULT_MARGIN_VALUES = {
    "significantly better": 1.0,
    "better": 2.0 / 3.0,
    "slightly better": 1.0 / 3.0,
    "negligibly better": 0.0,
}


@dataclass
class Source:
    """Where a record came from: shown in every error and kept for debugging."""

    file: str
    line: int  # 1-based line for JSONL, 1-based row for Parquet / hub datasets


@dataclass
class PromptRecord:
    """A prompt alone (PPO, rejection sampling, best-of-K inference)."""

    prompt: list[Message]
    source: Source | None = None
    meta: dict = field(default_factory=dict)  # e.g. {"unsafe": True} on toyworld


@dataclass
class SFTRecord:
    """A demonstration: the loss is taken on ``response`` only."""

    prompt: list[Message]
    response: str
    source: Source | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class PreferenceRecord:
    """One comparison: ``chosen`` is preferred over ``rejected`` for ``prompt``.

    ``margin_label`` is one of MARGIN_LEVELS when the data carries a Llama 2 style label;
    ``margin`` is a number given directly in the data (it wins over the label's value).
    ``p_chosen`` is a soft label: the probability that ``chosen`` is the better response (an
    AI judge's, or the share of annotators who preferred it); None means 1.
    """

    prompt: list[Message]
    chosen: str
    rejected: str
    margin_label: str | None = None
    margin: float | None = None
    source: Source | None = None
    meta: dict = field(default_factory=dict)
    p_chosen: float | None = None
