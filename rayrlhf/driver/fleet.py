"""The rollout fleet as the driver sees it: a bounded queue of generation jobs, verified
weight syncs, and replacement of dead workers without losing or repeating a prompt.

A job is one iteration's prompts, split into contiguous shards, one shard per worker, each
with a seed derived from (run seed, iteration, shard start). A shard whose worker died is
re-sent, with the same seed, to its replacement, so the samples are the ones the dead
worker would have produced. Ray runs an actor's calls in the order they were sent, so a
generate call sent before a weight sync samples with the weights it was sent under: that
version is recorded with the job.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from rayrlhf.actors.batch import split_rows
from rayrlhf.rollout.checksum import probe_matches
from rayrlhf.rollout.common import derive_seed


class SyncMismatchError(RuntimeError):
    """A rollout worker serves weights other than the trainer's."""


class PhaseTimeout(RuntimeError):
    """An actor call took longer than ppo.call_timeout_s."""


def get(refs, timeout: float, what: str):
    """``ray.get`` with a timeout whose error names the actor(s) and the phase."""
    try:
        return ray.get(refs, timeout=timeout)
    except GetTimeoutError:
        raise PhaseTimeout(f"{what} did not answer within {timeout:.0f} s (ppo.call_timeout_s)") from None


@dataclass
class GenJob:
    step: int
    prompt_rows: list[int]  # indices into the prompt dataset
    prompt_ids: list[list[int]]
    version: int
    shards: list[list[int]] = field(default_factory=list)  # positions within prompt_rows
    refs: list = field(default_factory=list)
    submitted: float = 0.0


