"""Wrapping strategies and precision: DDP, or FSDP2 ``fully_shard`` per decoder layer.

Trained models arrive here with float32 parameters (the master weights). Under FSDP2 the
``MixedPrecisionPolicy`` casts each gathered layer to the compute dtype and reduces gradients
in float32; under DDP (or one worker) ``autocast`` computes matmuls in the compute dtype from
the float32 weights. Either way AdamW updates float32 weights with float32 state, so an update
of 1e-5 relative to a weight is kept, where bfloat16 parameters (8 bits of mantissa) would
round it away.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn

from rayrlhf.models.load import DTYPES


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks FSDP shards one by one: the classes transformers marks as
    ``_no_split_modules`` (LlamaDecoderLayer, Qwen2DecoderLayer, ...)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers found to shard (no _no_split_modules); "
                         "use strategy: ddp for this model")
    return layers


def wrap(model: nn.Module, strategy: str, device: torch.device, world: int, dtype: str,
         cpu_offload: bool = False, reshard_after_forward: bool = True) -> nn.Module:
    """The module to train: ``model`` itself (one ddp worker), DDP, or FSDP2-sharded in place."""
    if strategy == "fsdp":
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        from rayrlhf.engine.device import ensure_process_group

        if cpu_offload and device.type != "cuda":
            raise ValueError("cpu_offload: this worker computes on CPU, where the parameters already live in "
                             "CPU memory; set cpu_offload: false (offload moves GPU state to the host)")
        ensure_process_group(device)
        compute = DTYPES[dtype]
        mp = (MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
              if compute != torch.float32 else MixedPrecisionPolicy())
        kwargs = dict(mp_policy=mp, reshard_after_forward=reshard_after_forward,
                      offload_policy=CPUOffloadPolicy() if cpu_offload else OffloadPolicy())
        if device.type == "cuda":
            from torch.distributed.device_mesh import init_device_mesh

            kwargs["mesh"] = init_device_mesh("cuda", (dist.get_world_size(),))
        for layer in decoder_layers(model):
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        return model
    if strategy != "ddp":
        raise ValueError(f"strategy {strategy!r}: expected ddp or fsdp")
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


def compute_context(strategy: str, device: torch.device, dtype: str):
    """Autocast to the compute dtype under ddp; FSDP2's policy casts by itself."""
    compute = DTYPES[dtype]
    if strategy == "fsdp" or compute == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=compute)
