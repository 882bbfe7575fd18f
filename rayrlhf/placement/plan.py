"""Roles -> placement groups -> bundles -> ranks, computed without Ray.

    plan = plan_placement(cfg.resources)
    plan.groups["trainer"].bundles   # [{"CPU": 1.5, "GPU": 1.0}, ...]  (trainer + critic)
    plan.roles["critic"].workers[0]  # WorkerSlot(rank=0, bundle_index=0, num_cpus=0.5, ...)
    check_fits(plan, ray.nodes())    # [] or messages naming the role and what to change

One placement group per role; a role with ``colocate_with`` joins its host's group, its worker
of rank r going onto bundle r modulo the host's bundle count, and each bundle holds the sum of
what the workers on it ask for (OpenRLHF-style colocation: actor, critic, reference and reward
models time-share the same GPUs by asking for fractions).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rayrlhf.config.loader import ConfigError, validate_tree
from rayrlhf.config.resources import ResourcesSection, colocation_host, config_path

NODE_TYPE_AMOUNT = 0.001
"""How much of a node-type custom resource each worker asks for (a label, not a quantity)."""

_EPS = 1e-6


@dataclass(frozen=True)
class WorkerSlot:
    """One actor of a role: its rank, the bundle it runs in and what it asks Ray for."""

    rank: int
    bundle_index: int
    num_cpus: float
    num_gpus: float
    resources: dict[str, float] = field(default_factory=dict)
    """Custom resources (the node-type label)."""

    def demand(self) -> dict[str, float]:
        return clean_resources({"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources})


@dataclass
class RolePlan:
    role: str
    group: str
    """Name of the placement group (its host role) this role's workers run in."""
    workers: list[WorkerSlot]

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def demand(self) -> dict[str, float]:
        return add_resources(*(w.demand() for w in self.workers))


@dataclass
class GroupPlan:
    name: str
    strategy: str
    bundles: list[dict[str, float]]
    roles: list[str]
    """Host role first, then the roles colocated with it."""
    node_type: str | None = None

    def demand(self) -> dict[str, float]:
        return add_resources(*self.bundles)


@dataclass
class Plan:
    groups: dict[str, GroupPlan]
    roles: dict[str, RolePlan]

    def group_of(self, role: str) -> str:
        """Name of the placement group ``role`` runs in (a key of ``groups``)."""
        return self.roles[role].group

    def demand(self) -> dict[str, float]:
        return add_resources(*(g.demand() for g in self.groups.values()))

    def roles_on_bundle(self, group: str, index: int) -> list[str]:
        return [f"{r}/{w.rank}" for r in self.groups[group].roles for w in self.roles[r].workers
                if w.bundle_index == index]


def plan_placement(resources: ResourcesSection, roles: list[str] | None = None) -> Plan:
    """Placement groups, bundles and ranks for ``roles`` (default: every role in the section).

    Raises ConfigError listing every problem (unknown roles, colocation that does not fit, ...).
    """
    problems = validate_tree(resources, "resources")
    cfg = resources.roles()
    selected = list(cfg) if roles is None else [r for r in cfg if r in roles]
    for r in roles or []:
        if r not in cfg:
            problems.append(f"unknown role {r!r}: roles are {', '.join(cfg)} "
                            f"(reward models are reward/<name> for each entry of resources.rewards)")
    if not problems:
        for r in selected:
            host = colocation_host(r, cfg)
            if host not in selected:
                problems.append(f"{config_path(r)}.colocate_with: {r} joins {host}'s placement group, "
                                f"which this plan leaves out; include {host} or set colocate_with: null")
    if problems:
        raise ConfigError(problems)

    groups: dict[str, GroupPlan] = {}
    plans: dict[str, RolePlan] = {}
    for host in (r for r in selected if cfg[r].colocate_with is None):
        h = cfg[host]
        members = [host] + [r for r in selected if r != host and colocation_host(r, cfg) == host]
        bundles: list[dict[str, float]] = [{} for _ in range(h.num_workers)]
        for name in members:
            rc = cfg[name]
            custom = {rc.node_type: NODE_TYPE_AMOUNT} if rc.node_type else {}
            workers = [WorkerSlot(rank, rank % h.num_workers, float(rc.cpus_per_worker),
                                  float(rc.gpus_per_worker), dict(custom))
                       for rank in range(rc.num_workers)]
            for w in workers:
                bundles[w.bundle_index] = add_resources(bundles[w.bundle_index], w.demand())
            plans[name] = RolePlan(name, host, workers)
        groups[host] = GroupPlan(host, h.strategy, bundles, members, h.node_type)
    return Plan(groups, {r: plans[r] for r in selected})


