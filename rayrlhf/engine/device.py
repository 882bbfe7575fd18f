"""The device a role computes on, and the collective backend that goes with it.

Inside a Ray actor that reserved GPUs, Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs of its
bundle, so the actor's GPU is ``cuda:0``; Ray Train workers get theirs from
``ray.train.torch.get_device()`` (passed in). NCCL moves CUDA tensors only, gloo CPU tensors.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class NoGPUError(RuntimeError):
    """A role reserved a GPU but no CUDA device is visible to it."""


def resolve_device(wants_gpu: bool, role: str, config_key: str, fake_gpus: bool = False,
                   given: torch.device | None = None) -> torch.device:
    """``given`` when the caller knows it (Ray Train), else cuda:0 for a GPU role, else CPU."""
    if given is not None and torch.device(given).type == "cuda":
        return torch.device(given)
    if not wants_gpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if fake_gpus:
        return torch.device("cpu")
    raise NoGPUError(
        f"{role}: reserved a GPU ({config_key}) but sees no CUDA device (torch.cuda.is_available() "
        f"is False, CUDA_VISIBLE_DEVICES={_visible()!r}): install the CUDA build of torch on the "
        f"GPU nodes, or set the GPUs of {config_key} to 0 to run it on CPU "
        "(placement tests on fake GPUs: resources.fake_gpus: true)")


def _visible() -> str | None:
    import os

    return os.environ.get("CUDA_VISIBLE_DEVICES")


def backend_for(device: torch.device) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def ensure_process_group(device: torch.device) -> None:
    """A one-rank default group when none exists (FSDP2 needs one, even on one worker)."""
    if dist.is_initialized():
        return
    dist.init_process_group(backend_for(device), store=dist.HashStore(), rank=0, world_size=1)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
