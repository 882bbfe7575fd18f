"""Weights and optimizer state of an engine: save, load, gather, stream.

Files (no pickle anywhere; safetensors and JSON only):

    {prefix}.safetensors                      ddp: the whole model, written by rank 0
    {prefix}-rank{r}-of-{n}.safetensors       fsdp: rank r's shards of every parameter
    {prefix}-optim[-rank{r}-of-{n}].safetensors  AdamW state tensors ("{index}.{key}")
    {prefix}-optim.json                       param groups (lr, betas, ...) and the scheduler

Under FSDP2 each parameter is a DTensor sharded on dim 0 (``torch.chunk`` semantics), so a
rank's file holds exactly its local shards and resuming with the same worker count is
bitwise exact; ``gather_shards`` rebuilds full tensors from the rank files offline (what
``rayrlhf export`` does), by concatenating the shards along dim 0 in rank order.
"""
from __future__ import annotations

import glob
import json
import os
import re

import torch
from safetensors.torch import load_file

from rayrlhf.utils.fs import save_safetensors


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def named_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters (shared ones once, under their first name) and persistent buffers."""
    out = dict(module.named_parameters())
    non_persistent = set()
    for mod_name, mod in module.named_modules():
        for b in getattr(mod, "_non_persistent_buffers_set", ()):
            non_persistent.add(f"{mod_name}.{b}" if mod_name else b)
    out.update({k: v for k, v in module.named_buffers() if k not in non_persistent})
    return out


def saved_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: ``named_state``, or with LoRA adapters only what trains (the
    adapters and a scalar head; the frozen base is the model folder the run started from)."""
    from rayrlhf.engine.lora import is_adapted

    named = named_state(module)
    if is_adapted(module):
        return {k: v for k, v in named.items() if v.requires_grad}
    return named


def export_state(module: torch.nn.Module) -> dict:
    """The weights as the plain model names them (what exports and rollout workers get):
    ``named_state``, with LoRA adapters merged into their layers (``rayrlhf.engine.lora.Merged``,
    computed when read by ``full_tensor``)."""
    from rayrlhf.engine.lora import weight_entries

    return weight_entries(named_state(module), module)


def _model_file(folder: str, prefix: str, rank: int, world: int, sharded: bool) -> str:
    tail = f"-rank{rank}-of-{world}" if sharded else ""
    return os.path.join(folder, f"{prefix}{tail}.safetensors")


