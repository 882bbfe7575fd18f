"""Create, wait for, locate and remove the placement groups of a plan.

    groups = create_placement_groups(plan, "run42", timeout_s=300)     # blocks, or raises
    groups = create_placement_groups(plan, "run42", wait=False)        # autoscaling clusters
    while not groups.is_ready(): ...                                   # poll between other work
    groups.bundle_nodes()   # {"trainer": [node_id of bundle 0, ...], ...}
    groups.remove()

    extra = WorkerGroups({"CPU": 1, "GPU": 1}, "run42/rollout")   # workers beyond the plan
    extra.request(4); extra.is_ready(4); extra.release(4)
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping

import ray
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table, remove_placement_group

from rayrlhf.config.resources import config_path
from rayrlhf.placement.plan import Plan, add_resources, clean_resources, format_resources


class PlacementTimeoutError(TimeoutError):
    """Placement groups not ready in time; the message names them and what the cluster lacks."""


class PlacementGroups(Mapping):
    """The Ray placement groups of one plan: a mapping from group name (the host role, see
    ``Plan.group_of``) to ``PlacementGroup``, plus readiness, locations and removal."""

    def __init__(self, plan: Plan, groups: dict[str, PlacementGroup], name_prefix: str):
        self.plan = plan
        self.groups = groups
        self.name_prefix = name_prefix
        self._ready = {name: pg.ready() for name, pg in groups.items()}

    def __getitem__(self, group: str) -> PlacementGroup:
        return self.groups[group]

    def __iter__(self) -> Iterator[str]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def for_role(self, role: str) -> PlacementGroup:
        return self.groups[self.plan.roles[role].group]

    def pending(self) -> list[str]:
        """Groups not ready yet (non-blocking)."""
        return self._not_ready(0)

    def is_ready(self, group: str | None = None) -> bool:
        if group is not None:
            ready, _ = ray.wait([self._ready[group]], timeout=0)
            return bool(ready)
        return not self.pending()

    def wait(self, timeout_s: float) -> None:
        """Block until every group is ready; PlacementTimeoutError after ``timeout_s``."""
        missing = self._not_ready(timeout_s)
        if missing:
            raise PlacementTimeoutError(self._explain(missing, timeout_s))

    def _not_ready(self, timeout_s: float) -> list[str]:
        refs = list(self._ready.values())
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        return [name for name, ref in self._ready.items() if ref not in ready]

    def bundle_nodes(self, settle_s: float = 5.0) -> dict[str, list[str]]:
        """Node id of every bundle of every group ("" for a bundle not placed); waits up to
        ``settle_s`` for the placement of ready groups to show in Ray's table."""
        deadline = time.monotonic() + settle_s
        while True:
            out = {}
            for name, pg in self.groups.items():
                where = placement_group_table(pg).get("bundles_to_node_id") or {}
                out[name] = [where.get(i, "") or "" for i in range(len(self.plan.groups[name].bundles))]
            ready = set(self.groups) - set(self.pending())
            if all(all(out[n]) for n in ready) or time.monotonic() > deadline:
                return out
            time.sleep(0.1)

    def remove(self) -> None:
        for pg in self.groups.values():
            try:
                remove_placement_group(pg)
            except Exception:  # already removed, or the cluster is gone
                pass

    def _explain(self, missing: list[str], timeout_s: float) -> str:
        free = clean_resources(ray.available_resources())
        total = clean_resources(ray.cluster_resources())
        lines = [f"placement group{'s' if len(missing) > 1 else ''} not ready after {timeout_s:g} s:"]
        need_all = add_resources(*(self.plan.groups[m].demand() for m in missing))
        short = {k: v - free.get(k, 0.0) for k, v in need_all.items() if v > free.get(k, 0.0) + 1e-6}
        for m in missing:
            g = self.plan.groups[m]
            state = (placement_group_table(self.groups[m]).get("stats") or {}).get("scheduling_state", "?")
            knobs = ", ".join(f"{config_path(r)}.num_workers" for r in g.roles)
            lines.append(f"  {self.name_prefix}/{m} (roles {', '.join(g.roles)}; {len(g.bundles)} bundles, "
                         f"{g.strategy}; state {state}) needs {format_resources(g.demand())}; "
                         f"to shrink it lower {knobs} or the per-worker resources")
        lines.append(f"  free now: {format_resources(free)} (cluster total: {format_resources(total)})")
        if short:
            lines.append(f"  missing: {format_resources(short)}; free them (other jobs, placement "
                         "groups) or add nodes")
        else:
            lines.append("  the totals are free, but no set of nodes holds the bundles under these "
                         "strategies (bundles too big for one node, STRICT_* strategies)")
        lines.append("  on an autoscaling cluster pass wait=False and poll is_ready() instead of blocking")
        return "\n".join(lines)


class WorkerGroups:
    """Single-bundle placement groups for the workers a role runs beyond its plan (rollout
    workers added while a run goes), one per rank, named ``{name_prefix}/{rank}``.

    A request never waits: on an autoscaling cluster the node that fits may take minutes to
    arrive, and the caller goes on working meanwhile, asking ``is_ready`` now and then.
    """

    def __init__(self, bundle: dict[str, float], name_prefix: str):
        self.bundle = clean_resources(bundle)
        self.name_prefix = name_prefix
        self.groups: dict[int, PlacementGroup] = {}
        self._ready: dict[int, ray.ObjectRef] = {}

    def request(self, rank: int) -> PlacementGroup:
        """The group of ``rank``, created (not waited for) on first request."""
        if rank not in self.groups:
            pg = placement_group([dict(self.bundle)], strategy="PACK", name=f"{self.name_prefix}/{rank}")
            self.groups[rank], self._ready[rank] = pg, pg.ready()
        return self.groups[rank]

    def is_ready(self, rank: int) -> bool:
        """Whether the group of ``rank`` holds its bundle (non-blocking)."""
        ready, _ = ray.wait([self._ready[rank]], timeout=0)
        return bool(ready)

    def release(self, rank: int) -> None:
        pg = self.groups.pop(rank, None)
        self._ready.pop(rank, None)
        if pg is not None:
            try:
                remove_placement_group(pg)
            except Exception:  # already removed, or the cluster is gone
                pass

    def remove(self) -> None:
        for rank in list(self.groups):
            self.release(rank)


def create_placement_groups(plan: Plan, name_prefix: str, timeout_s: float = 300.0,
                            wait: bool = True) -> PlacementGroups:
    """One Ray placement group per plan group, named ``{name_prefix}/{group}``.

    With ``wait`` (default) this blocks until all are ready and, after ``timeout_s``, removes
    them and raises PlacementTimeoutError. With ``wait=False`` it returns at once: poll
    ``is_ready()`` (an autoscaler may add nodes later) and call ``wait()`` when needed.
    """
    made: dict[str, PlacementGroup] = {}
    for name, g in plan.groups.items():
        made[name] = placement_group(g.bundles, strategy=g.strategy, name=f"{name_prefix}/{name}")
    groups = PlacementGroups(plan, made, name_prefix)
    if wait:
        try:
            groups.wait(timeout_s)
        except BaseException:
            groups.remove()
            raise
    return groups


def locate_bundles(plan: Plan, timeout_s: float = 60.0) -> dict[str, list[str]]:
    """Which node each bundle would go to: create the groups, read where they went, remove them.

    Loads nothing; the groups exist for the moment it takes Ray to place them.
    """
    groups = create_placement_groups(plan, f"rayrlhf-plan-{uuid.uuid4().hex[:8]}", timeout_s=timeout_s)
    try:
        return groups.bundle_nodes()
    finally:
        groups.remove()
