"""Pieces the PPO and rejection-sampling loops share: phase timers, the prompt order, and
sending the policy's weights to the rollout fleet."""
from __future__ import annotations

import time

import numpy as np

from rayrlhf.driver.fleet import get


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


def sync_policy(roles, version: int, prompt_ids: list[list[int]], timeout: float, *, verify: bool = True,
                mode: str = "object_store", bucket_mb: int = 256, atol: float = 1e-3, backend: str = "gloo") -> dict:
    """Send trainer rank 0's weights to every rollout worker as ``version`` and verify them: each
    worker's checksum, and (``verify``) its logprobs on a probe sequence against the trainer's."""
    fleet, policy0 = roles.fleet, roles.policy.actors[0]
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
    """``gain/<x> = eval/<x> - before/<x>`` for every held-out figure measured both times."""
    for key in [k for k in summary if k.startswith("eval/")]:
        name = key.split("/", 1)[1]
        if f"before/{name}" in summary:
            summary[f"gain/{name}"] = summary[key] - summary[f"before/{name}"]
    return summary
