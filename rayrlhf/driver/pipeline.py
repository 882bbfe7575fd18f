"""`rayrlhf pipeline`: stages in order on one Ray cluster, restartable.

Each stage writes into ``<run>/<stage name>/`` and, when it has finished, a ``DONE.json``
marker holding its summary. Running the same command again skips finished stages and resumes
the unfinished one from its last checkpoint. A stage names its inputs explicitly: the string
``{sft}`` in a stage's config is replaced by the folder of the stage named ``sft``, ``{run}``
by the pipeline's run folder.
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from rayrlhf.config.loader import ConfigError, load_config
from rayrlhf.config.schema import RunSection
from rayrlhf.utils.fs import atomic_write_json, read_json

_REF = re.compile(r"\{([A-Za-z0-9_\-]+)\}")


@dataclass
class StageSpec:
    name: str = ""
    """Stage name: its folder under the run and the key other stages reference as {name}."""
    kind: Literal["toyworld", "sft", "rm", "dpo", "rs", "ppo"] = "sft"
    """What the stage runs."""
    config: dict[str, Any] = field(default_factory=dict)
    """The stage's own configuration: the same tree its stand-alone command takes."""

    def validate(self) -> list[str]:
        return [] if self.name else ["name: required"]


@dataclass
class RaySection:
    num_cpus: int | None = None
    """CPUs of the local cluster started when no cluster is reachable (default: all)."""


@dataclass
class PipelineConfig:
    """`rayrlhf pipeline`: a list of stages run in order."""

    run: RunSection = field(default_factory=lambda: RunSection(name="pipeline"))
    stages: list[StageSpec] = field(default_factory=list)
    ray: RaySection = field(default_factory=RaySection)

    def validate(self) -> list[str]:
        out, seen = [], set()
        if not self.stages:
            out.append("stages: at least one stage is required")
        for i, s in enumerate(self.stages):
            if s.name in seen:
                out.append(f"stages[{i}].name: {s.name!r} is used twice")
            for ref in _refs(s.config):
                if ref != "run" and ref not in seen:
                    out.append(f"stages[{i}] ({s.name}): references {{{ref}}}, which is not an earlier stage")
            seen.add(s.name)
        return out


def _refs(obj) -> set[str]:
    if isinstance(obj, str):
        return set(_REF.findall(obj))
    if isinstance(obj, dict):
        return set().union(*(_refs(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_refs(v) for v in obj)) if obj else set()
    return set()


def _substitute(obj, folders: dict[str, str]):
    if isinstance(obj, str):
        return _REF.sub(lambda m: folders.get(m.group(1), m.group(0)), obj)
    if isinstance(obj, dict):
        return {k: _substitute(v, folders) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, folders) for v in obj]
    return obj


def stage_config(spec: StageSpec, run_dir: str, seed: int, folders: dict[str, str], wandb_project: str | None = None):
    """The typed config of one stage, with references resolved and its folder fixed."""
    from rayrlhf.driver.toyworld_stage import ToyworldConfig
    from rayrlhf.driver.train_stage import STAGES

    data = _substitute(dict(spec.config), folders)
    if spec.kind == "toyworld":
        data.setdefault("seed", seed)
        data["out"] = os.path.join(run_dir, spec.name)
        return load_config(ToyworldConfig, data=data)
    run = dict(data.get("run") or {})
    run.update(output_dir=run_dir, name=spec.name)
    run.setdefault("seed", seed)
    if wandb_project:
        run.setdefault("wandb_project", wandb_project)
    data["run"] = run
    if spec.kind == "ppo":
        from rayrlhf.config.ppo import PPOConfig

        return load_config(PPOConfig, data=data)
    if spec.kind == "rs":
        from rayrlhf.config.rs import RSConfig

        return load_config(RSConfig, data=data)
    return load_config(STAGES[spec.kind], data=data)


def load_pipeline(path: str, overrides: list[str]) -> tuple[PipelineConfig, str, list]:
    """Load and check the pipeline and every stage's config before anything runs."""
    cfg = load_config(PipelineConfig, path, overrides)
    run_dir = os.path.abspath(os.path.join(cfg.run.output_dir, cfg.run.name or "pipeline"))
    folders = {"run": run_dir, **{s.name: os.path.join(run_dir, s.name) for s in cfg.stages}}
    problems, configs = [], []
    for i, spec in enumerate(cfg.stages):
        try:
            configs.append(stage_config(spec, run_dir, cfg.run.seed, folders, cfg.run.wandb_project))
        except ConfigError as e:
            problems.extend(f"stages[{i}] ({spec.name}).config.{p}" for p in e.problems)
    if problems:
        raise ConfigError(problems, source=path)
    return cfg, run_dir, configs


