"""Frozen base weights in 8-bit or 4-bit NF4 (bitsandbytes), and their plain values back.

    quantize_linears(model, "4bit", compute_dtype="bfloat16", device=cuda, skip=("lm_head", "score"))

replaces every ``nn.Linear`` of the decoder layers in place by bitsandbytes' ``Linear8bitLt``
(LLM.int8(), Dettmers et al. 2022: int8 rows with one float scale each) or ``Linear4bit`` (QLoRA,
Dettmers et al. 2023: NF4 in blocks of 64 with double-quantised absmax), quantising each layer
as it moves to ``device``, so the full-precision copy is never on the device. The output heads
(``lm_head``, a scalar ``score``) stay in ``dtype``. LoRA adapters go on top afterwards (peft
wraps bitsandbytes layers); the quantised weights never train.

Measured with bitsandbytes 0.50.2 and torch 2.13 (CPU build): both modes load, run forward and
backward through LoRA adapters on CPU as well as on CUDA.

``dequantized`` gives a quantised weight's values in float32 (what rollout workers and exports
get, merged with the adapters by ``rayrlhf.engine.lora``).
"""
from __future__ import annotations

import importlib.util

import torch

MODES = ("none", "8bit", "4bit")
HEADS = ("lm_head", "score")
"""Output heads, never quantised (as transformers' bitsandbytes integration leaves them)."""
INSTALL = 'pip install -e ".[quant]"'


def install_problem(mode: str) -> str | None:
    """Why ``mode`` cannot run here (bitsandbytes missing), or None."""
    if mode == "none" or importlib.util.find_spec("bitsandbytes") is not None:
        return None
    return f"{mode} needs bitsandbytes, which is not installed: {INSTALL}"


def _quantized_linear(linear: torch.nn.Linear, mode: str, compute_dtype: torch.dtype, device: torch.device):
    import bitsandbytes as bnb

    w = linear.weight.data
    bias = linear.bias is not None
    if mode == "8bit":
        # threshold 0: no fp16 outlier columns (pure int8 weights; the outlier split is a
        # GPU-inference refinement that would add memory the plan does not count).
        q = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False,
                                threshold=0.0, device="meta")
        q.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
    else:
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias, compute_dtype=compute_dtype,
                              compress_statistics=True, quant_type="nf4", device="meta")
        q.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True, quant_type="nf4", module=q)
        # CPU inference repacks 4-bit weights in place into another layout; keep one layout.
        q.support_avx512bf16_for_cpu = False
    if bias:
        q.bias = torch.nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
    q.weight = q.weight.to(device)  # quantises here
    q.weight.plain_dtype = w.dtype  # what ``dequantized`` gives back (8-bit quantises from float16)
    if bias:
        q.bias.data = q.bias.data.to(device)
    return q


def quantize_linears(model: torch.nn.Module, mode: str, compute_dtype: str, device: torch.device,
                     skip: tuple[str, ...] = HEADS) -> int:
    """Every ``nn.Linear`` of ``model`` but the ``skip`` heads quantised in place onto
    ``device``, layer by layer; returns how many were replaced."""
    from rayrlhf.models.load import DTYPES

    if mode == "none":
        return 0
    problem = install_problem(mode)
    if problem:
        raise RuntimeError(f"quantization: {problem}")
    dtype = DTYPES[compute_dtype]
    targets = [(name, mod) for name, mod in model.named_modules()
               if type(mod) is torch.nn.Linear and name.split(".")[-1] not in skip]
    for name, linear in targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, _quantized_linear(linear, mode, dtype, device))
    return len(targets)


def is_quantized(t) -> bool:
    return type(t).__name__ in ("Int8Params", "Params4bit")


def plain_dtype(weight) -> torch.dtype:
    """The dtype a weight had before it was quantised (its own for other tensors)."""
    return getattr(weight, "plain_dtype", weight.dtype) if is_quantized(weight) else weight.dtype


def dequantized(weight, layer: torch.nn.Module | None = None) -> torch.Tensor:
    """A bitsandbytes weight's values in float32, on its device (other tensors as they are).
    ``layer``: the weight's module; an 8-bit layer moves its row scales there at its first
    forward."""
    if not is_quantized(weight):
        return weight
    import bitsandbytes as bnb

    if type(weight).__name__ == "Params4bit":
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    scb = weight.SCB if weight.SCB is not None else getattr(getattr(layer, "state", None), "SCB", None)
    return bnb.functional.int8_vectorwise_dequant(weight.data, scb).float()


class Dequantized:
    """A quantised weight (of module ``layer``) read as the plain model has it, dequantised
    when ``full`` is called (``rayrlhf.engine.state.full_tensor``)."""

    def __init__(self, weight, layer: torch.nn.Module | None = None):
        self.weight, self.layer = weight, layer
        self.shape, self.dtype = _plain_shape(weight), plain_dtype(weight)

    def is_floating_point(self) -> bool:
        return True

    def numel(self) -> int:
        return self.shape.numel()

    def full(self, gather) -> torch.Tensor:
        return dequantized(self.weight, self.layer).reshape(self.shape).to(self.dtype)


def _plain_shape(weight) -> torch.Size:
    state = getattr(weight, "quant_state", None)
    return torch.Size(state.shape) if state is not None else weight.shape


def upcast_unquantized(model: torch.nn.Module) -> None:
    """Frozen 16-bit parameters that are not quantised (embeddings, norms, heads) to float32,
    as peft's ``prepare_model_for_kbit_training`` does for a trained quantised model: the
    norms' statistics and the head's logits stay accurate next to 4-bit weights."""
    for p in model.parameters():
        if not is_quantized(p) and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()
