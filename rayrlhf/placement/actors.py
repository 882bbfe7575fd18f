"""One actor per worker of a role, pinned to its planned bundle, called as a group.

    group = RayActorGroup(PolicyTrainer, "trainer", plan.roles["trainer"], groups.for_role("trainer"),
                          run_name="run42", actor_kwargs={"cfg": cfg})
    addr, port = group.master_addr_port()               # torch.distributed rendezvous
    group.call("init_distributed", addr, port)          # every rank; waits; errors name the rank
    losses = group.call("train_step", batch_ref)        # list, by rank
    group.where()                                       # where each actor landed, from inside it

Each actor is constructed as ``cls(*args, rank=r, world_size=n, **actor_kwargs)`` and named
``{run_name}/{role}/{rank}``.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
import socket
import time
from typing import Any, Callable

import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rayrlhf.placement.plan import RolePlan


class ActorCallTimeout(TimeoutError):
    """A group call did not return in time; the message names the role, rank and method."""


class ActorCallError(RuntimeError):
    """A group call raised (or its actor died); the message names the role, rank and method."""


def describe_worker() -> dict:
    """Where the calling Ray worker runs, as Ray itself reports it (call inside an actor)."""
    ctx = ray.get_runtime_context()
    pg_id = ctx.get_placement_group_id()
    return {
        "node_id": ctx.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "actor_name": ctx.get_actor_name(),
        "placement_group_id": pg_id,
        "bundle_index": _bundle_index(pg_id),
        "resources": dict(ctx.get_assigned_resources()),
        "gpu_ids": [str(i) for i in ctx.get_accelerator_ids().get("GPU", [])],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
    }


def _bundle_index(pg_id: str | None) -> int | None:
    # Ray reserves a placement group's bundle i under resource names like
    # "CPU_group_<i>_<pg id>"; the public runtime context strips these names, so the bundle
    # an actor really holds is only visible in the core worker's raw resource ids.
    if not pg_id:
        return None
    try:
        raw = ray._private.worker.global_worker.core_worker.resource_ids()
    except Exception:
        return None
    found = {int(m.group(1)) for k in raw if (m := re.match(rf".+_group_(\d+)_{pg_id}$", k))}
    return found.pop() if len(found) == 1 else None


def group_address(member_nodes: list[str] | None = None) -> str:
    """The address rank 0 of a collective group hosts its store on (call inside rank 0's actor):
    127.0.0.1 when every member runs on this node, so nothing listens beyond loopback, else
    this node's IP. ``member_nodes``: the Ray node ids of the members; None: judged by the
    cluster (a cluster of one node is local)."""
    if member_nodes is None:
        local = sum(1 for n in ray.nodes() if n.get("Alive")) <= 1
    else:
        here = ray.get_runtime_context().get_node_id()
        local = all(n == here for n in member_nodes)
    return "127.0.0.1" if local else ray.util.get_node_ip_address()


def node_id(_actor=None) -> str:
    """The Ray node id of the calling worker; of any actor with ``actor.__ray_call__.remote(node_id)``."""
    return ray.get_runtime_context().get_node_id()


def free_addr_port(loopback: bool = False) -> tuple[str, int]:
    """An address of this node and a port free on it right now (call inside the rank-0 actor).
    Another process may take the port before rank 0 listens on it; ``ModelWorker.host_group``
    avoids that by starting the store first."""
    addr = "127.0.0.1" if loopback else ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((addr, 0))
        return addr, s.getsockname()[1]


def _where(actor) -> dict:
    return describe_worker()


def _addr_port(actor, loopback: bool) -> tuple[str, int]:
    return free_addr_port(loopback)


class Probe:
    """A tiny actor that reports where it landed; used by tests and by ``rayrlhf plan --probe``."""

    def __init__(self, rank: int = 0, world_size: int = 1, **kwargs: Any):
        self.rank = rank
        self.world_size = world_size
        self.kwargs = kwargs

    def where(self) -> dict:
        return {"rank": self.rank, "world_size": self.world_size, **describe_worker()}

    def echo(self, value: Any = None) -> Any:
        return value

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def fail(self, message: str = "probe failure") -> None:
        raise RuntimeError(message)

    def all_reduce_rank(self, addr: str, port: int, backend: str = "gloo") -> int:
        """Join a torch.distributed group at addr:port and return the sum of all ranks."""
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        from rayrlhf.weight_sync import make_store

        # Rank 0's store listens on addr only (init_method="tcp://" would listen on every interface).
        store = make_store(addr, port, self.world_size, self.rank == 0, timedelta(seconds=60))
        dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world_size)
        try:
            t = torch.tensor([float(self.rank)])
            dist.all_reduce(t)
            return int(t.item())
        finally:
            dist.destroy_process_group()


class ActorFactory:
    """Creates the actor of one rank of a role in its planned bundle, with the planned resources.

    The first actor of a rank is named ``{run_name}/{role}/{rank}``; later ones (replacements
    of a dead worker) ``{run_name}/{role}/{rank}#k`` with the first k whose name is free, since
    a killed actor's name is released asynchronously. ``names[rank]`` is the latest name.

    A rank beyond the plan (a worker added while a run goes) runs in a single-bundle placement
    group of its own, shaped like the plan's workers: ``request(rank)`` asks for it without
    waiting, ``has_room(rank)`` says when it is there, ``release(rank)`` gives it back.
    """

    def __init__(self, cls: type, role: str, plan_role: RolePlan, placement_group, run_name: str,
                 namespace: str | None = None, runtime_env: dict | None = None, args: tuple = (),
                 restarts: int = 0):
        # A class that runs some methods beside others names its groups (RolloutWorker).
        groups = getattr(cls, "CONCURRENCY_GROUPS", None)
        self.remote_cls = (cls if isinstance(cls, ray.actor.ActorClass) else
                           ray.remote(concurrency_groups=dict(groups))(cls) if groups else ray.remote(cls))
        self.accepts = _accepted_kwargs(cls)
        self.role, self.plan_role, self.placement_group, self.run_name = role, plan_role, placement_group, run_name
        self.namespace, self.runtime_env, self.args = namespace, runtime_env, args
        self.restarts = restarts
        """Times Ray restarts a dead actor in its bundle and retries its calls (frozen roles
        only: a restarted actor is built again from its arguments, so its answers are the same)."""
        self.names: dict[int, str] = {}
        self._made: dict[int, int] = {}
        self._extra = None  # WorkerGroups for ranks beyond the plan, made on first request

    def __call__(self, rank: int, kwargs: dict | None = None):
        w, pg = self._slot(rank)
        kwargs = dict(kwargs or {})
        if "rank" not in kwargs and "world_size" not in kwargs:
            given = {"rank": rank, "world_size": self.plan_role.world_size}
            kwargs.update({k: v for k, v in given.items() if k in self.accepts})
        options = dict(
            num_cpus=w.num_cpus, num_gpus=w.num_gpus, resources=dict(w.resources),
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=w.bundle_index),
        )
        if self.namespace is not None:
            options["namespace"] = self.namespace
        if self.runtime_env is not None:
            options["runtime_env"] = self.runtime_env
        if self.restarts:
            options.update(max_restarts=self.restarts, max_task_retries=self.restarts)
        while True:
            n = self._made.get(rank, 0)
            self._made[rank] = n + 1
            name = f"{self.run_name}/{self.role}/{rank}" + (f"#{n}" if n else "")
            try:
                actor = self.remote_cls.options(name=name, **options).remote(*self.args, **kwargs)
            except ray.exceptions.ActorAlreadyExistsError:
                if n >= 100:
                    raise
                continue
            self.names[rank] = name
            return actor

    def _slot(self, rank: int):
        """The planned worker slot of ``rank`` and its placement group; past the plan, a slot
        like rank 0's in bundle 0 of the rank's own group."""
        if rank < self.plan_role.world_size:
            return self.plan_role.workers[rank], self.placement_group
        if self._extra is None or rank not in self._extra.groups:
            raise ValueError(f"{self.role}/{rank} is beyond the plan's {self.plan_role.world_size} workers: "
                             "request(rank) its placement group first")
        w = dataclasses.replace(self.plan_role.workers[0], rank=rank, bundle_index=0)
        return w, self._extra.groups[rank]

    def request(self, rank: int) -> None:
        """Make room for ``rank`` without waiting: a planned rank has its bundle already."""
        if rank >= self.plan_role.world_size:
            if self._extra is None:
                from rayrlhf.placement.groups import WorkerGroups

                self._extra = WorkerGroups(self.plan_role.workers[0].demand(), f"{self.run_name}/{self.role}")
            self._extra.request(rank)

    def has_room(self, rank: int) -> bool:
        """Whether the actor of ``rank`` can be placed now (non-blocking)."""
        return rank < self.plan_role.world_size or self._extra.is_ready(rank)

    def release(self, rank: int) -> None:
        """Give back the placement group of a rank beyond the plan (a planned bundle stays
        with the role's group until the run ends)."""
        if self._extra is not None:
            self._extra.release(rank)

    def release_all(self) -> None:
        if self._extra is not None:
            self._extra.remove()


class RayActorGroup:
    """The actors of one role: one per planned worker, pinned to its bundle, named by rank.

    Rank r's actor is built as ``cls(*args, **actor_kwargs, **kwargs_of_rank(r))``; ``rank``
    and ``world_size`` are added when the constructor takes them and the caller gave neither.
    """

    def __init__(self, cls: type, role: str, plan_role: RolePlan, placement_group,
                 run_name: str, actor_kwargs: dict | None = None, args: tuple = (),
                 namespace: str | None = None, kwargs_of_rank: Callable[[int], dict] | None = None,
                 timeout_s: float = 600.0, runtime_env: dict | None = None, restarts: int = 0):
        self.role = role
        self.plan_role = plan_role
        self.run_name = run_name
        self.timeout_s = timeout_s
        """Seconds ``call`` and ``get`` wait before raising ActorCallTimeout."""
        make = ActorFactory(cls, role, plan_role, placement_group, run_name, namespace=namespace,
                            runtime_env=runtime_env, args=args, restarts=restarts)
        self._actors = []
        for w in plan_role.workers:
            per_rank = kwargs_of_rank(w.rank) if kwargs_of_rank else {}
            self._actors.append(make(w.rank, {**(actor_kwargs or {}), **per_rank}))
        self.names = [make.names[w.rank] for w in plan_role.workers]
        """Actor names, by rank: ``{run_name}/{role}/{rank}``."""

    @staticmethod
    def factory(cls: type, role: str, plan_role: RolePlan, placement_group, run_name: str,
                namespace: str | None = None, runtime_env: dict | None = None,
                args: tuple = ()) -> "ActorFactory":
        """``make(rank, kwargs)`` -> a new actor for that rank in its planned bundle (to
        replace a dead worker); see ActorFactory."""
        return ActorFactory(cls, role, plan_role, placement_group, run_name, namespace=namespace,
                            runtime_env=runtime_env, args=args)

    def __repr__(self) -> str:
        return f"RayActorGroup({self.role}, {len(self._actors)} actors, run {self.run_name})"

    @property
    def actors(self) -> list:
        """Actor handles, by rank."""
        return list(self._actors)

    @property
    def world_size(self) -> int:
        return len(self._actors)

    def call_async(self, method: str, *args: Any, **kwargs: Any) -> list:
        """Start ``method`` on every rank; returns the ObjectRefs, by rank."""
        return [getattr(a, method).remote(*args, **kwargs) for a in self._actors]

    def call(self, method: str, *args: Any, **kwargs: Any) -> list:
        """Run ``method`` on every rank and wait (at most ``timeout_s``); results by rank."""
        return self.get(self.call_async(method, *args, **kwargs), method)

    def get(self, refs: list, method: str = "call") -> list:
        """Wait for one ref per rank; errors and timeouts name the role, rank and method."""
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self.timeout_s)
        late = [rank for rank, ref in enumerate(refs) if ref not in ready]
        if late:
            raise ActorCallTimeout(
                f"{self.role}: {method} did not return within {self.timeout_s:g} s on rank"
                f"{'s' if len(late) > 1 else ''} {', '.join(map(str, late))} "
                f"(actor {self.names[late[0]]}); raise timeout_s if the work is just slow")
        out = []
        for rank, ref in enumerate(refs):
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayError as e:
                raise ActorCallError(f"{self.role} rank {rank} ({self.names[rank]}): {method} failed: "
                                     f"{_first_line(e)}") from e
        return out

    def where(self) -> list[dict]:
        """For each rank, where its actor runs as reported from inside it: node id and IP,
        placement group id, bundle index, assigned resources and GPU ids."""
        refs = [a.__ray_call__.remote(_where) for a in self._actors]
        return [{"rank": rank, "role": self.role, **info}
                for rank, info in enumerate(self.get(refs, "where"))]

    def master_addr_port(self) -> tuple[str, int]:
        """Address and free port on rank 0's node for torch.distributed's rendezvous:
        127.0.0.1 when every rank is on that node, else the node's IP."""
        loopback = len({w["node_id"] for w in self.where()}) == 1
        return tuple(self.get([self._actors[0].__ray_call__.remote(_addr_port, loopback)],
                              "master_addr_port")[0])

    def kill(self) -> None:
        for a in self._actors:
            ray.kill(a)
        self._actors = []


class Leader:
    """Rank 0 of a group as one actor handle. A call of a method in ``collective`` is sent to
    every rank in the same order (under FSDP each rank must take part in gathering sharded
    weights) and the returned ref(s) are rank 0's; any other method goes to rank 0 alone.

        leader = Leader(policy_group, ModelWorker.COLLECTIVE)
        weights_ref, checksum_ref = leader.named_weights_and_checksum.options(num_returns=2).remote()
    """

    def __init__(self, group: RayActorGroup, collective: frozenset[str] | set[str]):
        self.group, self.collective = group, frozenset(collective)

    def __getattr__(self, method: str) -> "_LeaderMethod":
        if method.startswith("__"):
            raise AttributeError(method)
        return _LeaderMethod(self, method, {})

    def __repr__(self) -> str:
        return f"Leader({self.group.role}/0 of {self.group.world_size})"


class _LeaderMethod:
    def __init__(self, leader: Leader, method: str, options: dict):
        self.leader, self.method, self.opts = leader, method, options

    def options(self, **options) -> "_LeaderMethod":
        return _LeaderMethod(self.leader, self.method, {**self.opts, **options})

    def remote(self, *args, **kwargs):
        actors = self.leader.group.actors
        if self.method not in self.leader.collective:
            actors = actors[:1]
        refs = []
        for a in actors:
            m = getattr(a, self.method)
            refs.append((m.options(**self.opts) if self.opts else m).remote(*args, **kwargs))
        return refs[0]


def _accepted_kwargs(cls) -> set[str]:
    """Keyword names the constructor takes (every name when it has **kwargs)."""
    target = getattr(cls, "__ray_metadata__", None)
    target = target.modified_class if target is not None else cls
    try:
        params = inspect.signature(target.__init__).parameters.values()
    except (TypeError, ValueError):
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return {"rank", "world_size"}
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def probe_plan(plan, groups, run_name: str, timeout_s: float = 120.0) -> tuple[list[dict], list[str]]:
    """Start a Probe for every planned worker in its bundle, compare where each landed with
    the plan (bundle, node, CPUs, GPUs), kill them; returns (reports, mismatches)."""
    bundle_nodes = groups.bundle_nodes()
    actor_groups, reports, problems = [], [], []
    try:
        for role, rp in plan.roles.items():
            actor_groups.append(RayActorGroup(Probe, role, rp, groups.for_role(role), run_name,
                                              timeout_s=timeout_s))
        for g in actor_groups:
            for w, info in zip(g.plan_role.workers, g.where()):
                reports.append(info)
                who = f"{g.role}/{w.rank}"
                node = bundle_nodes[g.plan_role.group][w.bundle_index]
                if info["bundle_index"] != w.bundle_index:
                    problems.append(f"{who}: planned for bundle {w.bundle_index}, "
                                    f"runs in bundle {info['bundle_index']}")
                if info["node_id"] != node:
                    problems.append(f"{who}: bundle {w.bundle_index} is on node {node}, the actor on {info['node_id']}")
                for key, want in (("CPU", w.num_cpus), ("GPU", w.num_gpus)):
                    got = info["resources"].get(key, 0.0)
                    if abs(got - want) > 1e-4:
                        problems.append(f"{who}: planned {key} {want:g}, Ray assigned {got:g}")
                if w.num_gpus and len(info["gpu_ids"]) != max(1, int(w.num_gpus)):
                    problems.append(f"{who}: planned {w.num_gpus:g} GPU, sees GPU ids {info['gpu_ids']}")
    finally:
        for g in actor_groups:
            g.kill()
    return reports, problems