def check_fits(plan: Plan, cluster: dict | list[dict]) -> list[str]:
    """What keeps ``cluster`` from ever holding ``plan`` (empty when it can).

    ``cluster`` is either total resources (``ray.cluster_resources()``: totals only) or a list
    of nodes (``ray.nodes()`` entries or plain resource dicts: totals, and whether each bundle,
    each STRICT_PACK group and each STRICT_SPREAD group fits on the nodes). This checks
    capacity, not what other jobs hold right now.
    """
    if isinstance(cluster, dict):
        nodes, totals = None, clean_resources(cluster)
    else:
        nodes = [node_resources(n) for n in cluster if n.get("Alive", n.get("alive", True))]
        totals = add_resources(*nodes)
    out = []
    demand = plan.demand()
    for res in _ordered(demand):
        need, have = demand[res], totals.get(res, 0.0)
        if need <= have + _EPS:
            continue
        users = {r: rp.demand().get(res, 0.0) for r, rp in plan.roles.items()}
        users = {r: v for r, v in users.items() if v > 0}
        out.append(_total_message(res, need, have, users))
    if nodes:
        out.extend(_check_node_types(plan, nodes))
        for group in plan.groups.values():
            out.extend(_check_group_on_nodes(plan, group, nodes))
    return out


def _check_node_types(plan: Plan, nodes: list[dict[str, float]]) -> list[str]:
    """Groups pinned to a node type must fit, together, on the nodes of that type."""
    out = []
    for label in dict.fromkeys(g.node_type for g in plan.groups.values() if g.node_type):
        typed = [n for n in nodes if n.get(label, 0) > 0]
        if not typed:
            continue  # reported with the totals: no node has the label at all
        have = add_resources(*typed)
        members = [g for g in plan.groups.values() if g.node_type == label]
        need = add_resources(*(g.demand() for g in members))
        for res in ("CPU", "GPU"):
            if need.get(res, 0.0) > have.get(res, 0.0) + _EPS:
                roles = [r for g in members for r in g.roles if plan.roles[r].demand().get(res)]
                knob = "gpus_per_worker" if res == "GPU" else "cpus_per_worker"
                out.append(f"{', '.join(roles)} need{'s' if len(roles) == 1 else ''} {_num(need[res])} "
                           f"{res}s on nodes of type {label}, which have {_num(have.get(res, 0.0))} in total "
                           f"({len(typed)} node{'s' if len(typed) != 1 else ''}): add {label} nodes, or lower "
                           f"num_workers or {knob} of {', '.join(config_path(r) for r in roles)}")
    return out


def _total_message(res: str, need: float, have: float, users: dict[str, float]) -> str:
    paths = [config_path(r) for r in users]
    if res not in ("CPU", "GPU"):
        if have <= 0:
            return (f"{', '.join(users)} ask{'s' if len(users) == 1 else ''} for nodes of type {res}, "
                    f"but no node has the custom resource {res}: start nodes with resources "
                    f"{{{res}: 1}} (a cluster-launcher node type), or set "
                    f"{' and '.join(p + '.node_type' for p in paths)} to null")
        return (f"{', '.join(users)} need {_num(need)} of the custom resource {res}, the cluster has "
                f"{_num(have)}: give the {res} nodes more of it, or lower the num_workers of {', '.join(paths)}")
    noun, knob = ("GPUs", "gpus_per_worker") if res == "GPU" else ("CPUs", "cpus_per_worker")
    if len(users) == 1:
        (role,) = users
        return (f"{role} needs {_num(need)} {noun} in total, the cluster has {_num(have)}: "
                f"lower {paths[0]}.num_workers or {paths[0]}.{knob}")
    each = ", ".join(f"{r} {_num(v)}" for r, v in users.items())
    return (f"{', '.join(users)} need {_num(need)} {noun} in total ({each}), the cluster has "
            f"{_num(have)}: lower num_workers or {knob} of {', '.join(paths)}, or colocate roles")


