"""The rollout fleet as the driver sees it: a bounded queue of generation jobs, verified
weight syncs, replacement of dead workers without losing or repeating a prompt, and workers
added or removed while a run goes.

A job is one iteration's prompts, split into contiguous shards, one shard per serving worker,
each with a seed derived from (run seed, iteration, shard start). A job remembers the worker
of each shard. A shard whose worker died is re-sent, with the same seed, to its replacement, so
the samples are the ones the dead worker would have produced, except for their version: a
replacement serves the newest weights, and its samples say so (``Sample.policy_version``).

A weight sync does not wait for the generation in flight. Workers receive the new version into
a staging area while they generate, and swap it in at its place in their call order: every
generate call sent before the sync samples from the weights it was sent under, every one sent
after from the new version (``RolloutWorker.activate``). Which version produced which sample is
thus fixed by the order of the driver's calls, not by timing, and each sample records it.

Scaling (``resize``, then ``poll_scaling`` once per iteration) never waits for capacity. A
worker joins in steps: room (its placement group, which an autoscaler may take minutes to
provide) -> actor starting -> the current weights loaded and verified (checksum and probe) ->
serving. A worker that leaves gets no new shard from then on, is killed only once every job
already sent to it has been collected, and is never replaced.
"""
from __future__ import annotations

import time

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from rayrlhf.actors.batch import split_rows
from rayrlhf.driver.fleet_records import DRAINING, PLACING, SERVING, STARTING, Activation, GenJob, Worker
from rayrlhf.rollout.checksum import probe_matches
from rayrlhf.rollout.common import derive_seed


class SyncMismatchError(RuntimeError):
    """A rollout worker serves weights other than the trainer's."""


class PhaseTimeout(RuntimeError):
    """An actor call took longer than ppo.call_timeout_s."""


def get(refs, timeout: float, what: str):
    """``ray.get`` with a timeout whose error names the actor(s) and the phase. A dead actor's
    RayActorError goes on up, marked with the phase (``rayrlhf_phase``): the fleet replaces
    rollout workers; for any other actor the stage stops with ``ActorLostError``."""
    try:
        return ray.get(refs, timeout=timeout)
    except GetTimeoutError:
        raise PhaseTimeout(f"{what} did not answer within {timeout:.0f} s (ppo.call_timeout_s)") from None
    except RayActorError as e:
        if getattr(e, "rayrlhf_phase", None) is None:
            e.rayrlhf_phase = what
        raise


