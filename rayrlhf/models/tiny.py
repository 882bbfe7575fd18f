"""Tiny Llama-style models built locally, for tests and the toyworld quickstart.

They are saved as ordinary HF folders and then loaded back through ``from_pretrained`` like
any real checkpoint. vLLM's CPU attention needs head_dim >= 32 (16 fails), so the factory
refuses smaller heads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TinyModelSpec:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = False

    def validate(self) -> list[str]:
        out = []
        if self.hidden_size % self.num_heads:
            out.append(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        elif self.hidden_size // self.num_heads < 32:
            out.append(
                f"head_dim {self.hidden_size // self.num_heads} < 32: vLLM's CPU attention cannot serve it; "
                "raise hidden_size or lower num_heads"
            )
        if self.num_heads % self.num_kv_heads:
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
        num_key_value_heads=spec.num_kv_heads,
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
