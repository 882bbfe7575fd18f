"""Read a run folder, a pipeline's or one stage's, into plain dicts: what the report's plots
and tables show.

Nothing here draws or formats. A missing optional file becomes ``None`` or an empty list so
that the report can say what is absent instead of failing.
"""
from __future__ import annotations

import json
import os

import yaml

from rayrlhf.algo.intervals import CI_HIGH, CI_LOW, paired_interval
from rayrlhf.report import folders
from rayrlhf.utils.fs import read_json

# Llama 2's margin levels, most to least separated (Table 8's column order).
LEVELS = ("significantly_better", "better", "slightly_better", "negligibly_better")
# Held-out evaluation figures of a policy, as logged under eval/, before/ and gain/.
POLICY_KEYS = ("gold_reward", "gold_helpfulness", "gold_safety", "gold_helpfulness@safe", "gold_safety@unsafe",
               "reward", "response_length")
POLICY_KINDS = ("rs", "ppo")


def _json(path: str):
    return read_json(path) if os.path.exists(path) else None


def _jsonl(path: str) -> list[dict]:
    rows = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # blank, or the last line of a run that stopped mid-write
    return rows


def _samples(path: str) -> dict:
    data = _json(path)
    if isinstance(data, list):  # older PPO runs saved only the final policy's samples
        data = {"after": data}
    data = data or {}
    return {"before": list(data.get("before") or []), "after": list(data.get("after") or [])}


def _stage_summaries(run_dir: str) -> dict:
    """{stage: summary} in stage order: the run's summary.json, or, for a run that stopped
    early, the DONE.json markers of the stages in pipeline.yaml that finished."""
    top = _json(os.path.join(run_dir, "summary.json"))
    specs = []
    if os.path.exists(os.path.join(run_dir, "pipeline.yaml")):
        with open(os.path.join(run_dir, "pipeline.yaml"), encoding="utf-8") as f:
            specs = (yaml.safe_load(f) or {}).get("stages", [])
    if top is None:
        return {s["name"]: _json(os.path.join(run_dir, s["name"], "DONE.json"))
                or {"kind": s.get("kind"), "unfinished": True} for s in specs}
    order = [s["name"] for s in specs if s["name"] in top]  # summary.json's keys are sorted
    return {name: top[name] for name in order + [n for n in top if n not in order]}


def _policy_row(label: str, summary: dict, prefix: str, per_prompt: dict | None, heldout: dict | None) -> dict:
    """A policy's held-out figures, their intervals ``ci`` (None where the run has none), and
    the per-prompt figures and evaluation settings that paired comparisons need."""
    return {"label": label, **{k: summary.get(f"{prefix}/{k}") for k in POLICY_KEYS},
            "ci": {k: interval_of(summary, f"{prefix}/{k}") for k in POLICY_KEYS},
            "per_prompt": per_prompt or {}, "heldout": heldout}


def interval_of(row: dict, key: str) -> tuple[float, float] | None:
    """(low, high) of figure ``key`` in a summary or metrics row, None when it has no interval."""
    low, high = row.get(key + CI_LOW), row.get(key + CI_HIGH)
    return (low, high) if isinstance(low, (int, float)) and isinstance(high, (int, float)) else None


def _folders(run_dir: str) -> tuple[dict, str | None]:
    """({stage: (folder, summary)} in stage order, the pipeline folder or None) of a pipeline
    run or of one stage's run (a stage folder inside a pipeline run belongs to that pipeline)."""
    if folders.is_pipeline(run_dir):
        return {n: (os.path.join(run_dir, n), top) for n, top in _stage_summaries(run_dir).items()}, run_dir
    if not folders.is_stage(run_dir):
        raise folders.no_run(run_dir)
    parent = os.path.dirname(run_dir)
    top = {**(_json(os.path.join(run_dir, "DONE.json")) or {}),
           "kind": folders.stage_kind(run_dir, folders.stage_config(run_dir))}
    if not any(os.path.exists(os.path.join(run_dir, f)) for f in ("summary.json", "DONE.json")):
        top["unfinished"] = True
    return {os.path.basename(run_dir): (run_dir, top)}, parent if folders.is_pipeline(parent) else None


