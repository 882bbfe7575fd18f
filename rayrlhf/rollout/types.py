"""What a rollout returns, and the interface every backend offers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Sample:
    """One sampled response to one prompt."""

    prompt_index: int
    """Position of the prompt in the ``generate`` call."""
    sample_index: int
    """Which of the n samples of that prompt (0 .. n-1)."""
    prompt_ids: list[int]
    """The prompt's token ids, as given."""
    response_ids: list[int]
    """Generated token ids; ends with the EOS token when finish_reason is "stop"."""
    logprobs: list[float]
    """Behaviour logprobs, one per response token: ``log_softmax(logits / T)[token]`` at the
    step that produced it, T the sampling temperature, in float32 from the engine's logits.
    This is what a trainer computes from the same weights by dividing its logits by T, so with
    the PPO settings (top_p=1, top_k=-1) the ratio of new to old policy is exactly 1 before the
    first update. Greedy decoding (T=0) reports ``log_softmax(logits)``. With top-k/top-p
    truncation on, the logprobs are those of the truncated, renormalised distribution the token
    was actually drawn from (vLLM's "processed_logprobs"); a trainer that does not truncate
    will then see higher logprobs than these."""
    text: str
    """The response decoded without special tokens."""
    finish_reason: str
    """"stop" (an EOS token ended it) or "length" (max_new_tokens reached)."""
    policy_version: int
    """Version of the weights that generated it (0 = the checkpoint the worker started from)."""


class RolloutBackend(Protocol):
    """What the rollout worker needs from an engine (vLLM or transformers)."""

    name: str
    version: int

    def generate(self, prompt_ids: list[list[int]], n: int | None = None,
                 seed: int | None = None) -> list[Sample]:
        """n samples per prompt, in prompt order then sample order."""

    def load_weights(self, named_tensors: dict[str, torch.Tensor], version: int) -> dict:
        """Replace the weights; returns version, checksum, seconds, bytes."""

    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        """``log_softmax(logits)`` of each token after the first, given its prefix (T=1)."""

    def choice_logprobs(self, prompt_ids: list[list[int]], choices: list[list[int]]) -> list[list[float]]:
        """``log_softmax(logits)`` (T=1) after each prompt, at each of its candidate tokens."""
