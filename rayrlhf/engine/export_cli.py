"""``rayrlhf export RUN_DIR [--step N] [--out DIR]``: any checkpoint of a run as a plain Hugging
Face folder, offline (no Ray, no process group, no GPU).

    rayrlhf export runs/quickstart/sft                 # the newest checkpoint
    rayrlhf export runs/quickstart/ppo --step 20 --out /tmp/ppo-20

Works for ddp checkpoints and for fsdp ones (the rank files are joined along dim 0), for SFT,
reward-model, rejection-sampling and PPO runs (the policy). The result loads in transformers
and vLLM directly, in the dtype the run trained in.
"""
from __future__ import annotations

import argparse
import os
import sys

import yaml


def run_kind(cfg: dict) -> tuple[str, str, dict]:
    """(command, checkpoint file prefix, model section) of a run's saved config.yaml."""
    if "policy" in cfg:
        return ("ppo" if "ppo" in cfg else "rs"), "policy", cfg["policy"]
    command = next((c for c in ("dpo", "rrhf") if c in cfg), "rm" if "reward" in cfg else "sft")
    return command, "model", cfg["model"]


def export_checkpoint(run_dir: str, step: int | None = None, out: str | None = None) -> str:
    import torch

    from rayrlhf import checkpoint as ckpt
    from rayrlhf.engine.state import gather_shards
    from rayrlhf.models import export_hf, load_tokenizer
    from rayrlhf.utils.fs import read_json

    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{run_dir}: no config.yaml; give the folder of one stage's run "
                                "(e.g. runs/quickstart/sft)")
    with open(config_path, encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    command, prefix, model_cfg = run_kind(cfg)
    found = ckpt.list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint under checkpoints/")
    if step is None:
        folder = found[-1]
    else:
        folder = os.path.join(ckpt.checkpoint_dir(run_dir), f"step-{step:08d}")
        if folder not in found:
            have = [int(os.path.basename(p).split("-")[1]) for p in found]
            raise FileNotFoundError(f"{run_dir}: no complete checkpoint at step {step}; steps kept: {have}")
    weights = gather_shards(folder, prefix)
    name = model_cfg["name_or_path"]
    trust = bool(model_cfg.get("trust_remote_code", False))
    tokenizer = load_tokenizer(model_cfg.get("tokenizer") or name, trust, model_cfg.get("chat_template"))
    model = _skeleton(command, name, trust, tokenizer.pad_token_id)
    missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if getattr(
        model.config.get_text_config(), "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{folder}: checkpoint and model {name} disagree: missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    if tied:
        model.tie_weights()
    state = read_json(os.path.join(folder, "state.json"))
    summary = state.get("summary", {})
    extra = {"stage": command, "step": state["step"], "checkpoint": os.path.abspath(folder), "summary": summary}
    if command == "rm":
        extra.update(score_mean=summary.get("eval/reward_mean"), score_std=summary.get("eval/reward_std"),
                     reward_name=cfg.get("reward", {}).get("name"))
    out = out or os.path.join(run_dir, f"export-step-{state['step']}")
    with torch.no_grad():
        export_hf(model, tokenizer, out, extra=extra, dtype=model_cfg.get("dtype", "float32"))
    return out


def _skeleton(command: str, name: str, trust: bool, pad_token_id):
    """The model's architecture with empty (meta) weights, filled by ``load_state_dict(assign=True)``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(name, trust_remote_code=trust)
    with torch.device("meta"):
        if command == "rm":
            config.num_labels = 1
            if pad_token_id is not None:
                config.pad_token_id = pad_token_id
            return AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust)
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rayrlhf export", description="Export a run's checkpoint as a plain "
                                "Hugging Face folder (offline; ddp or fsdp checkpoints).")
    p.add_argument("run_dir", help="one stage's run folder, e.g. runs/quickstart/sft")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/export-step-N)")
    args = p.parse_args(argv)
    try:
        print(export_checkpoint(args.run_dir, args.step, args.out))
    except (FileNotFoundError, ValueError) as e:
        print(f"rayrlhf export: {e}", file=sys.stderr)
        return 2
    return 0
