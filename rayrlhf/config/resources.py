"""How many workers each role runs, what each worker reserves, and which roles share bundles.

    resources:
      trainer:  {num_workers: 2, gpus_per_worker: 1}
      critic:   {colocate_with: trainer}          # shares the trainer's bundles (fractions)
      rollout:  {num_workers: 4, gpus_per_worker: 1, node_type: rollout_node}
      reference: {gpus_per_worker: 0.25, colocate_with: trainer}
      rewards:
        helpfulness: {num_workers: 2, gpus_per_worker: 0.5}
        safety:      {gpus_per_worker: 0.5}

Role names used by ``colocate_with`` and by the placement plan: ``trainer``, ``critic``,
``rollout``, ``reference`` and ``reward/<name>`` for each entry of ``rewards``.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Literal, Optional

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
FIXED_ROLES = ("trainer", "critic", "rollout", "reference")
REWARD_PREFIX = "reward/"


@dataclass
class RoleResources:
    num_workers: int = 1
    """Actors of this role (trainer: data-parallel ranks; rollout: engines; rewards: replicas)."""
    gpus_per_worker: float = 0.0
    """GPUs each actor reserves; fractions below 1 share a GPU, above 1 must be whole."""
    cpus_per_worker: float = 1.0
    """CPUs each actor reserves (fractions allowed)."""
    threads: Optional[int] = None
    """Torch (OpenMP) threads of each actor. Default: cpus_per_worker rounded, at least 1 (a
    rollout worker: its reservation rounded down). Set it to split a node's cores between roles
    that compute at the same time (in async PPO all of them can: the rollout generates while
    policy and critic update) other than by their reservations; keep the threads on a node at
    most its cores, since OpenMP threads on an oversubscribed core wait for each other."""
    colocate_with: Optional[str] = None
    """Another role whose placement group this role joins: worker i goes onto that role's
    bundle i (modulo its bundle count), so both must ask for fractions of the same GPUs."""
    node_type: Optional[str] = None
    """A custom resource that marks the nodes this role may use (a cluster-launcher node
    type, e.g. rollout_node); each bundle asks for 0.001 of it."""
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Ray placement strategy of this role's placement group (a colocated role uses its
    host's)."""

    def validate(self) -> list[str]:
        out = []
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 1:
            out.append(f"num_workers: must be a whole number of at least 1, got {self.num_workers!r}")
        if self.gpus_per_worker < 0:
            out.append(f"gpus_per_worker: must be 0 or more, got {self.gpus_per_worker}")
        elif self.gpus_per_worker > 1 and not float(self.gpus_per_worker).is_integer():
            out.append(f"gpus_per_worker: above 1 it must be whole (Ray cannot split several GPUs), "
                       f"got {self.gpus_per_worker}; use {math.ceil(self.gpus_per_worker)} or a fraction below 1")
        if self.cpus_per_worker < 0:
            out.append(f"cpus_per_worker: must be 0 or more, got {self.cpus_per_worker}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            out.append(f"threads: must be a whole number of at least 1 or null (from cpus_per_worker), "
                       f"got {self.threads!r}")
        if self.cpus_per_worker <= 0 and self.gpus_per_worker <= 0:
            out.append("cpus_per_worker and gpus_per_worker are both 0: a worker must reserve some "
                       "CPU or GPU (e.g. cpus_per_worker: 0.1)")
        if self.strategy not in STRATEGIES:
            out.append(f"strategy: must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.node_type is not None and not self.node_type.strip():
            out.append("node_type: must be a custom resource name or null, got an empty string")
        return out


@dataclass
class ResourcesSection:
    trainer: RoleResources = field(default_factory=RoleResources)
    """Policy trainer: num_workers ranks forming one torch.distributed group."""
    critic: RoleResources = field(default_factory=RoleResources)
    """Value model; its own placement group unless colocate_with names one (e.g. trainer, to
    share the trainer's GPUs in fractions)."""
    rollout: RoleResources = field(default_factory=RoleResources)
    """Rollout workers, one vLLM engine each."""
    reference: RoleResources = field(default_factory=RoleResources)
    """The frozen initial policy (reference logprobs)."""
    rewards: dict[str, RoleResources] = field(default_factory=dict)
    """One entry per reward model, keyed by its name (helpfulness, safety, ...); the role is
    called reward/<name>."""
    gpu_memory_gib: float = 80.0
    """Memory of each GPU, in GiB, for the memory plan checked before launch (rayrlhf plan)."""
    fake_gpus: bool = False
    """Placement tests only: let a role that reserved GPUs compute on CPU when its node has no
    CUDA device (a cluster started with ray.init(num_gpus=N) advertises GPUs it lacks).
    Otherwise such a role stops at start with a message naming it."""

    def roles(self) -> dict[str, RoleResources]:
        """Every role by name, in plan order: trainer, critic, rollout, reference, reward/*."""
        out = {name: getattr(self, name) for name in FIXED_ROLES}
        out.update({REWARD_PREFIX + name: r for name, r in self.rewards.items()})
        return out

    def validate(self) -> list[str]:
        out = []
        for name, role in self.rewards.items():
            if not name or "/" in name or name != name.strip():
                out.append(f"rewards.{name}: a reward model name must be non-empty, without '/' or spaces")
            out.extend(f"rewards.{name}.{msg}" for msg in role.validate())
        roles = self.roles()
        links = [_check_link(name, roles) for name, r in roles.items() if r.colocate_with is not None]
        out.extend(msg for msgs in links for msg in msgs)
        if not any(links):
            out.extend(_check_shared_groups(roles))
        return out


def config_path(role: str) -> str:
    """``trainer`` -> ``resources.trainer``; ``reward/safety`` -> ``resources.rewards.safety``."""
    if role.startswith(REWARD_PREFIX):
        return f"resources.rewards.{role[len(REWARD_PREFIX):]}"
    return f"resources.{role}"


def colocation_host(role: str, roles: dict[str, RoleResources]) -> str:
    """The role that owns the placement group ``role`` joins (itself when not colocated)."""
    chain = [role]
    while roles[chain[-1]].colocate_with is not None:
        nxt = roles[chain[-1]].colocate_with
        if nxt not in roles or nxt in chain:
            raise ValueError(f"colocation of {role} does not resolve: {' -> '.join(chain + [nxt])}")
        chain.append(nxt)
    return chain[-1]


def gpu_capacity(host: RoleResources) -> float:
    """GPUs one bundle of a shared group may hold: the host worker's whole GPUs, at least 1."""
    return max(1.0, float(math.ceil(host.gpus_per_worker)))


def _key(role: str) -> str:
    return config_path(role)[len("resources."):]


def _check_link(name: str, roles: dict[str, RoleResources]) -> list[str]:
    key = f"{_key(name)}.colocate_with"
    target = roles[name].colocate_with
    if target == name:
        return [f"{key}: a role cannot colocate with itself; set it to another role or null"]
    if target not in roles:
        close = difflib.get_close_matches(target, [r for r in roles if r != name], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return [f"{key}: unknown role {target!r}; {hint}roles are {', '.join(roles)}"]
    chain = [name]
    while roles[chain[-1]].colocate_with is not None:
        nxt = roles[chain[-1]].colocate_with
        if nxt not in roles:
            return []
        if nxt in chain:
            loop = chain[chain.index(nxt):]
            if loop[0] != name or any(list(roles).index(r) < list(roles).index(name) for r in loop):
                return []  # reported once, on the cycle's first role
            cycle = " -> ".join(loop + [nxt])
            return [f"{key}: colocation cycle {cycle}; set colocate_with: null on one role of the cycle"]
        chain.append(nxt)
    host_name, role, host = chain[-1], roles[name], roles[chain[-1]]
    out = []
    if role.node_type not in (None, host.node_type):
        theirs = f"node_type {host.node_type!r}" if host.node_type else "no node_type"
        out.append(f"{key}: {name} runs on {host_name}'s bundles, which ask for {theirs}, not "
                   f"{role.node_type!r}; set {config_path(name)}.node_type to null, or set the same "
                   f"node_type on {config_path(host_name)}")
    if role.strategy not in ("PACK", host.strategy):
        out.append(f"{key}: {name} joins {host_name}'s placement group, whose strategy is "
                   f"{host.strategy}; remove {config_path(name)}.strategy or set it on {config_path(host_name)}")
    return out


def _check_shared_groups(roles: dict[str, RoleResources]) -> list[str]:
    """Each bundle of a shared group holds the GPUs of every worker on it; they must fit the host's."""
    out = []
    for host_name, host in roles.items():
        if host.colocate_with is not None or host.num_workers < 1:
            continue
        per_bundle = [host.gpus_per_worker] * host.num_workers
        parts = [f"{host_name} {_num(host.gpus_per_worker)}"]
        cap = gpu_capacity(host)
        for name, role in roles.items():
            if name == host_name or colocation_host(name, roles) != host_name or role.num_workers < 1:
                continue
            for i in range(role.num_workers):
                per_bundle[i % host.num_workers] += role.gpus_per_worker
            per = -(-role.num_workers // host.num_workers)
            if role.gpus_per_worker > 0:
                parts.append(f"{name} {_num(role.gpus_per_worker)}" + (f" x {per}" if per > 1 else ""))
            if max(per_bundle) > cap + 1e-9:
                out.append(
                    f"{_key(name)}.colocate_with: a bundle of {host_name}'s placement group would hold "
                    f"{_num(max(per_bundle))} GPUs ({' + '.join(parts)}), but colocated workers share "
                    f"the host worker's {_num(cap)} GPU{'s' if cap != 1 else ''}: lower "
                    f"{config_path(name)}.gpus_per_worker or {config_path(host_name)}.gpus_per_worker so "
                    f"they sum to at most {_num(cap)} (e.g. 0.5 each), or set "
                    f"{config_path(name)}.colocate_with: null to give {name} its own placement group")
                break
    return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.4f}".rstrip("0")