def save(engine, folder: str, prefix: str) -> None:
    """This rank's part of the model and optimizer (ddp: rank 0 writes everything)."""
    os.makedirs(folder, exist_ok=True)
    sharded = engine.sharded
    if not sharded and engine.rank != 0:
        return
    named = saved_state(engine.hf_model)
    state = {k: _local(v).detach().to("cpu").contiguous() for k, v in named.items()}
    # Which tensors are shards, with their full shapes: what gather_shards concatenates.
    shards = {k: list(v.shape) for k, v in named.items() if _local(v) is not v}
    save_safetensors(state, _model_file(folder, prefix, engine.rank, engine.world, sharded),
              metadata={SHARDS_KEY: json.dumps(shards)})
    if engine.optimizer is None:
        return
    opt = engine.optimizer.state_dict()
    tensors = {f"{i}.{k}": _local(v).detach().to("cpu").contiguous()
               for i, st in opt["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    save_safetensors(tensors, _model_file(folder, f"{prefix}-optim", engine.rank, engine.world, sharded))
    if engine.rank == 0:
        meta = {"param_groups": opt["param_groups"], "world": engine.world, "sharded": sharded,
                "scheduler": engine.scheduler.state_dict() if engine.scheduler is not None else None}
        with open(os.path.join(folder, f"{prefix}-optim.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f)


def load(engine, folder: str, prefix: str, optimizer: bool = True) -> None:
    """Restore what ``save`` wrote; a sharded checkpoint needs the worker count it was saved with."""
    sharded = engine.sharded
    path = _model_file(folder, prefix, engine.rank, engine.world, sharded)
    if not os.path.exists(path):
        found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, f"{prefix}*.safetensors")))
        raise FileNotFoundError(
            f"{path}: not in this checkpoint (it has {found or 'no model files'}); a sharded (fsdp) "
            f"checkpoint resumes on the worker count it was saved with, here {engine.world}")
    saved = load_file(path)
    with torch.no_grad():
        for name, t in saved_state(engine.hf_model).items():
            if name not in saved:
                raise KeyError(f"{path}: no tensor {name!r}")
            _local(t).copy_(saved[name])
    meta_path = os.path.join(folder, f"{prefix}-optim.json")
    if not optimizer or engine.optimizer is None or not os.path.exists(meta_path):
        return
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    flat = load_file(_model_file(folder, f"{prefix}-optim", engine.rank, engine.world, sharded))
    params = [p for g in engine.optimizer.param_groups for p in g["params"]]
    state: dict[int, dict] = {}
    for key, t in flat.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = _like(params[int(i)], t) if k != "step" else t
    engine.optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if engine.scheduler is not None and meta.get("scheduler") is not None:
        engine.scheduler.load_state_dict(meta["scheduler"])


def _like(param: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """An optimizer state tensor shaped like ``param`` (a DTensor when it is one)."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        return DTensor.from_local(local.to(param.to_local().device), param.device_mesh, param.placements,
                                  shape=param.shape, stride=param.stride())
    return local


def full_tensor(t: torch.Tensor, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
    """``t`` whole on ``device`` (gathered from every rank when it is an FSDP shard: a
    collective), floating tensors cast to ``dtype`` when given."""
    from torch.distributed.tensor import DTensor

    from rayrlhf.engine.lora import Merged
    from rayrlhf.engine.quant import Dequantized

    if isinstance(t, (Merged, Dequantized)):
        full = t.full(lambda part: full_tensor(part, device))
    else:
        full = (t.full_tensor() if isinstance(t, DTensor) else t).detach()
    if dtype is not None and full.is_floating_point():
        full = full.to(dtype)
    return full.to(device)


def iter_full(module: torch.nn.Module, bucket_bytes: int, device: torch.device | str = "cpu"):
    """Yield dicts of full tensors, at most ``bucket_bytes`` each (one tensor larger than that
    comes alone), in ``named_state`` order. Under FSDP every rank must iterate in step: each
    sharded tensor is gathered with ``full_tensor()``, one at a time, so no rank ever holds
    more than one bucket of full weights."""
    bucket, size = {}, 0
    for name, t in export_state(module).items():
        full = full_tensor(t, device)
        n = full.numel() * full.element_size()
        if bucket and size + n > bucket_bytes:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = full
        size += n
    if bucket:
        yield bucket


def full_state_dict(engine, dtype: torch.dtype | None = None, bucket_bytes: int = 256 << 20) -> dict:
    """The whole state dict on rank 0's CPU (other ranks: {}), every rank gathering in step;
    tied weights appear under every name the model's own state_dict uses."""
    out: dict[str, torch.Tensor] = {}
    for bucket in iter_full(engine.module, bucket_bytes):
        if engine.rank == 0:
            out.update({k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).cpu()
                        for k, v in bucket.items()})
    if engine.rank != 0:
        return {}
    # Names the state dict has but named_state dropped as duplicates (tied embeddings).
    from rayrlhf.engine.lora import weight_entries

    plain = export_state(engine.hf_model)
    for name, t in weight_entries(engine.hf_model.state_dict(), engine.hf_model).items():
        if name not in out and torch.is_tensor(t):
            for other, p in plain.items():
                if torch.is_tensor(p) and (p is t or (_local(p).data_ptr() == _local(t).data_ptr() and p.shape == t.shape)):
                    out[name] = out[other]
                    break
    return out


SHARDS_KEY = "rayrlhf_shards"
_RANK = re.compile(r"-rank(\d+)-of-(\d+)\.safetensors$")


def gather_shards(folder: str, prefix: str) -> dict[str, torch.Tensor]:
    """Full tensors from a checkpoint's model files, without a process group: the ddp file as
    is, or the fsdp rank files concatenated along dim 0 in rank order."""
    whole = os.path.join(folder, f"{prefix}.safetensors")
    if os.path.exists(whole):
        return load_file(whole)
    files = sorted(glob.glob(os.path.join(folder, f"{prefix}-rank*-of-*.safetensors")),
                   key=lambda p: int(_RANK.search(p).group(1)))
    if not files:
        raise FileNotFoundError(f"{folder}: no {prefix}.safetensors or {prefix}-rank*-of-*.safetensors")
    world = int(_RANK.search(files[0]).group(2))
    if len(files) != world:
        raise FileNotFoundError(f"{folder}: {len(files)} of the {world} rank files of {prefix} are there")
    from safetensors import safe_open

    with safe_open(files[0], "pt") as f:
        shapes = json.loads((f.metadata() or {}).get(SHARDS_KEY, "{}"))
    parts = [load_file(p) for p in files]
    out = {}
    for name in parts[0]:
        if name not in shapes:  # a buffer: every rank holds all of it
            out[name] = parts[0][name]
            continue
        out[name] = torch.cat([p[name] for p in parts], dim=0)
        if list(out[name].shape) != shapes[name]:
            raise ValueError(f"{folder}: the shards of {name} make {list(out[name].shape)}, not {shapes[name]}")
    return out