class RolloutFleet:
    def __init__(self, make_worker, num_workers: int, n_samples: int, seed: int, timeout: float, max_restarts: int):
        """``make_worker(rank)`` creates (or re-creates) the actor of that rank."""
        self.make_worker = make_worker
        self.workers = [make_worker(r) for r in range(num_workers)]
        self.n, self.seed, self.timeout, self.max_restarts = n_samples, seed, timeout, max_restarts
        self.restarts = 0
        self.version = 0
        self._weights = None  # (ref, checksum, version) of the last sync, for replacements
        self._broadcast = None  # (trainer actor, backend) once a broadcast group exists

    def wait_ready(self) -> list[dict]:
        return get([w.ready.remote() for w in self.workers], self.timeout, "rollout workers starting")

    # -- generation ------------------------------------------------------------------------------
    def submit(self, step: int, prompt_rows: list[int], prompt_ids: list[list[int]]) -> GenJob:
        job = GenJob(step, prompt_rows, prompt_ids, self.version, split_rows(len(prompt_rows), len(self.workers)),
                     submitted=time.perf_counter())
        job.refs = [self._send(rank, job) for rank in range(len(self.workers))]
        return job

    def _send(self, rank: int, job: GenJob):
        shard = job.shards[rank]
        if not shard:
            return None
        ids = [job.prompt_ids[i] for i in shard]
        seed = derive_seed(self.seed, job.step, shard[0])
        return self.workers[rank].generate.remote(ids, n=self.n, seed=seed)

    def collect(self, job: GenJob) -> tuple[list, dict]:
        """Samples of every prompt in order (prompt, then sample), replacing dead workers."""
        out: list = [None] * len(job.shards)
        pending = {rank for rank, ref in enumerate(job.refs) if ref is not None}
        for rank in range(len(job.shards)):
            if job.refs[rank] is None:
                out[rank] = []
        while pending:
            rank = min(pending)
            try:
                out[rank] = get(job.refs[rank], self.timeout, f"rollout/{rank} in phase generate")
                pending.discard(rank)
            except RayActorError:
                self._replace(rank)
                job.refs[rank] = self._send(rank, job)
        samples = []
        for rank, shard in enumerate(job.shards):
            for s in out[rank]:
                s.prompt_index = shard[s.prompt_index]
                samples.append(s)
        return samples, {"async/wait_seconds": time.perf_counter() - job.submitted}

    def _replace(self, rank: int) -> None:
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise RuntimeError(f"rollout/{rank} died and {self.max_restarts} replacements are used up "
                               "(ppo.max_worker_restarts)")
        print(f"[rayrlhf] rollout/{rank} died; starting a replacement ({self.restarts}/{self.max_restarts})",
              flush=True)
        try:
            ray.kill(self.workers[rank])
        except Exception:
            pass
        self.workers[rank] = self.make_worker(rank)
        get(self.workers[rank].ready.remote(), self.timeout, f"rollout/{rank} starting")
        if self._broadcast is not None:
            # A collective group has a fixed membership: the replacement gets the current
            # weights through the object store, then everyone forms a new group.
            trainer, backend = self._broadcast
            ref, checksum_ref = trainer.named_weights_and_checksum.options(num_returns=2).remote()
            self._weights = (ref, get(checksum_ref, self.timeout, "policy/0 in phase sync"), self.version)
        if self._weights is not None:
            ref, checksum, version = self._weights
            reports = get([self.workers[rank].load_weights.remote(ref, version)], self.timeout,
                          f"rollout/{rank} in phase sync")
            check_checksums(checksum, reports, [rank])
        if self._broadcast is not None:
            self.setup_broadcast(*self._broadcast)

    # -- weights -----------------------------------------------------------------------------------
    def sync(self, weights_ref, checksum: str, version: int, probe_ids: list[int] | None = None,
             trainer_probe: list[float] | None = None, atol: float = 1e-3) -> dict:
        """Load new weights (an object-store ref) on every worker and verify what each serves."""
        t0 = time.perf_counter()
        reports = self._all("load_weights", "sync", weights_ref, version)
        self._weights = (weights_ref, checksum, version)
        return self._verify(reports, checksum, version, probe_ids, trainer_probe, atol, t0)

    @property
    def broadcasting(self) -> bool:
        return self._broadcast is not None

    def setup_broadcast(self, trainer, backend: str) -> None:
        """A collective group: trainer rank 0 plus every worker (NCCL on GPUs, gloo on CPU)."""
        addr = get(trainer.node_address.remote(), self.timeout, "policy/0 in phase broadcast setup")
        port = get(trainer.free_port.remote(), self.timeout, "policy/0 in phase broadcast setup")
        world = len(self.workers) + 1
        refs = [trainer.join_broadcast.remote(addr, port, world, backend)]
        refs += [w.join_broadcast.remote(addr, port, rank + 1, world, backend) for rank, w in enumerate(self.workers)]
        get(refs, self.timeout, "policy/0 and rollout workers in phase broadcast setup")
        self._broadcast = (trainer, backend)

    def sync_broadcast(self, version: int, bucket_bytes: int, probe_ids: list[int] | None = None,
                       trainer_probe: list[float] | None = None, atol: float = 1e-3) -> dict:
        """Broadcast the trainer's weights to every worker in buckets and verify them."""
        trainer, _ = self._broadcast
        t0 = time.perf_counter()
        meta, checksum = get(trainer.weights_meta_and_checksum.remote(), self.timeout, "policy/0 in phase sync")
        sent = trainer.broadcast_weights.remote(bucket_bytes)
        recv = [w.receive_weights.remote(meta, version, bucket_bytes) for w in self.workers]
        reports = get(recv, self.timeout, "rollout workers in phase sync (broadcast)")
        get(sent, self.timeout, "policy/0 in phase sync (broadcast)")
        self._weights = None
        return self._verify(reports, checksum, version, probe_ids, trainer_probe, atol, t0)

    def _verify(self, reports, checksum, version, probe_ids, trainer_probe, atol, t0) -> dict:
        check_checksums(checksum, reports, list(range(len(self.workers))))
        metrics = {"sync/seconds": time.perf_counter() - t0, "sync/bytes": float(reports[0].get("bytes", 0)),
                   "sync/worker_load_seconds": max(r.get("seconds", 0.0) for r in reports)}
        if probe_ids is not None and trainer_probe is not None:
            probes = self._all("probe_logprobs", "sync verification", probe_ids)
            worst = 0.0
            for rank, p in enumerate(probes):
                ok, diff = probe_matches(trainer_probe, p, atol)
                worst = max(worst, diff)
                if not ok:
                    raise SyncMismatchError(
                        f"rollout/{rank} serves other weights than the trainer after sync to version {version}: "
                        f"probe logprobs differ by {diff:.3g} (> {atol}); tied embeddings or a dtype mismatch "
                        "are the usual causes")
            metrics["sync/probe_max_diff"] = worst
        self.version = version
        metrics["sync/total_seconds"] = time.perf_counter() - t0
        return metrics

    def _all(self, method: str, phase: str, *args):
        """Call ``method`` on every worker; a dead worker is replaced and asked again."""
        results = [None] * len(self.workers)
        todo = set(range(len(self.workers)))
        while todo:
            refs = {r: getattr(self.workers[r], method).remote(*args) for r in sorted(todo)}
            for rank, ref in refs.items():
                try:
                    results[rank] = get(ref, self.timeout, f"rollout/{rank} in phase {phase}")
                    todo.discard(rank)
                except RayActorError:
                    self._replace(rank)
        return results

    def shutdown(self) -> None:
        for w in self.workers:
            try:
                ray.kill(w)
            except Exception:
                pass


def check_checksums(expected: str, reports: list[dict], ranks: list[int]) -> None:
    for rank, rep in zip(ranks, reports):
        if rep.get("checksum") != expected:
            raise SyncMismatchError(
                f"rollout/{rank} loaded weights with checksum {rep.get('checksum')!r}, the trainer sent "
                f"{expected!r} (version {rep.get('version')}): the weights were changed in transit")