def _stage(name: str, folder: str, top: dict, pipeline: str | None, names: list[str]) -> dict:
    """One stage's figures, files and the names of the policies it started from and kept close to."""
    summary = {**(_json(os.path.join(folder, "summary.json")) or {}), **top}
    metrics = _jsonl(os.path.join(folder, "metrics.jsonl"))
    cfg = folders.stage_config(folder)
    start, ref = folders.start_path(cfg), folders.reference_path(cfg)
    return {"name": name, "kind": summary.get("kind"), "seconds": summary.get("seconds"),
            "summary": summary, "metrics": metrics, "policy": start,
            "start": folders.policy_name(start, pipeline, names) if start else f"the policy {name} started from",
            "reference": folders.policy_name(ref, pipeline, names) if ref else None,
            "samples": _samples(os.path.join(folder, "samples.json")),
            "curve": _json(os.path.join(folder, "best_of_k_curve.json")),
            "heldout": _json(os.path.join(folder, "heldout.json")),
            "steps": [r for r in metrics if r.get("step", 0) >= 1],
            "evals": [r for r in metrics if "eval/gold_reward" in r or "eval/reward" in r]}


def load_run(run_dir: str) -> dict:
    """Everything the report needs from ``run_dir`` (a pipeline run or one stage's run), as
    plain dicts and lists; raises ``folders.NoRunError`` when it holds neither."""
    run_dir = os.path.abspath(run_dir)
    found, pipeline = _folders(run_dir)
    names = folders.stage_names(pipeline)
    stages = [_stage(name, folder, top, pipeline, names) for name, (folder, top) in found.items()]
    policy_stages = [s for s in stages if s["kind"] in POLICY_KINDS and not s["summary"].get("unfinished")]
    policies = _policies(policy_stages)
    return {"name": os.path.basename(run_dir), "run_dir": run_dir, "is_pipeline": pipeline == run_dir,
            "stages": stages, "policies": policies,
            "comparisons": _comparisons(policies),
            "rm_rows": [_rm_row(s) for s in stages if s["kind"] == "rm" and "eval/accuracy" in s["summary"]],
            "curves": {s["name"]: _curve(s["curve"]) for s in stages if s["curve"]}}


def _policies(stages: list[dict]) -> list[dict]:
    """Held-out figures of the policy the first RL stage started from (its ``before/``) and of
    each RL stage's result, each with its change against that first policy under ``delta`` and
    that change's paired interval under ``delta_ci`` (``paired_change``)."""
    if not stages:
        return []
    first = stages[0]["heldout"] or {}
    rows = [_policy_row(stages[0]["start"], stages[0]["summary"], "before", first.get("before"),
                        stages[0]["heldout"])]
    rows += [_policy_row(f"after {s['name']}" + ("" if s["name"] == s["kind"] else f" ({s['kind']})"),
                         s["summary"], "eval", (s["heldout"] or {}).get("after"), s["heldout"]) for s in stages]
    for row in rows:
        row["delta"] = {k: (row[k] - rows[0][k] if row[k] is not None and rows[0][k] is not None else None)
                        for k in POLICY_KEYS}
        row["delta_ci"] = {k: paired_change(row, rows[0], k) for k in POLICY_KEYS} if row is not rows[0] else {}
    return rows


def paired_change(row: dict, base: dict, key: str) -> tuple[float, float, float] | None:
    """(mean, low, high) of ``row`` minus ``base`` in figure ``key``, prompt by prompt, with the
    paired bootstrap interval and the later evaluation's settings; None unless both policies
    were evaluated on the same held-out prompts (the same digest) and kept per-prompt figures."""
    a, b = row["per_prompt"].get(key), base["per_prompt"].get(key)
    ha, hb = row["heldout"] or {}, base["heldout"] or {}
    if a is None or b is None or ha.get("prompt_digest") != hb.get("prompt_digest") or len(a) != len(b):
        return None
    return paired_interval(a, b, ha["interval"], ha["bootstrap"], ha["seed"])


def _comparisons(rows: list[dict]) -> list[dict]:
    """Each policy against the one before it (an RL stage against the policy it started from,
    as far as the order of stages goes), prompt by prompt: ``change`` holds ``paired_change``."""
    return [{"label": f"{b['label']} against {a['label']}", "after": b["label"], "before": a["label"],
             "change": {k: paired_change(b, a, k) for k in POLICY_KEYS}} for a, b in zip(rows, rows[1:])]


def _rm_row(stage: dict) -> dict:
    s = stage["summary"]
    return {"name": stage["name"], "overall": s.get("eval/accuracy"), "gold": s.get("eval/gold_accuracy"),
            "length": s.get("eval/length_baseline_accuracy"), "pairs": s.get("eval/pairs"),
            "levels": {lv: (s.get(f"eval/accuracy@{lv}"), s.get(f"eval/pairs@{lv}")) for lv in LEVELS}}


def _curve(curve: dict) -> dict:
    """The best-of-K curve plus where its gold reward peaks (Gao et al. 2022: past the peak,
    picking by the proxy makes the gold reward worse: over-optimisation)."""
    gold = (curve.get("gold") or {}).get("reward") or []
    peak = max(range(len(gold)), key=gold.__getitem__) if gold else None
    return {**curve, "gold_peak_index": peak}
