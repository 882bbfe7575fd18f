"""`rayrlhf pipeline`: stages in order on one Ray cluster, restartable.

Each stage writes into ``<run>/<stage name>/``: ``STAGE.json`` when it starts (its resolved
config and that config's hash) and, when it has finished, a ``DONE.json`` marker holding its
summary. Running the same command again skips finished stages and resumes the unfinished one
from its last checkpoint, but only when the stage's resolved config is the one it ran with: a
stage whose config changed stops the pipeline before any work, naming the changed keys and
the two ways on (``--rerun STAGE``, which runs that stage and every later one anew, keeping the
old folders as ``<stage>.replaced-N``; or a new ``run.name``). ``--from STAGE`` skips the stages
before STAGE (they must have finished) and runs it and the later ones by the same rules;
``--only STAGE`` runs just STAGE (the earlier ones must have finished). On the command line,
``stages.<name>.<key>=VALUE`` sets ``<key>`` in the config of the stage called ``<name>``. Keys that cannot change a
result (``NOT_RESULTS``: logging, timeouts, restarts, checkpoints kept) are left out of the
hash. A stage names its inputs explicitly: the string ``{sft}`` in a stage's config is
replaced by the folder of the stage named ``sft``, ``{run}`` by the pipeline's run folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
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
    kind: Literal["toyworld", "label", "revise", "sft", "rm", "dpo", "rrhf", "rs", "ppo"] = "sft"
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

    NAMED_LISTS = {"stages": "config"}
    """``stages.<name>.<key>=VALUE`` on the command line sets ``<key>`` in that stage's config."""

    run: RunSection = field(default_factory=lambda: RunSection(name="pipeline"))
    stages: list[StageSpec] = field(default_factory=list)
    """The stages, run in this order; on the command line stages.<name>.<key>=VALUE sets a key of one."""
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


def stage_config(spec: StageSpec, run_dir: str, seed: int, folders: dict[str, str], wandb_project: str | None = None,
                 wandb_entity: str | None = None, wandb_group: str | None = None):
    """The typed config of one stage, with references resolved and its folder fixed; the
    pipeline's W&B project and entity are its defaults, and its W&B group is the pipeline's
    (``wandb_group``, by default the pipeline's run folder name)."""
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
    if wandb_entity:
        run.setdefault("wandb_entity", wandb_entity)
    run.setdefault("wandb_group", wandb_group or os.path.basename(run_dir))
    data["run"] = run
    if spec.kind == "ppo":
        from rayrlhf.config.ppo import PPOConfig

        return load_config(PPOConfig, data=data)
    if spec.kind == "rs":
        from rayrlhf.config.rs import RSConfig

        return load_config(RSConfig, data=data)
    if spec.kind == "label":
        from rayrlhf.config.label import LabelConfig

        return load_config(LabelConfig, data=data)
    if spec.kind == "revise":
        from rayrlhf.config.revise import ReviseConfig

        return load_config(ReviseConfig, data=data)
    return load_config(STAGES[spec.kind], data=data)


def load_pipeline(path: str, overrides: list[str]) -> tuple[PipelineConfig, str, list]:
    """Load and check the pipeline and every stage's config before anything runs."""
    return resolve_pipeline(load_config(PipelineConfig, path, overrides), path)


def resolve_pipeline(cfg: PipelineConfig, source: str | None = None) -> tuple[PipelineConfig, str, list]:
    """The run folder and every stage's typed config (references resolved); every problem of
    every stage in one ConfigError."""
    run_dir = os.path.abspath(os.path.join(cfg.run.output_dir, cfg.run.name or "pipeline"))
    folders = {"run": run_dir, **{s.name: os.path.join(run_dir, s.name) for s in cfg.stages}}
    problems, configs = [], []
    for i, spec in enumerate(cfg.stages):
        try:
            configs.append(stage_config(spec, run_dir, cfg.run.seed, folders, cfg.run.wandb_project,
                                        cfg.run.wandb_entity, cfg.run.wandb_group))
        except ConfigError as e:
            problems.extend(f"stages[{i}] ({spec.name}).config.{p}" for p in e.problems)
    if problems:
        raise ConfigError(problems, source=source)
    return cfg, run_dir, configs