def _check_group_on_nodes(plan: Plan, group: GroupPlan, nodes: list[dict[str, float]]) -> list[str]:
    where = [n for n in nodes if group.node_type is None or n.get(group.node_type, 0) > 0]
    if not where:
        return []
    label = f" of type {group.node_type}" if group.node_type else ""
    roles = ", ".join(group.roles)
    paths = " / ".join(config_path(r) for r in group.roles)
    largest = {k: max(n.get(k, 0.0) for n in where) for k in ("CPU", "GPU")}
    for i, bundle in enumerate(group.bundles):
        if not any(_fits(bundle, n) for n in where):
            on = ", ".join(plan.roles_on_bundle(group.name, i))
            return [f"{roles}: bundle {i} of placement group {group.name} ({on}) asks for "
                    f"{format_resources(bundle)}, more than any single node{label} has (largest: "
                    f"{format_resources(largest)}): lower gpus_per_worker / cpus_per_worker of {paths}"]
    if group.strategy == "STRICT_PACK" and not any(_fits(group.demand(), n) for n in where):
        return [f"{roles}: placement group {group.name} is STRICT_PACK and needs "
                f"{format_resources(group.demand())} on one node, more than any node{label} has "
                f"(largest: {format_resources(largest)}): set {config_path(group.name)}.strategy: PACK, "
                f"or lower num_workers / gpus_per_worker of {paths}"]
    if group.strategy == "STRICT_SPREAD":
        biggest = add_resources(*[{k: max(b.get(k, 0.0) for b in group.bundles)} for k in _ordered(group.demand())])
        room = sum(_fits(biggest, n) for n in where)
        if room < len(group.bundles):
            return [f"{roles}: placement group {group.name} is STRICT_SPREAD with {len(group.bundles)} "
                    f"bundles, one per node, but only {room} node{'s' if room != 1 else ''}{label} can "
                    f"hold one: set {config_path(group.name)}.strategy: SPREAD, or lower "
                    f"{config_path(group.name)}.num_workers to {room}"]
    return []


def format_resources(res: dict[str, float]) -> str:
    """``{"GPU": 1, "CPU": 0.5}`` -> ``"CPU 0.5, GPU 1"`` (CPU, GPU, then custom by name)."""
    res = clean_resources(res)
    return ", ".join(f"{k} {_num(res[k])}" for k in _ordered(res)) or "nothing"


def _fits(need: dict[str, float], have: dict[str, float]) -> bool:
    return all(v <= have.get(k, 0.0) + _EPS for k, v in need.items())


def node_resources(node: dict) -> dict[str, float]:
    return clean_resources(node["Resources"] if "Resources" in node else node)


def clean_resources(res: dict) -> dict[str, float]:
    """Drop zeros and Ray's bookkeeping entries (node:..., memory, *_group_* of placement groups)."""
    skip = ("memory", "object_store_memory")
    return {k: round(float(v), 4) for k, v in res.items()
            if v and k not in skip and not k.startswith("node:") and "_group_" not in k
            and not k.startswith("bundle_group")}


def add_resources(*items: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        for k, v in item.items():
            out[k] = round(out.get(k, 0.0) + v, 4)
    return {k: out[k] for k in _ordered(out) if out[k]}


def _ordered(res: dict) -> list[str]:
    return [k for k in ("CPU", "GPU") if k in res] + sorted(k for k in res if k not in ("CPU", "GPU"))


def _num(x: float) -> str:
    return str(int(round(x))) if abs(x - round(x)) < _EPS else f"{x:.4f}".rstrip("0")
