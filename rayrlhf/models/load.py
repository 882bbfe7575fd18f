"""Loading policies and reward/value models, and exporting plain Hugging Face folders.

Everything goes through ``from_pretrained(name_or_path)``, the path a user's real model takes;
tests point it at folders they build. ``trust_remote_code`` is passed through from the config
and is off by default.
"""
from __future__ import annotations

import json
import os

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_causal_lm(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=_dtype(dtype), trust_remote_code=trust_remote_code
    )


def load_scalar_model(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False,
                      pad_token_id: int | None = None):
    """A model with a scalar head (``num_labels=1``): reward models and critics.

    From a causal-LM checkpoint the head is new (initialised by transformers with the model's
    own init); from a reward-model export it is loaded. ``pad_token_id`` lets the model find
    each row's last real token (right padding).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    config.num_labels = 1
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    model = AutoModelForSequenceClassification.from_pretrained(
        name_or_path, config=config, dtype=_dtype(dtype), trust_remote_code=trust_remote_code
    )
    return model


def unwrap(model):
    """The plain model inside DDP / Ray Train wrappers."""
    return getattr(model, "module", model)


def export_hf(model, tokenizer, out_dir: str, extra: dict | None = None, state_dict: dict | None = None,
              dtype: str | None = None, adapter: tuple[dict, dict] | None = None) -> str:
    """Write a plain HF folder (config.json, model.safetensors, tokenizer) atomically.

    transformers and vLLM load the result directly; no merge step. ``extra`` is written to
    ``rayrlhf.json`` (what produced it: stage, step, metrics). ``state_dict``: the full
    weights to write instead of the model's own (gathered from an FSDP-sharded model);
    ``dtype``: the dtype they are stored in, recorded in config.json. ``adapter``: (tensors,
    adapter_config) of LoRA adapters, written to ``adapter/`` in peft's format
    (adapter_model.safetensors, adapter_config.json) beside the merged weights.
    """
    from rayrlhf.utils.fs import atomic_dir, save_safetensors

    model = unwrap(model)
    if state_dict is None:
        state_dict = {k: v.detach() for k, v in model.state_dict().items()}
        if dtype is not None:
            state_dict = {k: v.to(_dtype(dtype)) if v.is_floating_point() else v for k, v in state_dict.items()}
    if dtype is not None:
        model.config.dtype = dtype
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if adapter is not None:
            os.makedirs(os.path.join(tmp, "adapter"))
            tensors, config = adapter
            save_safetensors({k: v.contiguous() for k, v in tensors.items()},
                      os.path.join(tmp, "adapter", "adapter_model.safetensors"), metadata={"format": "pt"})
            with open(os.path.join(tmp, "adapter", "adapter_config.json"), "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2, sort_keys=True)
        if extra is not None:
            with open(os.path.join(tmp, "rayrlhf.json"), "w", encoding="utf-8") as f:
                json.dump(extra, f, indent=2, sort_keys=True)
    return out_dir
