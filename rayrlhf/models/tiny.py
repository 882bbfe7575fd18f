"""Tiny Llama-style models built locally, for tests and the toyworld quickstart.

They are saved as ordinary HF folders and then loaded back through ``from_pretrained`` like
any real checkpoint. vLLM's CPU attention needs head_dim >= 32 (16 fails), so the factory
refuses smaller heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class TinyModelSpec:
    """The size of a tiny Llama (also the `model` section of `rayrlhf toyworld`)."""

    hidden_size: int = 128
    """Width (head_dim = hidden_size / num_heads must be >= 32 for vLLM's CPU attention)."""
    num_layers: int = 2
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads."""
    num_kv_heads: Optional[int] = None
    """Key/value heads (grouped-query attention); empty: as many as num_heads."""
    intermediate_size: int = 384
    """MLP width."""
    max_position_embeddings: int = 256
    """Longest sequence the model can take."""
    tie_word_embeddings: bool = False
    """Share the input embedding and the LM head."""

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def validate(self) -> list[str]:
        out = []
        if self.hidden_size % self.num_heads:
            out.append(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        elif self.hidden_size // self.num_heads < 32:
            out.append(
                f"head_dim {self.hidden_size // self.num_heads} < 32: vLLM's CPU attention cannot serve it; "
                "raise hidden_size or lower num_heads"
            )
        if self.num_heads % self.kv_heads:
            out.append("num_heads must be a multiple of num_kv_heads")
        return out


def build_tiny_llama(tokenizer, spec: TinyModelSpec | None = None, seed: int = 0, out_dir: str | None = None):
    """A randomly initialised LlamaForCausalLM sized by ``spec`` for ``tokenizer``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = spec or TinyModelSpec()
    problems = spec.validate()
    if problems:
        raise ValueError("tiny model spec: " + "; ".join(problems))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=spec.tie_word_embeddings,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if out_dir:
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    return model
