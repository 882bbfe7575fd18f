"""What the chaos cases compare: a faulted run's metrics, prompt use and exported weights against
the uninterrupted run's, and the stop-then-resume path of a fault the run cannot survive."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from rayrlhf import checkpoint as ckpt
from rayrlhf.metrics import read_metrics
from tests.chaos import tally
from tests.driver import faults

VARYING = ("rollout/worker_restarts", "sync/share_of_step")  # besides timings: differ between equal runs


def comparable(run_dir: str) -> list[dict]:
    return [{k: v for k, v in r.items() if not (k.startswith("timing/") or "seconds" in k or k in VARYING)}
            for r in read_metrics(run_dir)]


def weights(run_dir: str) -> dict:
    return load_file(os.path.join(run_dir, "export", "model.safetensors"))


def same_weights(run_dir: str, full_dir: str) -> None:
    a, b = weights(run_dir), weights(full_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def prompt_use(run_dir: str) -> list[list[int]]:
    """The prompt rows each iteration used: PPO's rollout ledger, or the rows rejection sampling
    kept a sample of in each round."""
    ledger = os.path.join(run_dir, "rollouts.jsonl")
    if os.path.exists(ledger):
        return [json.loads(x)["prompt_rows"] for x in open(ledger)]
    kept = os.path.join(run_dir, "kept")
    return [[json.loads(x)["prompt_row"] for x in open(os.path.join(kept, f))] for f in sorted(os.listdir(kept))]


def same_run(run_dir: str, full_dir: str, used_prompts: int) -> None:
    """Every prompt used once, in the iteration the uninterrupted run used it; its metrics and
    exported weights bitwise."""
    use = prompt_use(run_dir)
    flat = [r for rows in use for r in rows]
    assert len(flat) == used_prompts and len(set(flat)) == len(flat)  # no prompt lost or used twice
    assert use == prompt_use(full_dir)
    assert comparable(run_dir) == comparable(full_dir)
    same_weights(run_dir, full_dir)


def stop_then_resume(run, cfg, run_dir: str, call: int, expect, match: str, checkpoint_step: int | None,
                     used_prompts: int, full_dir: str) -> str:
    """``run(cfg)`` stops with ``expect`` (its message holding ``match``) once reward call ``call``
    has been made; the checkpoint of ``checkpoint_step`` (None: none yet) is the latest and stands
    alone, with nothing half-written beside it; ``--resume`` then gives the uninterrupted run.
    Returns the error's message."""
    with pytest.raises(expect) as e:
        run(cfg)
    assert faults.STATE["calls"] >= call
    tally.injected()
    latest = ckpt.latest_checkpoint(run_dir)
    name = f"step-{checkpoint_step:08d}" if checkpoint_step is not None else None
    assert latest == (os.path.join(run_dir, "checkpoints", name) if name else None)
    assert (sorted(os.listdir(os.path.dirname(latest))) if latest else []) == ([name] if name else [])
    msg = str(e.value)
    assert match in msg
    faults.reset()
    run(cfg, resume=True)
    same_run(run_dir, full_dir, used_prompts)
    return msg
