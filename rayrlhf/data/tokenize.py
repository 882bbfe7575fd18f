"""Records -> token ids -> padded tensors.

A sequence is ``render_prompt(prompt) + ids(response) + [eos]``: the prompt rendered with the
chat template and its generation prompt, exactly what the policy sees before it generates, then
the reply as the policy would generate it, then EOS. Losses are taken where ``loss_mask`` is 1:
the response and its EOS.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from rayrlhf.data.schema import DEFAULT_MARGIN_VALUES, Message, PreferenceRecord, SFTRecord

TRUNCATION_STATS = ("prompt_truncated", "response_truncated")


def render_prompt(tokenizer, messages: list[Message]) -> list[int]:
    """Token ids of a prompt with the generation prompt appended.

    Uses the tokenizer's chat template; a tokenizer without one (a base model) gets the Anthropic
    HH layout ``"\\n\\nHuman: ...\\n\\nAssistant:"`` with its usual special tokens.
    """
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if isinstance(ids, Mapping):  # versions that ignore return_dict=False
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer(plain_prompt(messages)).input_ids)


def plain_prompt(messages: list[Message]) -> str:
    """The HH transcript layout, for tokenizers without a chat template."""
    names = {"user": "Human", "assistant": "Assistant"}
    parts = [
        m["content"] if m["role"] == "system" else f"\n\n{names[m['role']]}: {m['content']}"
        for m in messages
    ]
    return "".join(parts) + "\n\nAssistant:"


def encode_response(tokenizer, response: str) -> list[int]:
    """The reply's ids as generated after the prompt, then EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token; set one (e.g. tokenizer.eos_token = ...)")
    return list(tokenizer(response, add_special_tokens=False).input_ids) + [tokenizer.eos_token_id]


def fit(prompt: list[int], responses: list[list[int]], max_len: int, stats: dict | None = None):
    """Cut ``prompt + response`` (for every response) to ``max_len`` tokens.

    The prompt loses tokens from its left while the longest response fits beside at least one
    prompt token. Otherwise the responses are cut on the right (losing their EOS, so the model is
    not taught to stop mid-answer) and the prompt keeps its last ``max_len // 2`` tokens. Every
    cut is counted in ``stats`` (keys ``TRUNCATION_STATS``) for the caller to report.
    """
    if max_len < 2:
        raise ValueError(f"max_len={max_len}; expected at least 2 tokens")
    longest = max(len(r) for r in responses)
    if len(prompt) + longest <= max_len:
        return prompt, responses
    if longest < max_len:
        _count(stats, "prompt_truncated")
        return prompt[len(prompt) + longest - max_len:], responses
    keep = min(len(prompt), max_len // 2)
    if keep < len(prompt):
        _count(stats, "prompt_truncated")
    _count(stats, "response_truncated")
    return prompt[len(prompt) - keep:], [r[: max_len - keep] for r in responses]


def _count(stats: dict | None, key: str) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + 1


def encode_sft(tokenizer, record: SFTRecord, max_len: int, stats: dict | None = None) -> dict:
    """``{"input_ids", "loss_mask"}``: lists of ``<= max_len`` ints, mask 1 on response + EOS."""
    prompt, (response,) = fit(
        render_prompt(tokenizer, record.prompt),
        [encode_response(tokenizer, record.response)],
        max_len,
        stats,
    )
    return {"input_ids": prompt + response, "loss_mask": [0] * len(prompt) + [1] * len(response)}


def encode_pair(
    tokenizer,
    record: PreferenceRecord,
    max_len: int,
    stats: dict | None = None,
    margin_values: Mapping[str, float] = DEFAULT_MARGIN_VALUES,
) -> dict:
    """Both sides of a comparison, cut to the same prompt so the two scores share a context.

    Returns ``chosen_ids``, ``rejected_ids``, their ``chosen_loss_mask`` / ``rejected_loss_mask``
    (1 on the response + EOS), ``margin`` (the record's number, else ``margin_values`` of its
    label, else NaN) and ``margin_label``.
    """
    prompt, (chosen, rejected) = fit(
        render_prompt(tokenizer, record.prompt),
        [encode_response(tokenizer, record.chosen), encode_response(tokenizer, record.rejected)],
        max_len,
        stats,
    )
    if record.margin is not None:
        margin = float(record.margin)
    elif record.margin_label is not None:
        margin = float(margin_values[record.margin_label])
    else:
        margin = math.nan
    return {
        "chosen_ids": prompt + chosen,
        "rejected_ids": prompt + rejected,
        "chosen_loss_mask": [0] * len(prompt) + [1] * len(chosen),
        "rejected_loss_mask": [0] * len(prompt) + [1] * len(rejected),
        "margin": margin,
        "margin_label": record.margin_label,
    }


def pad_right(rows: list[list[int]], value: int) -> torch.Tensor:
    """Shape: (len(rows), max row length), dtype long."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def collate_sft(batch: list[dict], pad_id: int) -> dict:
    """``input_ids``, ``attention_mask``, ``loss_mask``; each Shape: (B, T), right-padded."""
    if pad_id is None:
        raise ValueError("pad_id is None; give the tokenizer a pad token")
    ids = [b["input_ids"] for b in batch]
    return {
        "input_ids": pad_right(ids, pad_id),
        "attention_mask": pad_right([[1] * len(r) for r in ids], 0),
        "loss_mask": pad_right([b["loss_mask"] for b in batch], 0),
    }


def collate_pairs(batch: list[dict], pad_id: int) -> dict:
    """Chosen rows then rejected rows, so one forward pass scores both sides.

    Returns ``input_ids``, ``attention_mask``, ``loss_mask`` (Shape: (2B, T), rows ``i`` and
    ``B + i`` are the chosen and rejected sides of pair ``i``), ``margin`` (Shape: (B,), float,
    0 where the pair has none) and ``margin_label`` (B labels or None).
    """
    if pad_id is None:
        raise ValueError("pad_id is None; give the tokenizer a pad token")
    ids = [b["chosen_ids"] for b in batch] + [b["rejected_ids"] for b in batch]
    masks = [b["chosen_loss_mask"] for b in batch] + [b["rejected_loss_mask"] for b in batch]
    margin = torch.tensor([b["margin"] for b in batch], dtype=torch.float32)
    return {
        "input_ids": pad_right(ids, pad_id),
        "attention_mask": pad_right([[1] * len(r) for r in ids], 0),
        "loss_mask": pad_right(masks, 0),
        "margin": torch.nan_to_num(margin, nan=0.0),
        "margin_label": [b["margin_label"] for b in batch],
    }
