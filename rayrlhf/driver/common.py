"""Pieces the PPO and rejection-sampling loops share: phase timers, the prompt order, forward
passes over a role's workers, sending the policy's weights to the rollout fleet, and their
checkpoints."""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from rayrlhf import checkpoint as ckpt
from rayrlhf.actors.batch import select_rows, split_rows
from rayrlhf.algo.intervals import is_interval_key
from rayrlhf.driver.controller import restore_fleet_size
from rayrlhf.driver.fleet import get
from rayrlhf.utils.fs import CheckpointWriteError, atomic_write_json, read_json


class Timer:
    """``with t("generate"): ...`` adds the seconds to ``t.times["timing/generate"]``."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _T:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[f"timing/{name}"] = timer.times.get(f"timing/{name}", 0.0) + time.perf_counter() - self.t0
                return False

        return _T()


class PromptOrder:
    """Prompts of iteration ``step``: consecutive slices of a seeded permutation per epoch, so a
    resumed run picks up exactly where it stopped."""

    def __init__(self, n: int, per_step: int, seed: int):
        self.n, self.per, self.seed = n, per_step, seed
        self._epoch, self._order = None, None

    def rows(self, step: int) -> list[int]:
        return [int(self._epoch_order(k // self.n)[k % self.n]) for k in range(step * self.per, (step + 1) * self.per)]

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        return self._order


class PendingRows:
    """``method`` (``ModelWorker.forward``: logprobs or values; ``reference_forward``: the
    policy's base under LoRA) sent to every worker of ``group`` at once, each its contiguous
    share of the rows (every rank of a sharded group takes part). ``result()`` waits and
    assembles them: Shape (B, T-1), zero off the response. Several can be in flight at once."""

    def __init__(self, group, batch: dict, what: str, timeout: float, micro_batch: int, temperature: float,
                 method: str = "forward"):
        self.shards = split_rows(batch["input_ids"].shape[0], group.world_size)
        self.refs = [getattr(a, method).remote(select_rows(batch, rows), micro_batch, temperature)
                     for a, rows in zip(group.actors, self.shards)]
        self.like, self.what, self.timeout = batch["response_mask"], what, timeout

    def result(self) -> torch.Tensor:
        outs = get(self.refs, self.timeout, f"{self.what} in phase forward")
        full = torch.zeros_like(self.like)
        for rows, out in zip(self.shards, outs):
            full[rows, : out.shape[1]] = out
        return full


def submit_reference(roles, batch: dict, timeout: float, micro_batch: int, temperature: float) -> PendingRows:
    """The reference policy's token logprobs, sent: the reference workers', or under LoRA the
    policy's with its adapters off (no reference worker is started then)."""
    if roles.reference is not None:
        return PendingRows(roles.reference, batch, "reference", timeout, micro_batch, temperature)
    return PendingRows(roles.policy, batch, "reference", timeout, micro_batch, temperature,
                       method="reference_forward")


def reference_logprobs(roles, batch: dict, timeout: float, micro_batch: int, temperature: float) -> torch.Tensor:
    """The reference policy's token logprobs (``submit_reference``), waited for. Shape: (B, T-1)."""
    return submit_reference(roles, batch, timeout, micro_batch, temperature).result()


def sync_policy(roles, version: int, prompt_ids: list[list[int]], timeout: float, *, verify: bool = True,
                mode: str = "object_store", bucket_mb: int = 256, atol: float = 1e-3, backend: str = "gloo") -> dict:
    """Send trainer rank 0's weights to every rollout worker as ``version`` and verify them: each
    worker's checksum, and (``verify``) its logprobs on a probe sequence against the trainer's."""
    fleet, policy0 = roles.fleet, roles.policy_leader
    probe = prompt_ids[0] + prompt_ids[-1][:8] if verify else None
    trainer_probe = get(policy0.probe.remote(probe), timeout, "policy/0 in phase sync") if probe else None
    if mode == "broadcast":
        if not fleet.broadcasting:
            fleet.setup_broadcast(policy0, backend)
        return fleet.sync_broadcast(version, bucket_mb << 20, probe, trainer_probe, atol)
    weights_ref, checksum_ref = policy0.named_weights_and_checksum.options(num_returns=2).remote()
    checksum = get(checksum_ref, timeout, "policy/0 in phase sync")
    return fleet.sync(weights_ref, checksum, version, probe, trainer_probe, atol)


def add_gains(summary: dict) -> dict:
    """``gain/<x> = eval/<x> - before/<x>`` for every held-out figure measured both times (not
    for their interval bounds: a gain's interval comes from the paired per-prompt differences,
    ``rayrlhf.driver.scoring.gain_intervals``)."""
    for key in [k for k in summary if k.startswith("eval/") and not is_interval_key(k)]:
        name = key.split("/", 1)[1]
        if f"before/{name}" in summary:
            summary[f"gain/{name}"] = summary[key] - summary[f"before/{name}"]
    return summary


def save_loop_checkpoint(run_dir: str, step: int, trained: list, fleet, state: dict, keep: int,
                         summary: dict, timeout: float, files: dict | None = None) -> str:
    """Checkpoint ``step`` of a PPO or rejection-sampling loop, atomically: every trained group
    saves into the new folder, ``state`` (plus the fleet's worker count) goes to state.json,
    each of ``files`` (name -> JSON value) to a file of its own, and ``summary`` (the histories
    a resumed run goes on from) to summary.json in it; then a copy of that to the run's
    summary.json. A resume reads the checkpoint's own copy (``load_loop_checkpoint``), so a
    stop between the two writes loses nothing."""
    def fill(tmp):
        refs = [ref for group in trained for ref in group.call_async("save", tmp)]
        failed = []
        for ref in refs:  # every save has ended before a failed one is raised: none still
            try:          # writes into ``tmp`` while the failed write's folder is removed
                get(ref, timeout, f"{'+'.join(g.role for g in trained)} in phase checkpoint")
            except Exception as e:
                failed.append(e)
        if failed:
            raise failed[0]
        for name, value in {**(files or {}), "summary.json": summary}.items():
            atomic_write_json(os.path.join(tmp, name), value)

    folder = ckpt.write_checkpoint(run_dir, step, fill, {**state, "rollout_workers": fleet.target}, keep=keep)
    path = os.path.join(run_dir, "summary.json")
    try:
        atomic_write_json(path, summary)
    except OSError as e:
        raise CheckpointWriteError(f"{path}: writing failed ({type(e).__name__}: {e}); the checkpoint of step "
                                   f"{step} holds this summary; {ckpt.how_to_go_on(run_dir)}") from e
    return folder


def load_loop_checkpoint(run_dir: str, trained: list, fleet, timeout: float) -> tuple[str, dict, dict] | None:
    """The latest checkpoint's (folder, state, summary) after every trained group loaded it and
    the fleet was asked for the worker count it had; None when the run has none. The summary is
    the one saved with that checkpoint (the run's summary.json for checkpoints written before
    checkpoints held one)."""
    found = ckpt.latest_checkpoint(run_dir)
    if not found:
        return None
    state = read_json(os.path.join(found, "state.json"))
    refs = [(group, group.call_async("load", found)) for group in trained]  # every group at once
    for group, group_refs in refs:
        changed = get(group_refs, timeout, f"{group.role} in phase restore")[0]
        if changed:
            print(f"[rayrlhf] {group.role}: trains at the configured learning rate {changed['lr']:g} from "
                  f"here on; the checkpoint's optimizer state had {changed['checkpoint_lr']:g}", flush=True)
    restore_fleet_size(fleet, state)
    own = os.path.join(found, "summary.json")
    summary = read_json(own if os.path.exists(own) else os.path.join(run_dir, "summary.json"))
    return found, state, summary
