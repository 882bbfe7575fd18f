"""LoRA adapters on a trained model (through peft), and the merged weights everyone else sees.

    apply_lora(model, LoraSection(r=16, alpha=32), heads=("score",))

injects low-rank adapters into the target linear layers in place (``peft.inject_adapter_in_model``:
no wrapper class, so the critic's value module, FSDP2 and DDP see the model they always do) and
freezes everything but the adapters and the ``heads`` (a reward model's or critic's scalar
head, trained whole). The base weights stay in the dtype they were loaded in.

Rollout workers, exports and the reference never see adapters: ``weight_entries`` names every
weight as the plain model names it, an adapted layer's weight being ``W + scale * B @ A``
computed when it is read (gathered first under FSDP), so the trainer's own copy never changes.
``adapters_disabled`` runs the base model (the reference policy, when the policy trains
adapters on the reference's weights).
"""
from __future__ import annotations

import contextlib

import torch

from rayrlhf.config.schema import LoraSection

ADAPTER = "default"


def apply_lora(model: torch.nn.Module, lora: LoraSection, heads: tuple[str, ...] = ()) -> torch.nn.Module:
    """Adapters into ``model`` in place; only they (float32) and the ``heads`` train."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = lora.target_modules
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
                        exclude_modules=list(heads) or None, init_lora_weights=True)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    head_params = {id(p) for name, mod in model.named_modules() if name.split(".")[-1] in heads
                   for p in mod.parameters()}
    found = 0
    for name, p in model.named_parameters():
        train = ".lora_" in name or id(p) in head_params
        p.requires_grad_(train)
        if train:
            p.data = p.data.float()
            found += ".lora_" in name
    if not found:
        raise ValueError(f"lora.target_modules {targets}: no layer of {type(model).__name__} matched")
    return model


def is_adapted(model: torch.nn.Module) -> bool:
    return any(".lora_" in name for name, _ in model.named_parameters())


def _lora_layers(model: torch.nn.Module) -> dict:
    from peft.tuners.lora import LoraLayer

    return {name: mod for name, mod in model.named_modules() if isinstance(mod, LoraLayer)}


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module):
    """Forward passes inside compute the base model (the adapters add nothing)."""
    layers = list(_lora_layers(model).values())
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


class Merged:
    """An adapted layer's weight as the plain model has it: ``base + scale * B @ A``, made
    when ``full`` is called (each part gathered first when it is an FSDP shard)."""

    def __init__(self, base: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, transpose: bool):
        # A quantised base (8-bit, 4-bit) comes as a ``Dequantized``: merged as its values.
        self.base = base
        self.a, self.b, self.scale, self.transpose = a, b, scale, transpose
        self.shape, self.dtype = self.base.shape, self.base.dtype

    def is_floating_point(self) -> bool:
        return True

    def numel(self) -> int:
        return self.base.numel()

    def full(self, gather) -> torch.Tensor:
        base = self.base.full(gather) if hasattr(self.base, "full") else gather(self.base)
        a, b = gather(self.a), gather(self.b)
        delta = (b.float() @ a.float()) * self.scale
        if self.transpose:
            delta = delta.T
        return (base.float() + delta.to(base.device)).to(self.dtype)


def weight_entries(named: dict[str, torch.Tensor], model: torch.nn.Module) -> dict:
    """``named`` (a model's ``named_state``) under the plain model's names: adapter tensors
    left out, ``x.base_layer.weight`` read as ``x.weight`` merged with x's adapter (a
    ``Merged``), other ``base_layer`` tensors renamed, quantised weights read dequantised
    (``rayrlhf.engine.quant.Dequantized``). Other tensors pass through."""
    named = {k: _plain(k, t, model) for k, t in named.items()}
    if not any(".lora_" in k for k in named):
        return named
    layers = _lora_layers(model)
    out: dict = {}
    for name, t in named.items():
        if ".lora_" in name:
            continue
        if ".base_layer." not in name:
            out[name] = t
            continue
        owner, leaf = name.rsplit(".base_layer.", 1)
        layer = layers[owner]
        if leaf == "weight" and ADAPTER in layer.lora_A and not getattr(layer, "merged", False):
            out[f"{owner}.weight"] = Merged(t, layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight,
                                            float(layer.scaling[ADAPTER]), bool(getattr(layer, "fan_in_fan_out", False)))
        else:
            out[f"{owner}.{leaf}"] = t
    return out


def _plain(name: str, t, model: torch.nn.Module):
    """``t``, or a quantised weight as a ``Dequantized`` of its layer."""
    from rayrlhf.engine.quant import Dequantized, is_quantized

    if not is_quantized(t):
        return t
    owner = name.rsplit(".", 1)[0]
    return Dequantized(t, model.get_submodule(owner))


def adapter_state(named: dict[str, torch.Tensor]) -> dict:
    """The adapter tensors of ``named`` under peft's saved names (``base_model.model.<layer>
    .lora_A.weight``), what ``PeftModel.from_pretrained`` loads."""
    return {"base_model.model." + k.replace(f".{ADAPTER}.", "."): t for k, t in named.items() if ".lora_" in k}


def adapter_config(model: torch.nn.Module, base_model: str) -> dict:
    """peft's adapter_config.json for the adapter in ``model``."""
    config = model.peft_config[ADAPTER]
    out = config.to_dict()
    out["base_model_name_or_path"] = base_model
    out["target_modules"] = sorted(out["target_modules"]) if isinstance(out["target_modules"], (set, list)) else \
        out["target_modules"]
    if isinstance(out.get("exclude_modules"), set):
        out["exclude_modules"] = sorted(out["exclude_modules"])
    out["task_type"] = out.get("task_type") or "CAUSAL_LM"
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in out.items()}
