"""``rayrlhf plan``: the placement plan and the GPU memory plan of a config, before launch.

    rayrlhf plan --config jobs/ppo.yaml                         # the cluster Ray finds (or none)
    rayrlhf plan --config jobs/ppo.yaml --address 10.0.0.1:6379 resources.rollout.num_workers=8
    rayrlhf plan --config jobs/ppo.yaml --no-cluster            # bundles and memory only
    rayrlhf plan --config jobs/ppo.yaml --probe                 # also start a tiny actor per worker
    rayrlhf plan --config jobs/qwen0.5b_hh_rlhf.yaml --no-cluster --gpu-memory-gib 40

Any command's config: sft, rm, dpo, rrhf (their Ray Train workers: scaling.num_workers,
use_gpu, cpus_per_worker), ppo, rs, label and revise (their rollout fleets: resources.rollout,
revise's judge_resources), a pipeline or a compare (every stage but toyworld in turn), told
apart by its top-level keys or named with --command. With a cluster, the placement groups
of ppo/rs are created for a moment to learn which node each bundle goes to, then removed. No
model is loaded: the memory plan reads each model's config.json (rayrlhf.engine.memory). Exit
status: 0 fits, 1 the cluster cannot hold the plan (or the cluster named by --address is
unreachable) or a GPU role does not fit its GPU's memory, 2 the config is invalid.
"""
from __future__ import annotations

import argparse
import sys
import uuid
from dataclasses import dataclass, field

from rayrlhf.config.loader import ConfigError, apply_overrides, load_config, read_yaml
from rayrlhf.config.resources import ResourcesSection
from rayrlhf.config.schema import SUPERVISED_COMMANDS
from rayrlhf.placement.plan import add_resources, check_fits, format_resources, node_resources, plan_placement
from rayrlhf.placement.report import format_fleet, format_plan, format_train_workers

COMMANDS = SUPERVISED_COMMANDS + ("ppo", "rs", "best-of-k", "label", "revise", "pipeline", "compare")
FLEET_COMMANDS = ("label", "revise")
"""Commands whose only workers are rollout fleets (no trainer, no memory plan yet)."""


@dataclass
class PlanConfig:
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    """Workers and resources per role (all a config without model sections gives `rayrlhf plan`)."""


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


def detect_command(raw: dict) -> str | None:
    """Which command a config is for, from its top-level keys (None: cannot tell)."""
    if "compare" in raw:
        return "compare"
    if "stages" in raw:
        return "pipeline"
    if "policy" in raw and "ppo" in raw:
        return "ppo"
    if "rs" in raw:
        return "rs"
    if "revise" in raw:
        return "revise"
    if "label" in raw or ("judge" in raw and "policy" not in raw):
        return "label"
    if "model" in raw or "scaling" in raw or "train" in raw:
        return next((c for c in ("dpo", "rrhf") if c in raw), "rm" if "reward" in raw else "sft")
    return None


@dataclass
class Stage:
    label: str | None
    """``stage rm_safety (rm)`` inside a pipeline."""
    command: str
    cfg: object
    known: dict | None = None
    """Model folders the pipeline has not written yet -> their config (the memory plan's)."""


def load_stages(path: str, overrides: list[str], command: str | None) -> list[Stage] | None:
    """The typed config(s) to plan; None for a resources-only file (placement only)."""
    command = command or detect_command(apply_overrides(read_yaml(path), list(overrides), {"stages": "config"}))
    if command is None:
        if "resources" in read_yaml(path):
            return None
        raise ConfigError(["cannot tell which command this config is for (no stages, policy, rs, judge, "
                           f"model or scaling section): pass --command ({', '.join(COMMANDS)})"], source=path)
    command = "rs" if command == "best-of-k" else command
    if command in ("pipeline", "compare"):
        from rayrlhf.driver.compare import load_compare
        from rayrlhf.driver.pipeline import load_pipeline
        from rayrlhf.engine.memory import pipeline_model_configs

        pipe, run_dir, configs = (load_pipeline(path, overrides) if command == "pipeline"
                                  else load_compare(path, overrides)[1:4])
        known = pipeline_model_configs(pipe, run_dir, configs)
        return [Stage(f"stage {spec.name} ({spec.kind})", spec.kind, c, known)
                for spec, c in zip(pipe.stages, configs) if spec.kind != "toyworld"]
    from rayrlhf.config.commands import config_class

    return [Stage(None, command, load_config(config_class(command), path, overrides))]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rayrlhf plan", description="Print the placement plan and the GPU memory "
                                "plan of a config, and check that the Ray cluster can hold it. Loads no model.")
    p.add_argument("--config", required=True, help=f"YAML file of any command ({', '.join(COMMANDS)})")
    p.add_argument("--command", choices=COMMANDS, default=None, help="the command the config is for "
                   "(default: told from its top-level keys)")
    p.add_argument("--gpu-memory-gib", type=float, default=None, help="memory of each GPU in GiB (default: "
                   "the config's resources.gpu_memory_gib / scaling.gpu_memory_gib)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a "
                   "running local cluster)")
    p.add_argument("--no-cluster", action="store_true", help="plan only; do not look for a cluster")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the placement groups")
    p.add_argument("--probe", action="store_true", help="also start a tiny actor per worker and "
                   "check that each lands where planned")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. resources.rollout.num_workers=4")
    return p


