"""The reward-hacking alarm end to end: PPO on a reward that pays for repeating one character,
watched against the variety it destroys (a held-out source with weight 0), stops early."""
import os

import pytest

from rayrlhf.config import load_config
from rayrlhf.config.ppo import PPOConfig
from rayrlhf.driver.ppo_stage import run_ppo
from rayrlhf.metrics import read_metrics
from tests.driver.tiny import world_on_local_ray

pytestmark = pytest.mark.slow

STEPS = 16


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from world_on_local_ray(tmp_path_factory, "hacking_world")


def test_ppo_on_a_hackable_reward_fires_the_alarm_and_stops(world, tmp_path, capfd):
    run_dir = str(tmp_path / "hacked")
    cfg = load_config(PPOConfig, data={
        "policy": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [f"{world}/data/prompts_train.jsonl"], "max_prompt_tokens": 96},
        "rewards": [{"name": "hack", "function": "tests.driver.hackable:repeats"},
                    {"name": "variety", "function": "tests.driver.hackable:variety"}],
        "combine": {"method": "linear", "weights": {"hack": 1.0, "variety": 0.0}},
        "rollout": {"backend": "hf", "max_new_tokens": 8, "n_samples": 4, "max_model_len": 160},
        "ppo": {"advantage": "grpo", "kl_in": "loss", "kl_coef": 0.0, "total_steps": STEPS, "prompts_per_step": 4,
                "global_mini_batch_size": 16, "actor_lr": 1e-2, "eval_every": 1000, "checkpoint_every": 1000,
                "hacking": {"watch": "reward/variety", "window": 2, "z": 1.0, "stop": True}},
        "resources": {"trainer": {"cpus_per_worker": 0.25}, "reference": {"cpus_per_worker": 0.25},
                      "rollout": {"num_workers": 1, "cpus_per_worker": 0.25}},
        "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir), "seed": 0},
    })
    summary = run_ppo(cfg)
    rows = [r for r in read_metrics(run_dir) if "hacking/alarm" in r]
    fired = summary["hacking/fired_at"]
    assert fired is not None and summary["stopped_early_at"] == fired < STEPS and summary["steps"] == fired
    assert [r["step"] for r in rows] == list(range(1, fired + 1))  # nothing trained after the alarm
    assert rows[-1]["hacking/alarm"] == 1.0 and all(r["hacking/alarm"] == 0.0 for r in rows[:-1])
    assert rows[-1]["reward/hack"] > rows[0]["reward/hack"]  # the proxy rose, the watched variety fell
    assert f"step {fired}: reward-hacking alarm" in capfd.readouterr().out
    assert os.path.exists(os.path.join(run_dir, "export", "model.safetensors"))
    assert os.listdir(os.path.join(run_dir, "checkpoints")) == [f"step-{fired:08d}"]  # the stop is checkpointed


def test_rejection_sampling_on_a_hackable_reward_fires_the_alarm_and_stops(world, tmp_path, capfd):
    from rayrlhf.config.rs import RSConfig
    from rayrlhf.driver.rs_stage import run_rs

    run_dir = str(tmp_path / "hacked-rs")
    cfg = load_config(RSConfig, data={
        "policy": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [f"{world}/data/prompts_train.jsonl"], "max_prompt_tokens": 96},
        "rewards": [{"name": "hack", "function": "tests.driver.hackable:repeats"},
                    {"name": "variety", "function": "tests.driver.hackable:variety"}],
        "combine": {"method": "linear", "weights": {"hack": 1.0, "variety": 0.0}},
        "rollout": {"backend": "hf", "max_new_tokens": 8, "max_model_len": 160},
        "rs": {"rounds": STEPS, "k": 4, "prompts_per_round": 4, "epochs": 2, "global_batch_size": 4, "lr": 1e-2,
               "curve_k": 0, "keep_checkpoints": 1,
               "hacking": {"watch": "reward/variety", "agree_with": ["variety"], "window": 2, "z": 1.0,
                           "stop": True}},
        "resources": {"trainer": {"cpus_per_worker": 0.25}, "rollout": {"num_workers": 1, "cpus_per_worker": 0.25}},
        "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir), "seed": 0},
    })
    summary = run_rs(cfg)
    rows = [r for r in read_metrics(run_dir) if "hacking/alarm" in r]
    fired = summary["hacking/fired_at"]
    assert fired is not None and summary["stopped_early_at"] == fired < STEPS and summary["rounds"] == fired
    assert [r["step"] for r in rows] == list(range(1, fired + 1))  # no round after the alarm
    assert rows[-1]["hacking/alarm"] == 1.0 and all(r["hacking/alarm"] == 0.0 for r in rows[:-1])
    assert rows[-1]["reward/hack"] > rows[0]["reward/hack"] and rows[-1]["reward/variety"] < rows[0]["reward/variety"]
    # variety is 1 - hack, sample by sample: the proxy ranks the samples exactly against it
    assert all(r["hacking/agreement/variety"] == pytest.approx(-1.0) for r in rows if "hacking/agreement" in r)
    assert f"round {fired}: reward-hacking alarm" in capfd.readouterr().out
    assert os.listdir(os.path.join(run_dir, "checkpoints")) == [f"step-{fired:08d}"]  # the stop is checkpointed
    assert os.path.exists(os.path.join(run_dir, "export", "model.safetensors"))
