"""`rayrlhf ppo`: validate, place the actors, run the PPO driver, export."""
from __future__ import annotations

import os

from rayrlhf.config import save_config
from rayrlhf.data.validate import read_splits
from rayrlhf.utils.fs import atomic_write_json
from rayrlhf.utils.ray_init import run_name_of


def read_prompts(cfg, tokenizer) -> tuple[list, list, dict]:
    parts, report = read_splits(cfg.data, "prompt", tokenizer)
    evals = parts["eval"][: cfg.data.eval_limit] if cfg.data.eval_limit else parts["eval"]
    return parts["train"], evals, report


def prepare_run(cfg, resume: bool, default_name: str):
    """Everything that can fail cheaply, before any actor starts: the run folder, the model
    folders, the tokenizer and every prompt; then the resolved config and the data report."""
    from rayrlhf import checkpoint as ckpt
    from rayrlhf.models import load_tokenizer

    run_dir = os.path.abspath(os.path.join(cfg.run.output_dir, cfg.run.name or default_name))
    if not resume and ckpt.latest_checkpoint(run_dir):
        raise SystemExit(f"{run_dir} already holds a run: pass --resume to continue it, or set run.name")
    from rayrlhf.config.loader import check_before_start

    # Model paths, and every role fits its GPUs (ppo, rs), before any actor starts.
    check_before_start(default_name if default_name in ("ppo", "rs") else None, cfg)
    tokenizer = load_tokenizer(cfg.policy.name_or_path, cfg.policy.trust_remote_code, cfg.policy.chat_template)
    prompts, eval_prompts, report = read_prompts(cfg, tokenizer)
    from rayrlhf.actors.judge_reward import check_references

    check_references(cfg.rewards, prompts + eval_prompts)
    from rayrlhf.actors.reward import check_row_fields

    check_row_fields(cfg.rewards, prompts + eval_prompts)
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    atomic_write_json(os.path.join(run_dir, "data_report.json"), report)
    return run_dir, tokenizer, prompts, eval_prompts


def run_policy_stage(cfg, resume: bool, default_name: str, build_roles, driver_class) -> dict:
    """Validate, place the actors ``build_roles`` names, run ``driver_class``'s loop, add the
    paired intervals of its held-out gains to summary.json, and write its held-out generations
    before and after; the actors are removed whatever happens."""
    from rayrlhf.driver.scoring import add_gain_intervals
    from rayrlhf.utils.ray_init import ensure_ray

    run_dir, tokenizer, prompts, eval_prompts = prepare_run(cfg, resume, default_name)
    ensure_ray()
    roles = build_roles(cfg, run_name_of(run_dir))
    from ray.exceptions import RayActorError

    try:
        driver = driver_class(cfg, run_dir, roles, prompts, eval_prompts, tokenizer)
        try:
            summary = add_gain_intervals(run_dir, driver.fit(resume=resume))
        except RayActorError as e:
            raise actor_lost(e, run_dir) from e
        if driver.samples:
            atomic_write_json(os.path.join(run_dir, "samples.json"), driver.samples)
        return summary
    finally:
        roles.shutdown()


def actor_lost(error, run_dir: str):
    """ActorLostError for a dead actor the run cannot replace: which actor, in which phase,
    why it died (as Ray says), the checkpoint that is intact and how to continue from it."""
    import re

    from rayrlhf.checkpoint import how_to_go_on
    from rayrlhf.utils.fs import ActorLostError

    text = str(error)
    name = re.search(r"^\s*name: (\S+)", text, re.M) or re.search(r"^\s*class_name: (\S+)", text, re.M)
    cause = re.search(r"The actor is dead because ([^\n]*?)\.?$", text, re.M)
    phase = getattr(error, "rayrlhf_phase", None)
    hint = how_to_go_on(run_dir)
    return ActorLostError(f"{name.group(1) if name else 'an actor'} died"
                          + (f" ({cause.group(1)})" if cause else "")
                          + (f" while the run waited on {phase}" if phase else "")
                          + f"; the run cannot go on without it. {hint[0].upper()}{hint[1:]}")


def run_ppo(cfg, resume: bool = False) -> dict:
    from rayrlhf.driver.ppo import PPODriver
    from rayrlhf.driver.roles import build_roles

    return run_policy_stage(cfg, resume, "ppo", build_roles, PPODriver)