def check_pipeline_memory(cfg, run_dir: str, configs: list) -> None:
    """Every GPU stage's memory plan, before the first stage starts: a PPO stage that cannot fit
    its GPUs stops the pipeline now, not after hours of SFT (raises ConfigError naming it)."""
    from rayrlhf.config.loader import ConfigError
    from rayrlhf.engine.memory import check_memory, pipeline_model_configs

    known = pipeline_model_configs(cfg, run_dir, configs)
    problems = []
    for spec, stage_cfg in zip(cfg.stages, configs):
        if spec.kind in ("sft", "rm", "dpo", "ppo", "rs"):
            try:
                check_memory(spec.kind, stage_cfg, known)
            except ConfigError as e:
                problems += [f"stages.{spec.name}: {p}" for p in e.problems]
    if problems:
        raise ConfigError(problems)


def run_pipeline(path: str, overrides: list[str] | None = None, out=sys.stdout) -> dict:
    from rayrlhf.config import save_config
    from rayrlhf.utils.ray_init import ensure_ray

    cfg, run_dir, configs = load_pipeline(path, list(overrides or []))
    check_pipeline_memory(cfg, run_dir, configs)
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "pipeline.yaml"))
    results = {}
    for spec, stage_cfg in zip(cfg.stages, configs):
        folder = os.path.join(run_dir, spec.name)
        marker = os.path.join(folder, "DONE.json")
        if os.path.exists(marker):
            results[spec.name] = read_json(marker)
            print(f"[pipeline] {spec.name}: finished earlier, skipped", file=out, flush=True)
            continue
        print(f"[pipeline] {spec.name} ({spec.kind}) -> {folder}", file=out, flush=True)
        t0 = time.perf_counter()
        if spec.kind == "toyworld":
            from rayrlhf.driver.toyworld_stage import run_toyworld

            summary = run_toyworld(stage_cfg)
        else:
            from rayrlhf.driver.train_stage import print_summary, run_train_stage

            ensure_ray(num_cpus=cfg.ray.num_cpus)
            if spec.kind == "ppo":
                from rayrlhf.driver.ppo_stage import run_ppo

                summary = run_ppo(stage_cfg, resume=os.path.isdir(folder))
            elif spec.kind == "rs":
                from rayrlhf.driver.rs_stage import run_rs

                summary = run_rs(stage_cfg, resume=os.path.isdir(folder))
            else:
                summary = run_train_stage(spec.kind, stage_cfg, resume=os.path.isdir(folder))
            print_summary(spec.name, summary, out=out)
        summary = dict(summary, kind=spec.kind, seconds=round(time.perf_counter() - t0, 1))
        atomic_write_json(marker, summary)
        results[spec.name] = summary
    atomic_write_json(os.path.join(run_dir, "summary.json"), results)
    print_report(results, out)
    from rayrlhf.report import write_report

    print(f"[pipeline] report: {write_report(run_dir)}", file=out, flush=True)
    return results


def print_report(results: dict, out=sys.stdout) -> None:
    """The figures a user looks for first, one line each."""
    print("\n== rayrlhf pipeline results ==", file=out)
    for name, s in results.items():
        kind = s.get("kind")
        if kind == "sft":
            print(f"{name:>12}: held-out perplexity {s.get('eval/ppl', float('nan')):.3f} "
                  f"(loss {s.get('eval/loss', float('nan')):.3f}) in {s.get('seconds')} s", file=out)
        elif kind == "rm":
            levels = ", ".join(f"{k.split('@', 1)[1].replace('_', ' ')} {v:.1%}" for k, v in s.items()
                               if k.startswith("eval/accuracy@"))
            print(f"{name:>12}: held-out accuracy {s.get('eval/accuracy', float('nan')):.1%} "
                  f"(vs gold order {s.get('eval/gold_accuracy', float('nan')):.1%}, "
                  f"length baseline {s.get('eval/length_baseline_accuracy', float('nan')):.1%}); "
                  f"per margin level: {levels}", file=out)
        elif kind == "rs":
            hist = s.get("rounds_history", {})
            kept = " -> ".join(f"{v:.3f}" for v in hist.get("rs/kept_reward", []))
            gold = " -> ".join(f"{v:.3f}" for v in hist.get("rs/kept_gold_reward", []))
            print(f"{name:>12}: {s.get('rounds')} rounds of best-of-{s.get('k')}; kept samples' reward by round "
                  f"{kept} (gold {gold}); held-out gold reward {s.get('before/gold_reward', float('nan')):.3f} -> "
                  f"{s.get('eval/gold_reward', float('nan')):.3f}", file=out)
        elif kind == "ppo":
            gains = ", ".join(f"{k.split('/', 1)[1]} {s.get('before/' + k.split('/', 1)[1], float('nan')):.3f} -> "
                              f"{s[k]:.3f}" for k in sorted(s) if k.startswith("eval/gold") or k == "eval/reward")
            print(f"{name:>12}: held-out {gains}; KL to the reference per response "
                  f"{s.get('last/kl/per_response', float('nan')):.3f} after {s.get('steps')} iterations", file=out)
    out.flush()