def check_pipeline_memory(cfg, run_dir: str, configs: list) -> None:
    """Every GPU stage's memory plan, before the first stage starts: a PPO stage that cannot fit
    its GPUs stops the pipeline now, not after hours of SFT (raises ConfigError naming it)."""
    from rayrlhf.config.loader import ConfigError
    from rayrlhf.engine.memory import check_memory, pipeline_model_configs

    known = pipeline_model_configs(cfg, run_dir, configs)
    problems = []
    for spec, stage_cfg in zip(cfg.stages, configs):
        if spec.kind not in ("toyworld", "label", "revise"):
            try:
                check_memory(spec.kind, stage_cfg, known)
            except ConfigError as e:
                problems += [f"stages.{spec.name}: {p}" for p in e.problems]
    if problems:
        raise ConfigError(problems)


NOT_RESULTS = frozenset({
    "run.wandb_project", "run.wandb_entity", "run.wandb_group", "train.log_every", "ppo.call_timeout_s", "rs.call_timeout_s",
    "ppo.max_worker_restarts", "rs.max_worker_restarts", "ppo.max_bad_steps", "ppo.keep_checkpoints",
})
"""Dotted keys of a stage's config that cannot change what it computes; an edit to them lets a
finished stage stay finished and an unfinished one resume."""


