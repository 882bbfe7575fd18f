"""Settings that would make a role fit: the memory plan re-run with alternatives.

Each lever is one config change (or a family of values, least intrusive first); single levers
are tried first, then pairs and triples, and a combination is reported only when it fits and no
smaller combination already reported is part of it.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Callable

MAX_FIXES = 4
MAX_LEVERS = 3
IMPLY_FSDP = {"workers", "offload"}
"""Levers that set strategy: fsdp themselves."""


@dataclass
class Lever:
    name: str
    values: list
    changes: Callable[[object], dict]
    """value -> {dotted config path: new value}."""


def fixes_for(redo, command: str, role: str) -> list[str]:
    """Labels of the alternatives under which ``role`` fits, e.g. ``policy.strategy: fsdp``."""
    cfg, known = redo
    levers = _levers(command, cfg, role)
    found: list[set[str]] = []
    labels: list[str] = []
    for size in range(1, MAX_LEVERS + 1):
        for combo in itertools.combinations(levers, size):
            names = {lv.name for lv in combo}
            if "fsdp" in names and names & IMPLY_FSDP:
                continue
            if names & IMPLY_FSDP:
                names.add("fsdp")
            if any(f <= names for f in found):
                continue
            for values in itertools.product(*(lv.values for lv in combo)):
                changes: dict = {}
                for lv, v in zip(combo, values):
                    changes.update(lv.changes(v))
                if _fits(command, cfg, known, role, changes):
                    found.append(names)
                    labels.append(" + ".join(f"{k}: {_yaml(v)}" for k, v in changes.items()))
                    break
            if len(labels) >= MAX_FIXES:
                return labels
    return labels


def _levers(command: str, cfg, role: str) -> list[Lever]:
    from rayrlhf.config.ppo import resolve_derived
    from rayrlhf.config.schema import SUPERVISED_COMMANDS

    if command in SUPERVISED_COMMANDS:
        return _trained_levers(cfg.model, "model", "scaling.num_workers", cfg.scaling.num_workers,
                               "train.per_worker_micro_batch_size", cfg.train.per_worker_micro_batch_size)
    res = cfg.resources.roles()[role]
    res_key = "resources." + (f"rewards.{role.split('/', 1)[1]}" if role.startswith("reward/") else role)
    out: list[Lever] = []
    micro_key = f"{command}.per_worker_micro_batch_size"
    micro = getattr(cfg, command).per_worker_micro_batch_size
    if role in ("trainer", "critic"):
        key = "policy" if role == "trainer" else "critic"
        section = cfg.policy if role == "trainer" else resolve_derived(cfg.critic, cfg.policy)
        out += _trained_levers(section, key, f"{res_key}.num_workers", res.num_workers, micro_key, micro)
    if command == "ppo" and role != "rollout":
        fwd = cfg.ppo.forward_micro_batch_size
        out.append(Lever("forward", _halvings(fwd), lambda v: {"ppo.forward_micro_batch_size": v}))
    if role == "rollout":
        r = cfg.rollout
        if res.colocate_with is None:
            tps = [t for t in (2, 4, 8) if t > r.tensor_parallel_size]
            out.append(Lever("tp", tps, lambda v: {"rollout.tensor_parallel_size": v,
                                                   "resources.rollout.gpus_per_worker": v}))
        utils = [round(u, 2) for u in (0.6, 0.7, 0.8, 0.85, 0.9, 0.95) if u > r.gpu_memory_utilization + 1e-9]
        out.append(Lever("util", utils, lambda v: {"rollout.gpu_memory_utilization": v}))
    if res.colocate_with is not None:
        gpus = max(1.0, float(res.gpus_per_worker))
        out.append(Lever("own", [None], lambda v: {f"{res_key}.colocate_with": None,
                                                  f"{res_key}.gpus_per_worker": gpus}))
    return [lv for lv in out if lv.values]


def _trained_levers(section, key: str, workers_key: str, workers: int, micro_key: str, micro: int) -> list[Lever]:
    out = []
    if not section.gradient_checkpointing:
        out.append(Lever("ckpt", [True], lambda v: {f"{key}.gradient_checkpointing": v}))
    out.append(Lever("micro", _halvings(micro), lambda v: {micro_key: v}))
    fsdp = {f"{key}.strategy": "fsdp"}
    if section.strategy != "fsdp":
        out.append(Lever("fsdp", ["fsdp"], lambda v: dict(fsdp)))
    out.append(Lever("workers", [workers * k for k in (2, 4, 8)], lambda v: {**fsdp, workers_key: v}))
    if not section.cpu_offload:
        out.append(Lever("offload", [True], lambda v: {**fsdp, f"{key}.cpu_offload": v}))
    return out


def _halvings(n: int) -> list[int]:
    out = []
    while n > 1:
        n //= 2
        out.append(n)
    return out


def _fits(command: str, cfg, known, role: str, changes: dict) -> bool:
    from rayrlhf.config.loader import ConfigError
    from rayrlhf.engine.memory import plan_memory

    trial = copy.deepcopy(cfg)
    for path, value in changes.items():
        _set(trial, path, value)
    try:
        return plan_memory(command, trial, known).fits_alone(role)
    except (ConfigError, ValueError):
        return False


def _set(obj, path: str, value) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    if isinstance(obj, dict):
        obj[last] = value
    else:
        setattr(obj, last, value)


def _yaml(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)
