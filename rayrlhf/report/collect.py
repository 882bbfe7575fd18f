"""Read a pipeline run folder into plain dicts: what the report's plots and tables show.

Nothing here draws or formats. A missing optional file becomes ``None`` or an empty list so
that the report can say what is absent instead of failing.
"""
from __future__ import annotations

import json
import os

import yaml

from rayrlhf.algo.intervals import CI_HIGH, CI_LOW, paired_interval
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


def load_run(run_dir: str) -> dict:
    """Everything the report needs from ``run_dir``, as plain dicts and lists."""
    stages = []
    for name, top in _stage_summaries(run_dir).items():
        folder = os.path.join(run_dir, name)
        summary = {**(_json(os.path.join(folder, "summary.json")) or {}), **top}
        metrics = _jsonl(os.path.join(folder, "metrics.jsonl"))
        stages.append({"name": name, "kind": summary.get("kind"), "seconds": summary.get("seconds"),
                       "summary": summary, "metrics": metrics, "policy": _policy_path(folder),
                       "samples": _samples(os.path.join(folder, "samples.json")),
                       "curve": _json(os.path.join(folder, "best_of_k_curve.json")),
                       "heldout": _json(os.path.join(folder, "heldout.json")),
                       "steps": [r for r in metrics if r.get("step", 0) >= 1],
                       "evals": [r for r in metrics if "eval/gold_reward" in r or "eval/reward" in r]})
    policy_stages = [s for s in stages if s["kind"] in POLICY_KINDS and not s["summary"].get("unfinished")]
    policies = _policies(policy_stages)
    return {"name": os.path.basename(os.path.abspath(run_dir)), "run_dir": os.path.abspath(run_dir),
            "stages": stages, "policies": policies,
            "comparisons": _comparisons(policies),
            "rm_rows": [_rm_row(s) for s in stages if s["kind"] == "rm" and "eval/accuracy" in s["summary"]],
            "curves": {s["name"]: _curve(s["curve"]) for s in stages if s["curve"]}}


def _policy_path(folder: str) -> str | None:
    """The starting policy a stage's resolved config names (rs and ppo stages)."""
    import yaml

    path = os.path.join(folder, "config.yaml")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f) or {}
    return (cfg.get("policy") or {}).get("name_or_path") if isinstance(cfg, dict) else None


def _policies(stages: list[dict]) -> list[dict]:
    """Held-out figures of the SFT policy (the first RL stage's ``before/``) and of each RL
    stage's result, each with its change against SFT under ``delta`` and that change's paired
    interval under ``delta_ci`` (``paired_change``)."""
    if not stages:
        return []
    first = stages[0]["heldout"] or {}
    rows = [_policy_row("SFT policy", stages[0]["summary"], "before", first.get("before"), stages[0]["heldout"])]
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
