"""What a report's folder holds: a pipeline run, one stage's run or no run, each stage's kind,
and the name of the policy a stage started from.

A stage's resolved config.yaml names its starting policy (``policy.name_or_path``, or
``model.name_or_path`` for SFT and reward models); the pipeline writes another stage's export
there as ``<run>/<stage>/export``, which the report names as that stage's policy.
"""
from __future__ import annotations

import os

import yaml

from rayrlhf.utils.fs import read_json

STAGE_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "DONE.json")
# The config section that only one stage kind has, checked in this order (rs also has a reference).
KIND_SECTIONS = (("ppo", "ppo"), ("rs", "rs"), ("reward", "rm"), ("dpo", "dpo"), ("rrhf", "rrhf"),
                 ("n_sft", "toyworld"), ("train", "sft"))


class NoRunError(ValueError):
    """The folder holds neither a pipeline run nor a stage's run."""


def _json(path: str):
    return read_json(path) if os.path.exists(path) else None


def _yaml(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return data if isinstance(data, dict) else {}


def is_pipeline(folder: str) -> bool:
    """``folder`` is a pipeline run: it has pipeline.yaml, or a summary.json of stage summaries."""
    if os.path.exists(os.path.join(folder, "pipeline.yaml")):
        return True
    top = _json(os.path.join(folder, "summary.json"))
    return isinstance(top, dict) and bool(top) and all(isinstance(v, dict) for v in top.values())


def is_stage(folder: str) -> bool:
    """``folder`` is one stage's run: it has any of its config, metrics, summary or DONE marker."""
    return any(os.path.exists(os.path.join(folder, f)) for f in STAGE_FILES)


def no_run(folder: str) -> NoRunError:
    return NoRunError(f"{folder} holds no run: expected a pipeline run (pipeline.yaml, or summary.json of its "
                      f"stages) or a stage's run ({', '.join(STAGE_FILES)})")


def stage_names(pipeline: str | None) -> list[str]:
    """The stages of the pipeline run in ``pipeline`` (none when there is no pipeline)."""
    if pipeline is None:
        return []
    specs = _yaml(os.path.join(pipeline, "pipeline.yaml")).get("stages") or []
    names = [s["name"] for s in specs if isinstance(s, dict) and "name" in s]
    top = _json(os.path.join(pipeline, "summary.json"))
    return names + [n for n in (top if isinstance(top, dict) else {}) if n not in names]


def stage_config(folder: str) -> dict:
    """The stage's resolved config.yaml, or {} when it has none."""
    return _yaml(os.path.join(folder, "config.yaml"))


def stage_kind(folder: str, config: dict) -> str | None:
    """The kind of the stage in ``folder``: its pipeline DONE.json says, else its config's sections."""
    done = _json(os.path.join(folder, "DONE.json"))
    if isinstance(done, dict) and done.get("kind"):
        return done["kind"]
    return next((kind for section, kind in KIND_SECTIONS if section in config), None)


def _path(config: dict, section: str) -> str | None:
    value = (config.get(section) or {}).get("name_or_path") if isinstance(config.get(section), dict) else None
    return value or None


def start_path(config: dict) -> str | None:
    """The policy (or model) a stage started from, as its config names it."""
    return _path(config, "policy") or _path(config, "model")


def reference_path(config: dict) -> str | None:
    """The reference of a stage's KL term: its own ``reference.name_or_path``, else the policy's."""
    return _path(config, "reference") or _path(config, "policy")


def _same_dir(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def policy_name(path: str, pipeline: str | None, names: list[str]) -> str:
    """The name of the policy at ``path``: "the rs stage's policy" when it is the export of stage
    rs of this pipeline (at ``<pipeline>/rs/export``; for a moved run folder, whose config still
    holds the old path, one whose folder has the pipeline's name), else the path's last component."""
    parts = os.path.normpath(path).split(os.sep)
    if pipeline and len(parts) >= 3 and parts[-1] == "export" and parts[-2] in names:
        parent = os.sep.join(parts[:-2]) or os.sep
        moved = not os.path.exists(path) and parts[-3] == os.path.basename(pipeline)
        if parent == "{run}" or _same_dir(parent, pipeline) or moved:
            return f"the {parts[-2]} stage's policy"
    return parts[-1]