def _leaves(obj, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are leaves."""
    if isinstance(obj, dict) and obj:
        out = {}
        for k, v in obj.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _relative_to_run(value, run_dir: str):
    """Paths inside the run folder written as ``{run}/...``, so a run folder that is moved or
    copied elsewhere (another disk, another machine) keeps its finished stages."""
    if isinstance(value, str):
        if value == run_dir:
            return "{run}"
        if value.startswith(run_dir + os.sep):
            return "{run}" + value[len(run_dir):]
        return value
    if isinstance(value, list):
        return [_relative_to_run(v, run_dir) for v in value]
    return value


def stage_fingerprint(stage_cfg, run_dir: str | None = None) -> dict[str, Any]:
    """The stage's resolved config as the dotted keys that decide its results; with ``run_dir``,
    paths inside it are written relative to it (``{run}/sft/export``)."""
    from rayrlhf.config.loader import to_dict

    leaves = {k: v for k, v in sorted(_leaves(to_dict(stage_cfg)).items()) if k not in NOT_RESULTS}
    if run_dir:
        root = os.path.normpath(os.path.abspath(run_dir))
        leaves = {k: _relative_to_run(v, root) for k, v in leaves.items()}
    return leaves


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def changed_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every dotted key that differs (or is only on one side)."""
    out = []
    for k in sorted(set(before) | set(after)):
        if before.get(k, "(unset)") != after.get(k, "(unset)"):
            out.append(f"{k}: {before.get(k, '(unset)')!r} -> {after.get(k, '(unset)')!r}")
    return out


def real_changes(before: dict[str, Any], after: dict[str, Any], stage_cfg) -> list[str]:
    """``changed_keys``, less the keys a newer rayrlhf added since the stage ran that are at their
    defaults: a new key's default is the behaviour from before it existed, so an upgrade alone
    does not make finished stages look edited."""
    defaults = stage_fingerprint(type(stage_cfg)()) if dataclasses.is_dataclass(stage_cfg) else {}
    added_at_default = {k for k in after if k not in before and k in defaults and after[k] == defaults[k]}
    return changed_keys(before, {k: v for k, v in after.items() if k not in added_at_default})


@dataclass
class StagePlan:
    name: str
    action: Literal["skip", "resume", "run", "rerun", "leave"]
    """skip: finished with this config; resume: started with this config; run: not started;
    rerun: asked for with --rerun (or after a stage that is), the old folder is kept aside;
    leave: after the --only stage, not run now (with --rerun, its old folder is set aside)."""
    fingerprint: dict[str, Any]


def _stage_flags(names: list[str], rerun: str | None, only: str | None, start: str | None) -> list[str]:
    problems = []
    for flag, value in (("--rerun", rerun), ("--only", only), ("--from", start)):
        if value is not None and value not in names:
            problems.append(f"{flag} {value}: no such stage (stages: {', '.join(names)})")
    if problems:
        return problems
    if only is not None and start is not None:
        return [f"--only {only} and --from {start}: give one of them"]
    if only is not None and rerun is not None and rerun != only:
        return [f"--only {only} with --rerun {rerun}: with --only, --rerun can name only that stage "
                f"(--only {only} --rerun {only})"]
    if start is not None and rerun is not None and names.index(rerun) < names.index(start):
        return [f"--rerun {rerun} is before --from {start}: stages before --from are not run; "
                f"use --from {rerun}, or drop --from"]
    return []


def plan_stages(cfg: PipelineConfig, run_dir: str, configs: list, rerun: str | None = None,
                only: str | None = None, start: str | None = None) -> list[StagePlan]:
    """What each stage will do, decided before any work: raises ConfigError when a stage folder
    holds the work of another config, naming each changed key and the choices.

    ``start`` (--from) runs that stage and the later ones as usual; ``only`` (--only) runs just
    that stage. Either way every earlier stage must have finished (its DONE.json), with the config
    it finished with, else a ConfigError names the first one that has not. With --only S
    --rerun S, S is run anew and the folders of later stages are set aside (they ran on the old
    S), so the next run runs them anew too."""
    names = [s.name for s in cfg.stages]
    problems = _stage_flags(names, rerun, only, start)
    if problems:
        raise ConfigError(problems)
    target = only if only is not None else start
    first_run = names.index(target) if target is not None else 0
    flag = f"--only {only}" if only is not None else f"--from {start}"
    plans, problems, rerunning = [], [], False
    for i, (spec, stage_cfg) in enumerate(zip(cfg.stages, configs)):
        folder = os.path.join(run_dir, spec.name)
        fp = stage_fingerprint(stage_cfg, run_dir)
        if only is not None and i > first_run:
            plans.append(StagePlan(spec.name, "leave", fp))
            continue
        if i < first_run and not os.path.exists(os.path.join(folder, "DONE.json")):
            raise ConfigError([
                f"{flag}: stage {spec.name} has not finished ({'started, no DONE.json' if os.path.exists(folder) else 'not started'}); "
                f"every stage before {target} must have finished: run without {flag.split()[0]}, or with "
                f"--from {spec.name}"])
        rerunning = rerunning or spec.name == rerun
        if rerunning:
            plans.append(StagePlan(spec.name, "rerun" if os.path.exists(folder) else "run", fp))
            continue
        if not os.path.exists(folder):
            plans.append(StagePlan(spec.name, "run", fp))
            continue
        done = os.path.exists(os.path.join(folder, "DONE.json"))
        stage_file = os.path.join(folder, "STAGE.json")
        if os.path.exists(stage_file):
            before = read_json(stage_file)
            changes = [] if before.get("config_hash") == fingerprint_hash(fp) else real_changes(
                before.get("config", {}), fp, stage_cfg)
            if changes:
                problems.append(
                    f"stages.{spec.name}: {'finished' if done else 'started'} with another config; changed: "
                    + "; ".join(changes[:20]) + (f"; and {len(changes) - 20} more" if len(changes) > 20 else ""))
        plans.append(StagePlan(spec.name, "skip" if done else "resume", fp))
    if problems:
        first = next(p.split(":", 1)[0].split(".", 1)[1] for p in problems)
        raise ConfigError(problems + [
            f"to run with the new config, pass --rerun {first} (reruns it and every later stage; the old "
            f"folders are kept as <stage>.replaced-N), or set a new run.name to start a separate run"])
    return plans


def _record_stage(folder: str, kind: str, fingerprint: dict[str, Any]) -> None:
    """STAGE.json: the config a stage (started to) run with, written before its first work."""
    path = os.path.join(folder, "STAGE.json")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        atomic_write_json(path, {"kind": kind, "config_hash": fingerprint_hash(fingerprint), "config": fingerprint})


def _set_aside(folder: str) -> str:
    n = 1
    while os.path.exists(f"{folder}.replaced-{n}"):
        n += 1
    os.rename(folder, f"{folder}.replaced-{n}")
    return f"{folder}.replaced-{n}"


def run_pipeline(path: str, overrides: list[str] | None = None, out=sys.stdout, rerun: str | None = None,
                 only: str | None = None, start: str | None = None) -> dict:
    return run_stages(*load_pipeline(path, list(overrides or [])), out=out, rerun=rerun, only=only, start=start)


def run_stages(cfg: PipelineConfig, run_dir: str, configs: list, out=sys.stdout, rerun: str | None = None,
               only: str | None = None, start: str | None = None) -> dict:
    """Run a resolved pipeline (``resolve_pipeline``): plan, check memory, run or skip each stage,
    then the summary and the report. ``only`` / ``start``: --only / --from (``plan_stages``)."""
    from rayrlhf.config import save_config
    from rayrlhf.utils.ray_init import PIPELINE_FILE, ensure_ray

    plans = plan_stages(cfg, run_dir, configs, rerun, only=only, start=start)
    check_pipeline_memory(cfg, run_dir, configs)
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, PIPELINE_FILE))  # its stages' runs go by <pipeline>/<stage> (run_name_of)
    results = {}
    for spec, stage_cfg, plan in zip(cfg.stages, configs, plans):
        folder = os.path.join(run_dir, spec.name)
        marker = os.path.join(folder, "DONE.json")
        if plan.action == "leave":
            note = ""
            if rerun is not None and os.path.exists(folder):
                note = f"; it ran on the old {rerun}, so its folder is now {_set_aside(folder)}"
            print(f"[pipeline] {spec.name}: not run (--only {only}){note}", file=out, flush=True)
            if os.path.exists(marker):  # finished earlier: its summary stays in the run's summary
                results[spec.name] = read_json(marker)
            continue
        if plan.action == "skip":
            results[spec.name] = read_json(marker)
            print(f"[pipeline] {spec.name}: finished earlier with this config, skipped", file=out, flush=True)
            continue
        if plan.action == "rerun":
            print(f"[pipeline] {spec.name}: rerun; the earlier folder is now {_set_aside(folder)}",
                  file=out, flush=True)
        print(f"[pipeline] {spec.name} ({spec.kind}) -> {folder}", file=out, flush=True)
        _record_stage(folder, spec.kind, plan.fingerprint)
        t0 = time.perf_counter()
        if spec.kind == "toyworld":
            from rayrlhf.driver.toyworld_stage import run_toyworld

            summary = run_toyworld(stage_cfg)
        else:
            from rayrlhf.driver.train_stage import print_summary, run_train_stage

            ensure_ray(num_cpus=cfg.ray.num_cpus)
            if spec.kind == "ppo":
                from rayrlhf.driver.ppo_stage import run_ppo

                summary = run_ppo(stage_cfg, resume=plan.action == "resume")
            elif spec.kind == "rs":
                from rayrlhf.driver.rs_stage import run_rs

                summary = run_rs(stage_cfg, resume=plan.action == "resume")
            elif spec.kind == "label":
                from rayrlhf.feedback.label import run_label

                summary = run_label(stage_cfg, resume=plan.action == "resume")
            elif spec.kind == "revise":
                from rayrlhf.feedback.revise_run import run_revise

                summary = run_revise(stage_cfg, resume=plan.action == "resume")
            else:
                summary = run_train_stage(spec.kind, stage_cfg, resume=plan.action == "resume")
            print_summary(spec.name, summary, out=out)
        summary = dict(summary, kind=spec.kind, seconds=round(time.perf_counter() - t0, 1))
        _record_stage(folder, spec.kind, plan.fingerprint)  # a stage that writes its folder whole replaced it
        atomic_write_json(marker, summary)
        results[spec.name] = summary
    atomic_write_json(os.path.join(run_dir, "summary.json"), results)
    from rayrlhf.driver.pipeline_report import print_report

    print_report(results, out)
    from rayrlhf.report import write_report

    print(f"[pipeline] report: {write_report(run_dir)}", file=out, flush=True)
    return results
