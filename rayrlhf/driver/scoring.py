"""Scoring samples with every reward source, and the held-out evaluation both loops share.

The combination of sources is the pure function ``rayrlhf.algo.rewards.combine_rewards``;
gold rewards (toyworld's exact helpfulness and safety) are computed beside it for reporting
and never feed back into training.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rayrlhf.algo.rewards import combine_rewards
from rayrlhf.driver.fleet import get


@dataclass
class Scored:
    combined: torch.Tensor  # (B,) the reward the algorithm optimises
    raw: dict[str, torch.Tensor]  # source -> (B,) raw score of each source
    gold: dict[str, list[float]]  # gold name -> (B,) gold reward of each sample

    def metrics(self) -> dict:
        """Means over the batch: reward/<source>, rollout/reward_*, gold/<name>."""
        out = {f"reward/{k}": float(v.mean()) for k, v in self.raw.items()}
        out["rollout/reward_mean"] = float(self.combined.mean())
        out["rollout/reward_std"] = float(self.combined.std()) if len(self.combined) > 1 else 0.0
        out.update({f"gold/{k}": float(np.mean(v)) for k, v in self.gold.items()})
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
             n_examples: int = 8) -> tuple[dict, list[dict]]:
    """Proxy and gold rewards of the current policy on the held-out prompts (one sample each,
    the same seeds every time), and the first few generations."""
    if not eval_prompts:
        return {}, []
    parts = get(roles.eval_generate(eval_ids), timeout, "rollout in phase evaluate")
    samples = [s for part in parts for s in part]
    prompts = [r.prompt for r in eval_prompts]
    texts = [s.text for s in samples]
    scored = score_samples(roles, combine, gold_fns, prompts, texts, [r.meta for r in eval_prompts], timeout)
    out = {"eval/reward": float(scored.combined.mean()),
           "eval/response_length": float(np.mean([len(s.response_ids) for s in samples]))}
    for k, v in scored.metrics().items():
        if k.startswith(("reward/", "gold/")):
            out[f"eval/{k.replace('/', '_', 1)}"] = v
    out.update(split_by_safety(scored.gold, [bool(r.meta.get(combine.unsafe_field)) for r in eval_prompts]))
    examples = [{"prompt": p[-1]["content"], "response": t, "reward": float(scored.combined[i]),
                 "gold_reward": scored.gold["reward"][i] if "reward" in scored.gold else None}
                for i, (p, t) in enumerate(zip(prompts[:n_examples], texts[:n_examples]))]
    return out, examples


def split_by_safety(gold: dict[str, list[float]], unsafe: list[bool]) -> dict:
    """Gold means over safe and over unsafe prompts apart (``eval/gold_<name>@safe``, ``@unsafe``):
    helpfulness is judged on safe prompts and safety on unsafe ones, as Llama 2 evaluates them,
    since on unsafe prompts gold helpfulness rewards compliance."""
    out = {}
    if not any(unsafe) or all(unsafe):
        return out
    for name, vals in gold.items():
        for tag, want in (("safe", False), ("unsafe", True)):
            out[f"eval/gold_{name}@{tag}"] = float(np.mean([v for v, u in zip(vals, unsafe) if u == want]))
    return out
