"""The one place that owns placement groups, bundles and ranks.

    plan = plan_placement(cfg.resources)                    # pure: groups, bundles, ranks
    problems = check_fits(plan, ray.nodes())                # what the cluster lacks, per role
    groups = create_placement_groups(plan, run_name)        # Ray placement groups, waited for
    trainer = RayActorGroup(PolicyTrainer, "trainer", plan.roles["trainer"],
                            groups.for_role("trainer"), run_name)
    print(format_plan(plan, groups.bundle_nodes(), ray.nodes()))

The planning half imports no Ray; the rest imports it when used.
"""
from rayrlhf.placement.plan import (
    NODE_TYPE_AMOUNT,
    GroupPlan,
    Plan,
    RolePlan,
    WorkerSlot,
    check_fits,
    format_resources,
    plan_placement,
)
from rayrlhf.placement.report import format_plan

_LAZY = {
    "RayActorGroup": "actors", "ActorFactory": "actors", "Probe": "actors", "ActorCallError": "actors",
    "ActorCallTimeout": "actors", "describe_worker": "actors", "free_addr_port": "actors",
    "probe_plan": "actors", "Leader": "actors",
    "PlacementGroups": "groups", "PlacementTimeoutError": "groups", "WorkerGroups": "groups",
    "create_placement_groups": "groups", "locate_bundles": "groups",
    "plan_main": "cli", "load_resources": "cli",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"rayrlhf.placement.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'rayrlhf.placement' has no attribute {name!r}")


__all__ = [
    "NODE_TYPE_AMOUNT", "GroupPlan", "Plan", "RolePlan", "WorkerSlot", "check_fits",
    "format_resources", "plan_placement", "format_plan", *_LAZY,
]
