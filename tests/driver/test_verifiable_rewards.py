"""Verifiable rewards: a prompt row's ground truth reaches a rule reward source; a row without
it stops the run before any actor starts; GRPO with ``numeric_match`` on a small arithmetic
task built here raises held-out accuracy."""
import json
import os

import pytest

from rayrlhf.config import load_config
from rayrlhf.config.ppo import PPOConfig
from rayrlhf.data.validate import DataValidationError
from rayrlhf.driver.ppo_stage import prepare_run
from tests.driver.arith import PAIRS, arith_world, write_prompts
from tests.driver.tiny import local_ray

CORRECT = "rayrlhf.rules:numeric_match"


def _cfg(policy, train, evals, out, rewards, **ppo):
    return load_config(PPOConfig, data={
        "policy": {"name_or_path": policy},
        "data": {"train": [train], "eval": [evals], "max_prompt_tokens": 48},
        "rewards": rewards,
        "rollout": {"backend": "hf", "max_new_tokens": 3, "n_samples": 8, "max_model_len": 64},
        "ppo": {"advantage": "grpo", "kl_in": "loss", "total_steps": 2, "prompts_per_step": 8, "ppo_epochs": 1,
                "global_mini_batch_size": 32, "actor_lr": 1e-3, "kl_coef": 0.0, "eval_every": 2,
                "checkpoint_every": 100, "rollout_mode": "sync", "call_timeout_s": 300, **ppo},
        "eval": {"samples_per_prompt": 8},
        "resources": {"trainer": {"cpus_per_worker": 0.25}, "reference": {"cpus_per_worker": 0.25},
                      "rollout": {"num_workers": 1, "cpus_per_worker": 0.25}},
        "run": {"output_dir": str(out), "name": "grpo", "seed": 0},
    })


def test_a_row_without_the_rule_field_stops_the_run_before_start(tiny_model_dir, tmp_path):
    train = write_prompts(str(tmp_path / "train.jsonl"), PAIRS[:4])
    rows = [json.loads(line) for line in open(train)]
    del rows[2]["answer"]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evals = write_prompts(str(tmp_path / "eval.jsonl"), PAIRS[4:6], extra={"gold": "x"})
    rewards = [{"name": "correct", "function": CORRECT, "args": {"field": "answer"}}]
    with pytest.raises(DataValidationError) as err:
        prepare_run(_cfg(tiny_model_dir, train, evals, tmp_path, rewards), resume=False, default_name="ppo")
    (problem,) = err.value.problems
    assert (problem.file, problem.line, problem.field) == (train, 3, "answer")
    assert "'correct'" in problem.reason and CORRECT in problem.reason
    assert not os.path.exists(tmp_path / "grpo" / "config.yaml")  # nothing written before the data is good
    # The rule's own default field is checked too, and a field the rows carry passes.
    with pytest.raises(DataValidationError, match="'answer'"):
        prepare_run(_cfg(tiny_model_dir, train, evals, tmp_path, [{"name": "c", "function": "rayrlhf.rules:exact_match"}]),
                    resume=False, default_name="ppo")
    ok = [{"name": "c", "function": "rayrlhf.rules:exact_match", "args": {"field": "gold"}}]
    _, _, prompts, eval_prompts = prepare_run(_cfg(tiny_model_dir, evals, evals, tmp_path, ok), resume=False,
                                              default_name="ppo")
    assert eval_prompts[0].meta["gold"] == "x" and eval_prompts[0].meta["answer"] == str(sum(PAIRS[4]))
