"""Atomic, resumable checkpoints.

A checkpoint is a folder ``<run>/checkpoints/step-00000042`` holding:

    <role>*.safetensors    weights and optimizer state of each trained model, written by the
    <role>-optim.json      engine (rayrlhf.engine.state: whole under ddp, one file per rank
                           under fsdp; safetensors and JSON, no pickle)
    *rng-rank{r}.pt        each worker's torch / python / numpy RNG state (tensors and
                           numbers only, loaded with ``weights_only=True``)
    state.json             counters: step, epoch, data position, metrics so far

It is written under a temporary name and renamed when complete, so a crash leaves the previous
checkpoint intact. Retention deletes old checkpoints only after the new one is in place.
"""
from __future__ import annotations

import os
import random
import re
import shutil

import numpy as np
import torch

from rayrlhf.utils.fs import CheckpointWriteError, atomic_dir, read_json

_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def list_checkpoints(run_dir: str) -> list[str]:
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    root = checkpoint_dir(run_dir)
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if _NAME.match(n) and os.path.exists(os.path.join(root, n, "state.json")))
    return [os.path.join(root, n) for n in names]


def latest_checkpoint(run_dir: str) -> str | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def rng_state() -> dict:
    out = {
        "torch": torch.get_rng_state(),
        "python": list(_listify(random.getstate())),
        "numpy": _numpy_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_tuplify(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(gauss)))


def save_rng(path: str) -> None:
    """This process's RNG state (tensors and numbers only)."""
    try:
        torch.save(rng_state(), path)
    except (OSError, RuntimeError) as e:  # torch's I/O errors do not name the file
        raise OSError(f"writing {path} failed: {e}") from e


def load_rng(path: str) -> None:
    """Restore ``save_rng``'s file when there is one (``weights_only``: no arbitrary pickle)."""
    if os.path.exists(path):
        set_rng_state(torch.load(path, weights_only=True))


def _numpy_state():
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]


def _listify(x):
    return [_listify(v) if isinstance(v, tuple) else v for v in x]


def _tuplify(x):
    return tuple(_tuplify(v) if isinstance(v, list) else v for v in x)


def write_checkpoint(run_dir: str, step: int, fill, state: dict, keep: int = 2) -> str:
    """Create ``step-N`` atomically: ``fill(tmp_folder)`` writes the files, then ``state.json``
    marks it complete; retention runs only after the rename (newest ``keep`` kept). A failure
    leaves the earlier checkpoints as they were and raises CheckpointWriteError."""
    from rayrlhf.utils.fs import atomic_write_json

    final = os.path.join(checkpoint_dir(run_dir), f"step-{step:08d}")
    try:
        with atomic_dir(final) as tmp:
            fill(tmp)
            atomic_write_json(os.path.join(tmp, "state.json"), dict(state, step=step))
    except Exception as e:
        cause = _cause(e)
        raise CheckpointWriteError(f"checkpoint {final}: writing failed ({type(cause).__name__}: {cause}); "
                                   f"{how_to_go_on(run_dir, 'previous')}") from e
    _retain(run_dir, keep)
    return final


def _cause(e: BaseException) -> BaseException:
    """The error a worker raised, not Ray's wrapper of it with the remote traceback."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) and type(e).__name__.startswith("RayTaskError") else e


def how_to_go_on(run_dir: str, which: str = "latest") -> str:
    """Which checkpoint of ``run_dir`` is intact and how to continue from it (or that none is)."""
    previous = latest_checkpoint(run_dir)
    if not previous:
        return "there is no earlier checkpoint: a rerun starts from the beginning"
    return (f"the {which} checkpoint {previous} is intact: once the cause is fixed, run the same command "
            "with --resume (a pipeline: run it again) to continue from it")


def _retain(run_dir: str, keep: int) -> None:
    found = list_checkpoints(run_dir)
    for old in found[: max(0, len(found) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)


EVAL_PENDING = "eval_pending.json"
"""A checkpoint's file for a step whose held-out evaluation failed: the step's metrics so far
(and whether the run was to stop there); a resumed run evaluates that step first."""


def evaluate_or_keep(evaluate, step: int, metrics: dict, save, announce: bool = True) -> dict:
    """``evaluate()``; when it raises, ``save(pending)`` first writes the step's checkpoint, with
    ``pending`` (the step's ``metrics`` so far) as its ``EVAL_PENDING`` file, and returns its
    folder: a failed held-out evaluation loses none of the training before it. The run stops
    with the evaluation's own error; ``--resume`` evaluates that step (``pending_evaluation``)
    and goes on as the uninterrupted run would. ``announce``: print what happened (one rank of
    several prints)."""
    try:
        return evaluate()
    except Exception as e:
        pending = {"step": step, "metrics": {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}}
        try:
            path = save(pending)
        except Exception as c:
            if announce:
                print(f"[rayrlhf] step {step}: the held-out evaluation failed ({type(e).__name__}: {e}), and "
                      f"writing the step's checkpoint failed too ({type(c).__name__}: {c})", flush=True)
            raise e from c
        if announce:
            print(f"[rayrlhf] step {step}: the held-out evaluation failed ({type(e).__name__}: {e}); the step's "
                  f"training is kept in {path}: once the cause is fixed, --resume evaluates step {step} and goes on",
                  flush=True)
        raise


def pending_evaluation(folder: str) -> dict | None:
    """The ``EVAL_PENDING`` file of checkpoint ``folder``: None when its step was evaluated."""
    path = os.path.join(folder, EVAL_PENDING)
    return read_json(path) if os.path.exists(path) else None
