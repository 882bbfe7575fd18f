"""The rollout batch every actor exchanges: right-padded prompt+response token ids.

Shapes: ``input_ids`` and ``attention_mask`` are (B, T); everything per token that the losses
use (``response_mask``, ``logprobs``, ``values``, ``advantages``, ...) is (B, T-1), where
column t refers to the prediction of token t+1 (``token_logprobs`` alignment).
"""
from __future__ import annotations

import torch


def build_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> dict:
    """Concatenate each prompt with its response; mark the response positions."""
    rows = [p + r for p, r in zip(prompt_ids, response_ids)]
    T = max(len(r) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    response_mask = torch.zeros((B, T - 1), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[i, :n] = 1
        # token at position j (j >= len(p)) is predicted at column j - 1
        response_mask[i, len(p) - 1:n - 1] = 1.0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def select_rows(batch: dict, rows) -> dict:
    """The sub-batch of ``rows`` (a list or tensor of indices), trimmed of all-pad columns."""
    idx = torch.as_tensor(rows, dtype=torch.long)
    out = {k: v[idx] if torch.is_tensor(v) and v.dim() > 0 else v for k, v in batch.items()}
    width = int(out["attention_mask"].sum(dim=1).max()) if len(idx) else 1
    for k, v in out.items():
        if torch.is_tensor(v) and v.dim() == 2:
            out[k] = v[:, :width] if v.shape[1] == batch["input_ids"].shape[1] else v[:, :width - 1]
    return out


def as_lists(batch: dict, group: int) -> dict:
    """Rows ``l * group + g`` as list l's response g: every tensor (N * group, ...) becomes
    (N, group, ...), so that a split into rows (micro-batches, ranks) keeps each list whole."""
    return {k: v.reshape(v.shape[0] // group, group, *v.shape[1:]) if torch.is_tensor(v) and v.dim() > 0 else v
            for k, v in batch.items()}


def split_rows(n: int, parts: int) -> list[list[int]]:
    """Row indices of ``parts`` contiguous, near-equal shards."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(list(range(start, start + size)))
        start += size
    return out
