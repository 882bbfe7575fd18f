"""Scoring samples with every reward source, and the held-out evaluation both loops share.

The combination of sources is the pure function ``rayrlhf.algo.rewards.combine_rewards``;
gold rewards (toyworld's exact helpfulness and safety) are computed beside it for reporting
and never feed back into training. Every held-out figure is a mean over prompts of each
prompt's mean over its samples and comes with a percentile-bootstrap interval over prompts
(``rayrlhf.algo.intervals``); a gain's interval resamples the per-prompt differences.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from rayrlhf.algo.hacking import agreement_metrics
from rayrlhf.algo.intervals import interval, interval_keys, paired_interval, per_prompt_means
from rayrlhf.algo.rewards import combine_rewards
from rayrlhf.config.ppo import EvalSection
from rayrlhf.utils.fs import atomic_write_json, read_json

HELDOUT_FILE = "heldout.json"


@dataclass
class Scored:
    combined: torch.Tensor  # (B,) the reward the algorithm optimises
    raw: dict[str, torch.Tensor]  # source -> (B,) raw score of each source
    gold: dict[str, list[float]]  # gold name -> (B,) gold reward of each sample

    def metrics(self, agree_with: list[str] = ()) -> dict:
        """Means over the batch: reward/<source>, rollout/reward_*, gold/<name>; with
        ``agree_with``, the proxy's rank agreement with those sources over the batch
        (``hacking/agreement``, ``rayrlhf.algo.hacking.agreement_metrics``)."""
        out = {f"reward/{k}": float(v.mean()) for k, v in self.raw.items()}
        out["rollout/reward_mean"] = float(self.combined.mean())
        out["rollout/reward_std"] = float(self.combined.std()) if len(self.combined) > 1 else 0.0
        out.update({f"gold/{k}": float(np.mean(v)) for k, v in self.gold.items()})
        if agree_with:
            out.update(agreement_metrics(self.combined.tolist(), {k: v.tolist() for k, v in self.raw.items()},
                                         list(agree_with)))
        return out


def resolve_gold(gold: dict[str, str]) -> dict:
    from rayrlhf.tasks import resolve

    return {name: resolve(path) for name, path in gold.items()}


def score_samples(roles, combine, gold_fns: dict, prompts: list, texts: list[str], meta: list[dict],
                  timeout: float) -> Scored:
    """Every reward source's raw scores, their combination by ``combine`` and the gold rewards."""
    from rayrlhf.actors.reward import last_user_text

    raw = roles.score_all(prompts, texts, meta, timeout)
    unsafe = torch.tensor([bool(m.get(combine.unsafe_field, False)) for m in meta])
    combined = combine_rewards(
        raw, method=combine.method,
        weights=combine.weights or ({k: 1.0 for k in raw} if combine.method == "linear" else {}),
        helpful_key=combine.helpful_key, safety_key=combine.safety_key, unsafe=unsafe,
        threshold=combine.threshold, transform=combine.transform, whiten=combine.whiten)
    questions = [last_user_text(p) for p in prompts]
    gold = {name: [float(fn(q, r)) for q, r in zip(questions, texts)] for name, fn in gold_fns.items()}
    return Scored(combined, raw, gold)


