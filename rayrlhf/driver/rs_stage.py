"""`rayrlhf rs` and `rayrlhf best-of-k`: validate, place the actors, run, write the outputs."""
from __future__ import annotations

import json
import os

from rayrlhf.driver.ppo_stage import prepare_run, run_policy_stage
from rayrlhf.utils.fs import atomic_write_json, atomic_write_text
from rayrlhf.utils.ray_init import run_name_of


def run_rs(cfg, resume: bool = False) -> dict:
    from rayrlhf.driver.roles import build_rs_roles
    from rayrlhf.driver.rs import RSDriver

    return run_policy_stage(cfg, resume, "rs", build_rs_roles, RSDriver)


def run_best_of_k(cfg) -> dict:
    """Best-of-K at inference time: K samples per prompt of ``data.train``, scored and the best
    ``top_m`` written to ``best_of_k.jsonl``; with held-out prompts and gold rewards, the
    best-of-K curve too. Nothing is trained."""
    import torch

    from rayrlhf.algo.best_of_k import best_of_k_stats, select_best_of_k
    from rayrlhf.data.tokenize import render_prompt
    from rayrlhf.driver.roles import build_rs_roles
    from rayrlhf.driver.rs import best_of_k_curve
    from rayrlhf.driver.scoring import resolve_gold, score_samples
    from rayrlhf.utils.ray_init import ensure_ray

    run_dir, tokenizer, prompts, eval_prompts = prepare_run(cfg, True, "best_of_k")
    k, gold = cfg.rs.k, resolve_gold(cfg.gold)
    ensure_ray()
    roles = build_rs_roles(cfg, run_name_of(run_dir), train=False)
    try:
        ids = [render_prompt(tokenizer, r.prompt) for r in prompts]
        parts = roles.eval_generate(ids, n=k)
        samples = [s for part in parts for s in part]
        owners = [prompts[i // k] for i in range(len(samples))]
        scored = score_samples(roles, cfg.combine, gold, [r.prompt for r in owners], [s.text for s in samples],
                               [r.meta for r in owners], cfg.rs.call_timeout_s)
        best = select_best_of_k(scored.combined, k, cfg.rs.top_m)
        lines = []
        for p, rec in enumerate(prompts):
            for rank, j in enumerate(best[p].tolist()):
                i = p * k + j
                row = {"prompt": rec.prompt, "response": samples[i].text, "rank": rank, "reward": float(scored.combined[i]),
                       "scores": {name: float(v[i]) for name, v in scored.raw.items()},
                       "candidates_rewards": scored.combined[p * k:(p + 1) * k].tolist()}
                row.update({f"gold_{name}": vals[i] for name, vals in scored.gold.items()})
                lines.append(json.dumps(row))
        atomic_write_text(os.path.join(run_dir, "best_of_k.jsonl"), "\n".join(lines) + "\n")
        stats = best_of_k_stats(scored.combined.reshape(-1, k))
        summary = {"prompts": len(prompts), "k": k, "top_m": cfg.rs.top_m, **{f"rs/{n}": v for n, v in stats.items()}}
        sel = torch.tensor([p * k + j for p in range(len(prompts)) for j in best[p].tolist()])
        summary["rs/kept_reward"] = float(scored.combined[sel].mean())
        for name, vals in scored.gold.items():
            summary[f"rs/all_gold_{name}"] = float(torch.tensor(vals).mean())
            summary[f"rs/kept_gold_{name}"] = float(torch.tensor(vals)[sel].mean())
        if eval_prompts and cfg.rs.curve_k:
            summary.update(best_of_k_curve(
                roles, cfg.combine, gold, eval_prompts[: cfg.rs.curve_prompts],
                [render_prompt(tokenizer, r.prompt) for r in eval_prompts[: cfg.rs.curve_prompts]],
                cfg.rs.curve_k, cfg.rs.call_timeout_s, run_dir, cfg.eval))
        atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
        return summary
    finally:
        roles.shutdown()
