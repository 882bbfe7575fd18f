"""Critic-free PPO (ppo.advantage: grpo, Dr. GRPO, rloo, reinforce++) on Ray with tiny models:
no critic worker, placement group, checkpoint or metrics; checkpoints resume exactly."""
import glob
import os

import pytest

from rayrlhf.config import load_config
from rayrlhf.config.ppo import PPOConfig
from rayrlhf.driver.ppo_stage import run_ppo
from rayrlhf.metrics import read_metrics
from rayrlhf.placement import actors as placement_actors
from tests.driver import faults
from tests.driver.tiny import world_on_local_ray

pytestmark = pytest.mark.slow

STEPS, PROMPTS, N, EVAL, EVAL_N = 2, 4, 2, 4, 2
# Reward calls: EVAL x EVAL_N before training, then PROMPTS * N per step.
CRASH_IN_STEP_2 = EVAL * EVAL_N + PROMPTS * N + 3  # after the step-1 checkpoint


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from world_on_local_ray(tmp_path_factory, "ppo_critic_free_world")


CASES = {
    "grpo": {"advantage": "grpo", "kl_in": "loss"},
    "rloo": {"advantage": "rloo", "kl_in": "loss"},
    "dr_grpo": {"advantage": "grpo", "grpo_std_normalize": False, "loss_agg": "seq_sum_token_norm", "kl_in": "reward"},
    "reinforce++": {"advantage": "reinforce++", "kl_in": "reward"},
}


# Resume is the estimators' shared path (the loop's checkpoint); it is checked on the group
# baseline and on REINFORCE++'s whitening with the KL in the reward.
RESUMED = ("grpo", "reinforce++")


def _cfg(world, run_dir, case):
    return load_config(PPOConfig, data={
        "policy": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [f"{world}/data/prompts_train.jsonl"], "eval": [f"{world}/data/prompts_eval.jsonl"],
                 "max_prompt_tokens": 96, "eval_limit": EVAL},
        "rewards": [{"name": "rule", "function": "tests.driver.faults:reward"}],
        "rollout": {"backend": "hf", "max_new_tokens": 8, "n_samples": N, "max_model_len": 160},
        "ppo": {**CASES[case], "total_steps": STEPS, "prompts_per_step": PROMPTS, "ppo_epochs": 1,
                "global_mini_batch_size": 4, "actor_lr": 1e-3, "kl_coef": 0.1,
                "eval_every": STEPS, "checkpoint_every": 1, "rollout_mode": "sync", "call_timeout_s": 120},
        "eval": {"samples_per_prompt": EVAL_N},
        "resources": {"trainer": {"cpus_per_worker": 0.25}, "reference": {"cpus_per_worker": 0.25},
                      "rollout": {"num_workers": 1, "cpus_per_worker": 0.25}},
        "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir), "seed": 3},
    })


@pytest.fixture
def placed(monkeypatch):
    """The roles of every actor group and the names of every placement group a run creates."""
    out = {"groups": [], "pgs": []}
    init = placement_actors.RayActorGroup.__init__

    def record(self, cls, role, *args, **kwargs):
        out["groups"].append(role)
        init(self, cls, role, *args, **kwargs)

    monkeypatch.setattr(placement_actors.RayActorGroup, "__init__", record)
    from rayrlhf.driver import roles as roles_module

    build = roles_module.build_roles

    def build_and_record(cfg, run_name):
        roles = build(cfg, run_name)
        out["plan"] = sorted(roles.plan.roles)
        out["critic"] = roles.critic
        return roles

    monkeypatch.setattr(roles_module, "build_roles", build_and_record)
    return out


def _comparable(run_dir):
    return [{k: v for k, v in r.items() if not (k.startswith("timing/") or "seconds" in k or k == "sync/share_of_step")}
            for r in read_metrics(run_dir)]


@pytest.mark.parametrize("case", list(CASES))
def test_critic_free_runs_place_no_critic_and_resume_exactly_where_checked(world, tmp_path, placed, capfd, case):
    full = str(tmp_path / "full")
    faults.reset()
    run_ppo(_cfg(world, full, case))
    assert placed["critic"] is None
    assert "critic" not in placed["plan"] and "trainer" in placed["plan"]
    assert "critic" not in placed["groups"] and "trainer" in placed["groups"]
    ckpts = sorted(glob.glob(os.path.join(full, "checkpoints", "step-*")))
    assert ckpts
    for d in ckpts:
        files = os.listdir(d)
        assert "policy.safetensors" in files and not any(f.startswith("critic") for f in files)
    rows = read_metrics(full)
    train = [r for r in rows if "actor/loss" in r]
    assert len(train) == STEPS
    assert not any(k.startswith("critic/") for r in rows for k in r)
    assert all("actor/advantages_abs_mean" in r and r["actor/advantages_abs_mean"] > 0 for r in train)
    assert os.path.exists(os.path.join(full, "export", "model.safetensors"))
    if case not in RESUMED:
        return
    stopped = str(tmp_path / "stopped")
    faults.reset(crash_at=CRASH_IN_STEP_2)
    with pytest.raises(RuntimeError, match="driver killed"):
        run_ppo(_cfg(world, stopped, case))
    faults.reset()
    run_ppo(_cfg(world, stopped, case), resume=True)
    assert "checkpoints/step-00000001 at step 1" in capfd.readouterr().out
    assert _comparable(stopped) == _comparable(full)
