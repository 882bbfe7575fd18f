"""Verifiable rewards: a prompt row's ground truth reaches a rule reward source; a row without
it stops the run before any actor starts; GRPO with ``numeric_match`` on a small arithmetic
task built here raises held-out accuracy."""
import json
import os
import re

import pytest

from rayrlhf.config import load_config
from rayrlhf.config.ppo import PPOConfig
from rayrlhf.data.validate import DataValidationError
from rayrlhf.driver.ppo_stage import prepare_run, run_ppo
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
    default = [{"name": "c", "function": "rayrlhf.rules:exact_match"}]
    with pytest.raises(DataValidationError, match="'answer'"):
        prepare_run(_cfg(tiny_model_dir, train, evals, tmp_path, default), resume=False, default_name="ppo")
    ok = [{"name": "c", "function": "rayrlhf.rules:exact_match", "args": {"field": "gold"}}]
    _, _, prompts, eval_prompts = prepare_run(_cfg(tiny_model_dir, evals, evals, tmp_path, ok), resume=False,
                                              default_name="ppo")
    assert eval_prompts[0].meta["gold"] == "x" and eval_prompts[0].meta["answer"] == str(sum(PAIRS[4]))


STEPS = 16
ACTOR_LR = 3e-4
MIN_GAIN = 0.1  # held-out accuracy, mean over 15 prompts x 8 samples (see test docstring)


@pytest.fixture(scope="module")
def arith_on_ray(tmp_path_factory):
    yield from local_ray(tmp_path_factory, arith_world(str(tmp_path_factory.mktemp("arith")), seed=0))


def _sum_of(question: str) -> int:
    a, b = re.fullmatch(r"What is (\d) \+ (\d)\?", question).groups()
    return int(a) + int(b)


@pytest.mark.slow
def test_grpo_with_numeric_match_raises_heldout_accuracy(arith_on_ray, tmp_path):
    """The policy starts right about 40% of the time on every sum; GRPO on the 40 training
    prompts with the rule reading each row's ``answer`` sharpens it, and accuracy on the 15
    held-out prompts rises by more than MIN_GAIN."""
    world = arith_on_ray
    rewards = [{"name": "correct", "function": CORRECT, "args": {"field": "answer"}}]
    cfg = _cfg(f"{world}/policy", f"{world}/data/train.jsonl", f"{world}/data/eval.jsonl", tmp_path, rewards,
               total_steps=STEPS, eval_every=STEPS, actor_lr=ACTOR_LR)
    summary = run_ppo(cfg)
    before, after = summary["before/reward_correct"], summary["eval/reward_correct"]
    assert 0.2 < before < 0.6  # the starting policy: right more often than chance, far from always
    assert after - before > MIN_GAIN, (before, after)
    assert summary["eval/reward"] == pytest.approx(after)  # the only source, weight 1
    # Every recorded reward is the hand-computed one: 1 when the response's number is the sum.
    samples = json.load(open(os.path.join(tmp_path, "grpo", "samples.json")))
    checked = 0
    for part in ("before", "after"):
        for ex in samples[part]:
            numbers = re.findall(r"\d+", ex["response"])
            right = bool(numbers) and int(numbers[-1]) == _sum_of(ex["prompt"])
            assert ex["reward"] == (1.0 if right else 0.0), ex
            checked += 1
    assert checked >= 16