def plan_main(argv: list[str] | None = None) -> int:
    from rayrlhf.engine.memory import format_memory, plan_memory, planned_roles

    args = build_parser().parse_args(argv)
    try:
        stages = load_stages(args.config, args.overrides, args.command)
        if stages is None:
            placements = [(None, plan_placement(load_resources(args.config, args.overrides)), None)]
        else:
            placements = []
            for st in stages:
                if st.command in FLEET_COMMANDS:
                    placements.append((st, None, None))
                    continue
                if args.gpu_memory_gib is not None:
                    section = st.cfg.scaling if st.command in SUPERVISED_COMMANDS else st.cfg.resources
                    section.gpu_memory_gib = args.gpu_memory_gib
                placement = (plan_placement(st.cfg.resources, roles=planned_roles(st.command, st.cfg))
                             if st.command in ("ppo", "rs") else None)
                placements.append((st, placement, plan_memory(st.command, st.cfg, st.known)))
    except ConfigError as e:
        print(f"rayrlhf plan: {e}", file=sys.stderr)
        return 2
    connected_here = None if args.no_cluster or not any(p for _, p, _ in placements) else _connect(args.address)
    code = 0
    try:
        for st, placement, memory in placements:
            if st is not None and st.label:
                print(f"== {st.label} ==")
            if placement is not None:
                code = max(code, _placement(placement, args, connected_here))
            elif st is not None and st.command in FLEET_COMMANDS:
                print(_format_fleets(st))
                print(f"memory: not planned for {st.command} (the memory plan covers the training commands: "
                      f"{', '.join(SUPERVISED_COMMANDS)}, ppo, rs)")
                print()
                continue
            elif st is not None:
                print(format_train_workers(st.cfg.scaling))
            if memory is None:
                print("memory: not planned (a resources-only config; pass --command to plan a command's config)")
                continue
            print(format_memory(memory))
            if memory.problems():
                where = f" ({st.label})" if st.label else ""
                print(f"rayrlhf plan: {len(memory.problems())} role(s) do not fit their GPU memory{where}; "
                      "the problems above say what would fit", file=sys.stderr)
                code = max(code, 1)
            print()
    finally:
        if connected_here:
            import ray

            ray.shutdown()
    return code


def _format_fleets(st: Stage) -> str:
    """label: the judge's fleet; revise: the policy's fleet, and the judge's when it is another model."""
    cfg = st.cfg
    if st.command == "label":
        return format_fleet(f"label: judge {cfg.judge.name_or_path or '(unset)'}", cfg.resources.rollout,
                            "resources.rollout")
    lines = [format_fleet(f"revise: policy {cfg.policy.name_or_path or '(unset)'}"
                          + ("" if cfg.separate_judge else ", also the judge"), cfg.resources.rollout,
                          "resources.rollout")]
    if cfg.separate_judge:
        lines.append(format_fleet(f"revise: judge {cfg.judge.name_or_path}", cfg.judge_resources, "judge_resources"))
    return "\n".join(lines)


def _placement(plan, args, connected_here) -> int:
    """Today's placement part: bundles only, or checked (and probed) on the cluster."""
    if args.no_cluster:
        print(format_plan(plan))
        print("(--no-cluster: run without it, or with --address, to see which node each bundle goes to)")
        return 0
    if connected_here is None:
        print(format_plan(plan))
        where = f"at {args.address}" if args.address else "(none running; pass --address)"
        print(f"rayrlhf plan: no Ray cluster reachable {where}", file=sys.stderr)
        return 1 if args.address else 0
    return _plan_on_cluster(plan, args)


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