class RolloutFleet:
    def __init__(self, make_worker, num_workers: int, n_samples: int, seed: int, timeout: float, max_restarts: int,
                 placement=None):
        """``make_worker(rank)`` creates (or re-creates) the actor of that rank. ``placement``
        (an ``ActorFactory``) makes room for ranks beyond the first ``num_workers`` when the fleet
        grows; without it ``make_worker`` places every rank itself."""
        self.make_worker, self.placement = make_worker, placement
        self.members = [Worker(r, make_worker(r)) for r in range(num_workers)]
        self.target = num_workers
        self.n, self.seed, self.timeout, self.max_restarts = n_samples, seed, timeout, max_restarts
        self.restarts = 0
        self.version = 0
        self._weights = None  # (ref, checksum, version) of the last sync, for replacements
        self._probe = None  # (probe ids, trainer logprobs, atol) of the last verified sync
        self._broadcast = None  # (trainer actor, backend) once a broadcast group exists
        self._open: list[GenJob] = []  # submitted, not collected yet
        self._activations: list[Activation] = []  # sent, not checked yet

    @property
    def workers(self) -> list:
        """The actors that get shards, by rank."""
        return [m.actor for m in self._serving()]

    def _serving(self) -> list[Worker]:
        return [m for m in self.members if m.state == SERVING]

    def _live(self) -> list[Worker]:
        """Workers that take weight syncs: serving ones, and leaving ones until they are gone
        (their queued calls run first, and a broadcast group needs every member)."""
        return [m for m in self.members if m.state in (SERVING, DRAINING)]

    def wait_ready(self) -> list[dict]:
        return get([m.actor.ready.remote() for m in self.members], self.timeout, "rollout workers starting")

    # -- generation ------------------------------------------------------------------------------
    def submit(self, step: int, prompt_rows: list[int], prompt_ids: list[list[int]], n: int | None = None) -> GenJob:
        """Send one job's prompts to the serving workers; ``n`` samples each (default: the fleet's)."""
        serving = self._serving()
        job = GenJob(step, prompt_rows, prompt_ids, self.version, n or self.n,
                     split_rows(len(prompt_rows), len(serving)), serving, submitted=time.perf_counter(),
                     swaps_before=[a for a in self._activations if a.worker in serving])
        job.refs = [self._send(job, i) for i in range(len(serving))]
        self._open.append(job)
        return job

    def _send(self, job: GenJob, i: int):
        shard = job.shards[i]
        if not shard:
            return None
        ids = [job.prompt_ids[p] for p in shard]
        seed = derive_seed(self.seed, job.step, shard[0])
        return job.workers[i].actor.generate.remote(ids, n=job.n, seed=seed)

    def _gather(self, shards: list[list[int]], workers: list[Worker], refs: list, send, phase: str) -> list[list]:
        """Each shard's samples, in shard order; a worker that died is replaced (``_takeover``)
        and ``send(i)`` sends shard i again, with its own seed, to the worker now in
        ``workers[i]``."""
        parts = []
        for i in range(len(shards)):
            part = [] if refs[i] is None else None
            while part is None:
                try:
                    part = get(refs[i], self.timeout, f"{workers[i].name} in phase {phase}")
                except RayActorError:
                    workers[i] = self._takeover(workers[i])
                    refs[i] = send(i)
            parts.append(part)
        return parts

    def _sharded(self, method: str, phase: str, columns: tuple, seed_of=None, **kwargs) -> list[list]:
        """``method`` of the serving workers on rows split into contiguous shards, one per worker:
        shard i gets its rows of each list in ``columns``, ``kwargs`` and (with ``seed_of``)
        ``seed=seed_of(its first row)``. A worker that dies is replaced, as in training, and its
        shard redone with the same seed. Returns each shard's results, in row order."""
        workers = list(self._serving())
        shards = split_rows(len(columns[0]), len(workers))

        def send(i):
            if not shards[i]:
                return None
            seed = {} if seed_of is None else {"seed": seed_of(shards[i][0])}
            return getattr(workers[i].actor, method).remote(*([c[p] for p in shards[i]] for c in columns),
                                                            **kwargs, **seed)

        return self._gather(shards, workers, [send(i) for i in range(len(shards))], send, phase)

    def generate(self, prompt_ids: list[list[int]], n: int, seed_of) -> list[list]:
        """Samples outside the training loop (held-out evaluation, the best-of-K curve), shard i
        seeded by ``seed_of(first row of shard i)``, so the same prompts and weights give the same
        samples on any fleet size. Returns each shard's samples (prompt, then sample), in order."""
        return self._sharded("generate", "evaluate", (prompt_ids,), seed_of, n=n)

    def choice_logprobs(self, prompt_ids: list[list[int]], choices: list[list[int]]) -> list[list[float]]:
        """Next-token logprobs of each prompt's candidate tokens (an AI judge's labels), the
        prompts split over the serving workers (``_sharded``)."""
        return [row for part in self._sharded("choice_logprobs", "judge", (prompt_ids, choices)) for row in part]

    def collect(self, job: GenJob) -> tuple[list, dict]:
        """Samples of every prompt in order (prompt, then sample), replacing dead workers."""
        out: list = []
        parts = self._gather(job.shards, job.workers, job.refs, lambda i: self._send(job, i), "generate")
        for shard, part in zip(job.shards, parts):
            for s in part:
                s.prompt_index = shard[s.prompt_index]
                out.append(s)
        if job in self._open:
            self._open.remove(job)
        # Swaps sent before this job's shards have run by now (each worker runs calls in order).
        # Only those are checked here, so which step reports a probe does not depend on timing.
        checked = self.check_activations([a for a in job.swaps_before if a in self._activations])
        return out, {"async/wait_seconds": time.perf_counter() - job.submitted, **checked}

    def _takeover(self, dead: Worker) -> Worker:
        """The serving worker that redoes the shards of ``dead``: its replacement, unless it was
        leaving anyway (then the first serving worker, with the same seeds)."""
        if dead in self.members and dead.state == SERVING:
            return self._replace(dead)
        if dead in self.members:
            self._remove(dead)
        same = [m for m in self._serving() if m.rank == dead.rank]
        return same[0] if same else self._serving()[0]

    def _replace(self, dead: Worker) -> Worker:
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise RuntimeError(f"{dead.name} died and {self.max_restarts} replacements are used up "
                               "(ppo.max_worker_restarts)")
        print(f"[rayrlhf] {dead.name} died; starting a replacement ({self.restarts}/{self.max_restarts})",
              flush=True)
        _kill(dead.actor)
        new = Worker(dead.rank, self.make_worker(dead.rank), STARTING)
        self.members[self.members.index(dead)] = new
        get(new.actor.ready.remote(), self.timeout, f"{new.name} starting")
        self._admit(new)
        return new

    def _admit(self, w: Worker) -> None:
        """Give a started worker the weights the others serve, verify them (checksum, probe),
        and only then let it take shards; a broadcast group is rebuilt to include it."""
        weights = self._current_weights()
        if weights is not None:
            ref, checksum, version = weights
            reports = get([w.actor.load_weights.remote(ref, version)], self.timeout, f"{w.name} in phase sync")
            check_checksums(checksum, reports, [w.rank])
            if self._probe is not None:
                ids, trainer_probe, atol = self._probe
                if self._broadcast is not None:  # the trainer's weights of right now, as loaded
                    trainer_probe = get(self._broadcast[0].probe.remote(ids), self.timeout, "policy/0 in phase sync")
                got = get(w.actor.probe_logprobs.remote(ids), self.timeout, f"{w.name} in phase sync verification")
                check_probe(w.rank, trainer_probe, got, atol, version)
        w.state = SERVING
        if self._broadcast is not None:
            self.setup_broadcast(*self._broadcast)

    def _current_weights(self):
        """(ref, checksum, version) of what the serving workers hold; None before any sync."""
        if self._broadcast is None:
            return self._weights
        # A broadcast reaches a fixed group: a newcomer gets the trainer's weights through the
        # object store, then everyone forms a new group.
        trainer, _ = self._broadcast
        ref, checksum_ref = trainer.named_weights_and_checksum.options(num_returns=2).remote()
        return ref, get(checksum_ref, self.timeout, "policy/0 in phase sync"), self.version

    # -- scaling -------------------------------------------------------------------------------------
    def resize(self, n: int) -> None:
        """Ask for ``n`` serving workers; ``poll_scaling`` gets there without blocking the run."""
        if n < 1:
            raise ValueError(f"a rollout fleet needs at least 1 worker, got {n}")
        self.target = n

    def poll_scaling(self) -> dict:
        """One step toward ``target``, at an iteration boundary: mark workers to leave (or take
        them back), kill those whose jobs are all collected, ask for room for new ones, start
        those whose room is ready, admit those that started. Waits for nothing but the weight
        load and check of a worker that is ready to join."""
        self._shrink()
        self._retire_drained()
        self._grow()
        for w in [m for m in self.members if m.state in (PLACING, STARTING)]:
            self._advance(w)
        return self.scaling_metrics()

    def scaling_metrics(self) -> dict:
        count = {s: sum(m.state == s for m in self.members) for s in (PLACING, STARTING, SERVING, DRAINING)}
        return {"rollout/workers": float(count[SERVING]),
                "rollout/workers_pending": float(count[PLACING] + count[STARTING]),
                "rollout/workers_draining": float(count[DRAINING]), "rollout/workers_target": float(self.target)}

    def _shrink(self) -> None:
        """Cancel joining workers (newest first), then stop giving shards to the highest ranks."""
        joining = [m for m in self.members if m.state in (PLACING, STARTING)]
        while joining and len(self._serving()) + len(joining) > self.target:
            self._remove(joining.pop())
        for w in self._serving()[self.target:][::-1]:
            w.state = DRAINING
            print(f"[rayrlhf] {w.name} leaves: no new shards; killed once its jobs are collected", flush=True)

    def _grow(self) -> None:
        """Take back leaving workers first (they hold the current weights), then ask for room."""
        missing = self.target - len(self._serving()) - sum(m.state in (PLACING, STARTING) for m in self.members)
        for w in [m for m in self.members if m.state == DRAINING][:max(missing, 0)]:
            w.state = SERVING
            missing -= 1
        used = {m.rank for m in self.members}
        rank = 0
        while missing > 0:
            while rank in used:
                rank += 1
            if self.placement is not None:
                self.placement.request(rank)
            self.members.append(Worker(rank, state=PLACING))
            self.members.sort(key=lambda m: m.rank)
            used.add(rank)
            missing -= 1

    def _advance(self, w: Worker) -> None:
        if w.state == PLACING and (self.placement is None or self.placement.has_room(w.rank)):
            w.actor, w.state = self.make_worker(w.rank), STARTING
            w.started = w.actor.ready.remote()
        if w.state == STARTING and ray.wait([w.started], timeout=0)[0]:
            try:
                ray.get(w.started)
            except RayActorError as e:
                self._failed_start(w, e)
                return
            self._admit(w)
            print(f"[rayrlhf] {w.name} joined, serving version {self.version} (verified)", flush=True)

    def _failed_start(self, w: Worker, error: Exception) -> None:
        """A worker that died while starting is started again (counted as a restart)."""
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise RuntimeError(f"{w.name} died while starting and {self.max_restarts} restarts are used up "
                               f"(ppo.max_worker_restarts): {error}")
        _kill(w.actor)
        w.actor, w.started, w.state = None, None, PLACING

    def _retire_drained(self) -> None:
        """Kill leaving workers that no uncollected job still needs, and give back their room."""
        busy = {id(w) for job in self._open for w in job.workers}
        for w in [m for m in self.members if m.state == DRAINING and id(m) not in busy]:
            self._remove(w)
            print(f"[rayrlhf] {w.name} left after its last job was collected", flush=True)
            if self._broadcast is not None:
                self.setup_broadcast(*self._broadcast)

    def _remove(self, w: Worker) -> None:
        self.members.remove(w)
        _kill(w.actor)
        if self.placement is not None and not any(m.rank == w.rank for m in self.members):
            self.placement.release(w.rank)

    # -- weights -----------------------------------------------------------------------------------
    def sync(self, weights_ref, checksum: str, version: int, probe_ids: list[int] | None = None,
             trainer_probe: list[float] | None = None, atol: float = 1e-3) -> dict:
        """Send new weights (an object-store ref) to every worker and verify what each serves.

        Each worker stages them beside the generation it is running and swaps them in after the
        jobs already sent to it (``RolloutWorker.activate``): jobs submitted from now on sample
        from ``version``, jobs in flight finish with the weights they started under. With no job
        in flight the swap and its probe check happen before this returns; otherwise each worker's
        probe is checked when the first job sent to it after this is collected (by then the swap
        has run), or by ``check_activations`` at a checkpoint or the end."""
        t0 = time.perf_counter()
        reports = self._all("stage_weights", "sync", weights_ref, version, group="staging")
        self._weights = (weights_ref, checksum, version)
        return self._verify(reports, checksum, version, probe_ids, trainer_probe, atol, t0)

    @property
    def broadcasting(self) -> bool:
        return self._broadcast is not None

    def setup_broadcast(self, trainer, backend: str) -> None:
        """A collective group: trainer rank 0 plus every live worker (NCCL on GPUs, gloo on CPU)."""
        from rayrlhf.placement.actors import node_id

        live = self._live()
        nodes = get([m.actor.__ray_call__.remote(node_id) for m in live], self.timeout,
                    "rollout workers in phase broadcast setup")
        # The trainer starts the group's store first and keeps it: on one node it listens on 127.0.0.1.
        addr, port = get(trainer.host_group.remote("broadcast", nodes), self.timeout,
                         "policy/0 in phase broadcast setup")
        world = len(live) + 1
        refs = [trainer.join_broadcast.remote(addr, port, world, backend)]
        refs += [m.actor.join_broadcast.remote(addr, port, rank + 1, world, backend) for rank, m in enumerate(live)]
        get(refs, self.timeout, "policy/0 and rollout workers in phase broadcast setup")
        self._broadcast = (trainer, backend)

    def sync_broadcast(self, version: int, bucket_bytes: int, probe_ids: list[int] | None = None,
                       trainer_probe: list[float] | None = None, atol: float = 1e-3) -> dict:
        """Broadcast the trainer's weights to every worker in buckets and verify them."""
        trainer, _ = self._broadcast
        t0 = time.perf_counter()
        meta = get(trainer.weights_meta.remote(), self.timeout, "policy/0 in phase sync")
        # The trainer streams bucket by bucket (gathering each from its shards under FSDP) and
        # hashes what it sent; the checksum is known once the last bucket is out.
        sent = trainer.broadcast_weights.remote(bucket_bytes)
        live = self._live()
        recv = [m.actor.receive_weights.options(concurrency_group="staging").remote(meta, version, bucket_bytes)
                for m in live]
        reports = dict(zip(live, get(recv, self.timeout, "rollout workers in phase sync (broadcast)")))
        checksum = get(sent, self.timeout, "policy/0 in phase sync (broadcast)")["checksum"]
        self._weights = None
        return self._verify(reports, checksum, version, probe_ids, trainer_probe, atol, t0)

    def _verify(self, reports: dict, checksum, version, probe_ids, trainer_probe, atol, t0) -> dict:
        """Check what every worker staged, then queue the swap on each; wait for the swaps (and
        check their probes) only when no job is in flight."""
        check_checksums(checksum, list(reports.values()), [m.rank for m in reports])
        first = next(iter(reports.values()))
        metrics = {"sync/seconds": time.perf_counter() - t0, "sync/bytes": float(first.get("bytes", 0)),
                   "sync/worker_load_seconds": max(r.get("seconds", 0.0) for r in reports.values())}
        probe = None
        if probe_ids is not None and trainer_probe is not None:
            probe = self._probe = (probe_ids, trainer_probe, atol)  # a replacement is checked against it
        self.version = version
        for m in self._live():
            self._activations.append(Activation(m, m.actor.activate.remote(version, probe and probe_ids), version,
                                                probe))
        if not self._open:
            metrics.update(self.check_activations())
        metrics["sync/total_seconds"] = time.perf_counter() - t0
        return metrics

    def check_activations(self, which: list[Activation] | None = None) -> dict:
        """Wait for swaps (``which``, default all that are pending) and check their probes: each
        worker's logprobs under its new weights against the trainer's. Returns
        ``sync/probe_max_diff`` and ``sync/activate_seconds`` over those checked (nothing when
        none were)."""
        done = list(self._activations) if which is None else which
        worst, seconds = None, 0.0
        for a in done:
            self._activations.remove(a)
            try:
                report = get(a.ref, self.timeout, f"{a.worker.name} in phase sync (activate)")
            except RayActorError:
                continue  # its jobs go to a replacement, which is given the newest weights and checked
            seconds = max(seconds, report.get("seconds", 0.0))
            if a.probe is not None:
                ids, trainer_probe, atol = a.probe
                diff = check_probe(a.worker.rank, trainer_probe, report["probe"], atol, a.version)
                worst = diff if worst is None else max(worst, diff)
        out = {"sync/activate_seconds": seconds} if done else {}
        if worst is not None:
            out["sync/probe_max_diff"] = worst
        return out

    def _all(self, method: str, phase: str, *args, group: str | None = None) -> dict:
        """Call ``method`` on every live worker (in concurrency ``group``), results by Worker; a
        dead worker is replaced (or, if it was leaving, dropped) and the replacement asked again."""
        results: dict = {}
        todo = self._live()
        while todo:
            refs = [(m, _method(m.actor, method, group).remote(*args)) for m in todo]
            todo = []
            for m, ref in refs:
                try:
                    results[m] = get(ref, self.timeout, f"{m.name} in phase {phase}")
                except RayActorError:
                    if m.state == DRAINING:
                        self._remove(m)
                    else:
                        todo.append(self._replace(m))
        return {m: results[m] for m in self._live()}

    def shutdown(self) -> None:
        for m in self.members:
            _kill(m.actor)
        if self.placement is not None:
            self.placement.release_all()


def _method(actor, name: str, group: str | None):
    method = getattr(actor, name)
    return method.options(concurrency_group=group) if group else method


def _kill(actor) -> None:
    if actor is None:
        return
    try:
        ray.kill(actor)
    except Exception:  # already dead, or the cluster is gone
        pass


def check_checksums(expected: str, reports: list[dict], ranks: list[int]) -> None:
    for rank, rep in zip(ranks, reports):
        if rep.get("checksum") != expected:
            raise SyncMismatchError(
                f"rollout/{rank} loaded weights with checksum {rep.get('checksum')!r}, the trainer sent "
                f"{expected!r} (version {rep.get('version')}): the weights were changed in transit")


def check_probe(rank: int, trainer_probe: list[float], probe: list[float], atol: float, version: int) -> float:
    """The largest logprob difference on the probe; SyncMismatchError when above ``atol``."""
    ok, diff = probe_matches(trainer_probe, probe, atol)
    if not ok:
        raise SyncMismatchError(
            f"rollout/{rank} serves other weights than the trainer after sync to version {version}: "
            f"probe logprobs differ by {diff:.3g} (> {atol}); tied embeddings or a dtype mismatch "
            "are the usual causes")
    return diff