def evaluate(roles, combine, gold_fns: dict, eval_prompts: list, eval_ids: list[list[int]], timeout: float,
             ev: EvalSection | None = None, run_dir: str | None = None, n_examples: int = 8) -> tuple[dict, list[dict]]:
    """Proxy and gold rewards of the current policy on the held-out prompts, each with its
    bootstrap interval over prompts (``eval_figures``): ``ev.samples_per_prompt`` samples per
    prompt, the same seeds every time. With ``run_dir``, the per-prompt figures are also kept in
    heldout.json (``record_heldout``), from which a gain's paired interval is computed. Returns
    the figures and the first sample of each of the first ``n_examples`` prompts."""
    ev = ev or EvalSection()
    if not eval_prompts:
        return {}, []
    n, P = ev.samples_per_prompt, len(eval_prompts)
    parts = roles.eval_generate(eval_ids, n=n)
    samples = [s for part in parts for s in part]
    if len(samples) != P * n:
        raise RuntimeError(f"evaluation: the rollout fleet returned {len(samples)} samples for {P} prompts x {n}")
    owners = [eval_prompts[i // n] for i in range(P * n)]
    texts = [s.text for s in samples]
    scored = score_samples(roles, combine, gold_fns, [r.prompt for r in owners], texts, [r.meta for r in owners],
                           timeout)
    unsafe = [bool(r.meta.get(combine.unsafe_field)) for r in eval_prompts]
    per_prompt = per_prompt_figures(scored, [len(s.response_ids) for s in samples], unsafe, n)
    if run_dir:
        record_heldout(run_dir, roles.fleet.version, per_prompt, eval_prompts, ev)
    examples = [{"prompt": eval_prompts[p].prompt[-1]["content"], "response": texts[p * n],
                 "reward": float(scored.combined[p * n]),
                 "gold_reward": scored.gold["reward"][p * n] if "reward" in scored.gold else None}
                for p in range(min(n_examples, P))]
    return eval_figures(per_prompt, ev), examples


def per_prompt_figures(scored: Scored, lengths: list[int], unsafe: list[bool], n: int) -> dict[str, np.ndarray]:
    """Each held-out figure as its per-prompt means over the prompt's ``n`` consecutive samples:
    ``reward`` (combined), ``reward_<source>``, ``gold_<name>``, ``response_length``, and, when
    the prompts are of both kinds, ``gold_<name>@safe`` and ``@unsafe`` over those prompts only:
    helpfulness is judged on safe prompts and safety on unsafe ones, as Llama 2 evaluates them,
    since on unsafe prompts gold helpfulness rewards compliance."""
    out = {"reward": per_prompt_means(scored.combined.tolist(), n)}
    out.update({f"reward_{k}": per_prompt_means(v.tolist(), n) for k, v in scored.raw.items()})
    out.update({f"gold_{k}": per_prompt_means(v, n) for k, v in scored.gold.items()})
    out["response_length"] = per_prompt_means(lengths, n)
    mask = np.array(unsafe, dtype=bool)
    if mask.any() and not mask.all():
        for name in scored.gold:
            out[f"gold_{name}@safe"] = out[f"gold_{name}"][~mask]
            out[f"gold_{name}@unsafe"] = out[f"gold_{name}"][mask]
    return out


def eval_figures(per_prompt: dict, ev: EvalSection, prefix: str = "eval/") -> dict:
    """``<prefix><figure>``: the mean over prompts, with ``_ci_low`` and ``_ci_high``, the
    percentile-bootstrap interval over prompts at ``ev.interval``."""
    out = {}
    for name, values in per_prompt.items():
        out.update(interval_keys(prefix + name, *interval(values, ev.interval, ev.bootstrap, ev.seed)))
    return out


def prompt_digest(eval_prompts: list) -> str:
    """Names the held-out prompt set: two evaluations pair prompt by prompt only on the same one."""
    text = json.dumps([r.prompt for r in eval_prompts], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def record_heldout(run_dir: str, version: int, per_prompt: dict, eval_prompts: list, ev: EvalSection) -> None:
    """Keep the per-prompt figures of the starting policy (weights version 0) as ``before`` and of
    the latest evaluation as ``after`` in ``<run_dir>/heldout.json``, beside the prompt count,
    the samples per prompt, the prompt set's digest and the bootstrap settings."""
    path = os.path.join(run_dir, HELDOUT_FILE)
    data = read_json(path) if os.path.exists(path) else {}
    head = {"prompts": len(eval_prompts), "samples_per_prompt": ev.samples_per_prompt,
            "prompt_digest": prompt_digest(eval_prompts), "interval": ev.interval, "bootstrap": ev.bootstrap,
            "seed": ev.seed}
    if any(data.get(k) != v for k, v in head.items()):
        data = {}  # another prompt set or setting: the old figures do not pair with these
    entry = {name: [float(x) for x in v] for name, v in per_prompt.items()}
    data.update(head, after=entry, after_version=int(version))
    if version == 0:
        data["before"] = entry
    atomic_write_json(path, data)


def gain_intervals(heldout: dict) -> dict:
    """``gain/<figure>`` with ``_ci_low`` and ``_ci_high`` for every figure of both ``before``
    and ``after`` in a heldout.json: the mean of the per-prompt differences after - before and
    their paired bootstrap interval, with the settings recorded there."""
    before, after = heldout.get("before") or {}, heldout.get("after") or {}
    level, resamples, seed = heldout["interval"], heldout["bootstrap"], heldout["seed"]
    out = {}
    for name in sorted(set(before) & set(after)):
        out.update(interval_keys(f"gain/{name}", *paired_interval(after[name], before[name], level, resamples, seed)))
    return out


def add_gain_intervals(run_dir: str, summary: dict) -> dict:
    """Add ``gain_intervals`` of ``<run_dir>/heldout.json`` to ``summary`` and rewrite the run's
    summary.json; a run without that file keeps its summary as it is."""
    path = os.path.join(run_dir, HELDOUT_FILE)
    if not os.path.exists(path):
        return summary
    summary.update(gain_intervals(read_json(path)))
    atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary
