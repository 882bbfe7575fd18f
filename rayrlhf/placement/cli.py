"""``rayrlhf plan``: print the placement plan of a config and check that the cluster holds it.

    rayrlhf plan --config jobs/ppo.yaml                         # the cluster Ray finds (or none)
    rayrlhf plan --config jobs/ppo.yaml --address 10.0.0.1:6379 resources.rollout.num_workers=8
    rayrlhf plan --config jobs/ppo.yaml --no-cluster            # bundles only
    rayrlhf plan --config jobs/ppo.yaml --probe                 # also start a tiny actor per worker

With a cluster, the placement groups are created for a moment to learn which node each bundle
goes to, then removed. No model is loaded. Exit status: 0 fits, 1 the cluster cannot hold the
plan (or the cluster named by --address is unreachable), 2 the config is invalid.
"""
from __future__ import annotations

import argparse
import sys
import uuid
from dataclasses import dataclass, field

from rayrlhf.config.loader import ConfigError, apply_overrides, load_config, read_yaml
from rayrlhf.config.resources import ResourcesSection
from rayrlhf.placement.plan import add_resources, check_fits, format_resources, node_resources, plan_placement
from rayrlhf.placement.report import format_plan


@dataclass
class PlanConfig:
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    """Workers and resources per role (the only section `rayrlhf plan` reads)."""


def load_resources(path: str, overrides: list[str] | None = None) -> ResourcesSection:
    """The ``resources:`` section of any config file, with dotted overrides applied."""
    raw = apply_overrides(read_yaml(path), list(overrides or []))
    if "resources" not in raw:
        raise ConfigError(["no resources: section at the top level; add one, e.g. "
                           "resources: {trainer: {num_workers: 2, gpus_per_worker: 1}}"], source=path)
    try:
        return load_config(PlanConfig, data={"resources": raw["resources"]}).resources
    except ConfigError as e:
        raise ConfigError(e.problems, source=path) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rayrlhf plan", description="Print the placement plan of a config "
                                "and check that the Ray cluster can hold it. Loads no model.")
    p.add_argument("--config", required=True, help="YAML file with a top-level resources: section")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a "
                   "running local cluster)")
    p.add_argument("--no-cluster", action="store_true", help="plan only; do not look for a cluster")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the placement groups")
    p.add_argument("--probe", action="store_true", help="also start a tiny actor per worker and "
                   "check that each lands where planned")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. resources.rollout.num_workers=4")
    return p


def plan_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = plan_placement(load_resources(args.config, args.overrides))
    except ConfigError as e:
        print(f"rayrlhf plan: {e}", file=sys.stderr)
        return 2
    if args.no_cluster:
        print(format_plan(plan))
        print("(--no-cluster: run without it, or with --address, to see which node each bundle goes to)")
        return 0
    connected_here = _connect(args.address)
    if connected_here is None:
        print(format_plan(plan))
        where = f"at {args.address}" if args.address else "(none running; pass --address)"
        print(f"rayrlhf plan: no Ray cluster reachable {where}", file=sys.stderr)
        return 1 if args.address else 0
    try:
        return _plan_on_cluster(plan, args)
    finally:
        if connected_here:
            import ray

            ray.shutdown()


def _plan_on_cluster(plan, args) -> int:
    import ray

    from rayrlhf.placement.actors import probe_plan
    from rayrlhf.placement.groups import PlacementTimeoutError, create_placement_groups

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    problems = check_fits(plan, nodes)
    if problems:
        print(format_plan(plan))
        total = add_resources(*(node_resources(n) for n in nodes))
        print(f"rayrlhf plan: the cluster ({len(nodes)} node{'s' if len(nodes) != 1 else ''}, "
              f"{format_resources(total)}) cannot hold this plan:\n"
              + "\n".join(f"  - {p}" for p in problems), file=sys.stderr)
        return 1
    prefix = f"rayrlhf-plan-{uuid.uuid4().hex[:8]}"
    try:
        groups = create_placement_groups(plan, prefix, timeout_s=args.timeout)
    except PlacementTimeoutError as e:
        print(format_plan(plan))
        print(f"rayrlhf plan: {e}", file=sys.stderr)
        return 1
    try:
        bundle_nodes = groups.bundle_nodes()
        reports, mismatches = probe_plan(plan, groups, prefix, args.timeout) if args.probe else ([], [])
    finally:
        groups.remove()
    print(format_plan(plan, bundle_nodes, nodes))
    if args.probe:
        print(f"probe: {len(reports)} actors started, {len(mismatches)} mismatch"
              f"{'es' if len(mismatches) != 1 else ''} with the plan")
        for m in mismatches:
            print(f"  - {m}")
        return 1 if mismatches else 0
    return 0


def _connect(address: str | None) -> bool | None:
    """True: connected now; False: already connected; None: no cluster reachable."""
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=address or "auto", logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError):
        return None
    return True


def main() -> None:
    sys.exit(plan_main())
