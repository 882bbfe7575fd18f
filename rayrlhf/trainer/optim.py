"""Optimizer and learning-rate schedule shared by every training stage."""
from __future__ import annotations

import math

import torch


def build_optimizer(model, lr: float, weight_decay: float, betas) -> torch.optim.Optimizer:
    # No decay on biases and norm weights (the usual AdamW practice, Loshchilov & Hutter 2019).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), foreach=False)


def lr_lambda(total_steps: int, warmup_steps: int, schedule: str, min_ratio: float):
    """Multiplier of the peak lr at each optimizer step: linear warm-up, then decay."""

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - (1.0 - min_ratio) * progress
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def build_scheduler(optimizer, total_steps: int, warmup_ratio: float, schedule: str, min_ratio: float):
    warmup = int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, warmup, schedule, min_ratio))
