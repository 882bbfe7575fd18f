"""PPO with LoRA adapters on Ray with tiny models: the reference comes from the policy's base
weights (no reference worker), rollout workers serve the merged weights, checkpoints hold the
adapters only, the export is merged and carries the adapter."""
import glob
import os

import pytest
import torch
from safetensors.torch import load_file

from rayrlhf.config import load_config
from rayrlhf.config.ppo import PPOConfig
from rayrlhf.driver.ppo_stage import run_ppo
from rayrlhf.metrics import read_metrics
from rayrlhf.models import load_causal_lm
from tests.driver import faults
from tests.driver.tiny import world_on_local_ray

pytestmark = pytest.mark.slow
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from world_on_local_ray(tmp_path_factory, "ppo_lora_world")


def _cfg(world, run_dir, lora_r):
    return load_config(PPOConfig, data={
        "policy": {"name_or_path": f"{world}/base_model", "lora": {"r": lora_r, "alpha": 2 * max(lora_r, 1)}},
        "data": {"train": [f"{world}/data/prompts_train.jsonl"], "eval": [f"{world}/data/prompts_eval.jsonl"],
                 "max_prompt_tokens": 96, "eval_limit": 4},
        "rewards": [{"name": "rule", "function": "tests.driver.faults:reward"}],
        "gold": {"helpfulness": "rayrlhf.tasks.toyworld:gold_helpfulness"},
        "rollout": {"backend": "hf", "max_new_tokens": 8, "n_samples": 2, "max_model_len": 160},
        "ppo": {"total_steps": 3, "prompts_per_step": 4, "ppo_epochs": 2, "global_mini_batch_size": 4,
                "actor_lr": 1e-2, "critic_lr": 1e-2, "kl_coef": 0.1, "eval_every": 3, "checkpoint_every": 3,
                "rollout_mode": "sync", "call_timeout_s": 120},
        "eval": {"samples_per_prompt": 2},
        "resources": {"trainer": {"cpus_per_worker": 0.25}, "critic": {"cpus_per_worker": 0.25},
                      "reference": {"cpus_per_worker": 0.25}, "rollout": {"num_workers": 1, "cpus_per_worker": 0.25}},
        "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir), "seed": 3},
    })


def test_lora_ppo_takes_its_reference_from_the_base_and_serves_merged_weights(world, tmp_path):
    run_dir = str(tmp_path / "lora")
    faults.reset()
    cfg = _cfg(world, run_dir, 8)
    assert cfg.reference_from_policy
    run_ppo(cfg)
    rows = [r for r in read_metrics(run_dir) if "kl/per_token" in r]
    # Adapters start at B = 0: the policy is its reference at the first iteration, exactly.
    assert rows[0]["kl/per_token"] == 0.0
    assert any(r["kl/per_token"] != 0.0 for r in rows[1:])
    # The rollout worker samples from the merged weights: its logprobs are the trainer's, at
    # every iteration (sync mode), and each sync's probe says so.
    assert all(r["rollout/mismatch_kl"] < 1e-5 for r in rows)
    probes = [r["sync/probe_max_diff"] for r in read_metrics(run_dir) if "sync/probe_max_diff" in r]
    assert probes and max(probes) < 1e-3

    (ckpt,) = glob.glob(os.path.join(run_dir, "checkpoints", "*", "policy.safetensors"))
    saved = load_file(ckpt)
    assert saved and all(".lora_" in k for k in saved)
    critic = load_file(os.path.join(os.path.dirname(ckpt), "critic.safetensors"))
    assert "scalar_model.score.weight" in critic or any(k.endswith("score.weight") for k in critic)
    assert all(".lora_" in k or k.endswith("score.weight") for k in critic)

    export = os.path.join(run_dir, "export")
    merged = load_causal_lm(export)
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    base = load_causal_lm(f"{world}/base_model")
    assert any(not torch.equal(merged.state_dict()[k], v) for k, v in base.state_dict().items())
    assert os.path.exists(os.path.join(export, "adapter", "adapter_model.safetensors"))
