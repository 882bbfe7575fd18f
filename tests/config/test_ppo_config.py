"""PPO settings whose defaults or combinations would silently train the wrong thing."""
import pytest

from rayrlhf.config.loader import ConfigError, load_config
from rayrlhf.config.ppo import PPOConfig

BASE = {"policy": {"name_or_path": "/m"}, "data": {"train": ["/p.jsonl"]},
        "rewards": [{"name": "len", "function": "rayrlhf.rules:length_penalty"}],
        "ppo": {"prompts_per_step": 4, "global_mini_batch_size": 4}}


def _cfg(**sections):
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    return load_config(PPOConfig, data=data)


def test_kl_estimator_is_k1_in_the_reward_and_k3_in_the_loss_by_default():
    assert _cfg().ppo.kl_estimator_used == "k1"
    assert _cfg(ppo={"kl_in": "loss"}).ppo.kl_estimator_used == "k3"
    assert _cfg(ppo={"kl_in": "loss", "kl_estimator": "k2"}).ppo.kl_estimator_used == "k2"


def test_k1_as_a_loss_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="kl_estimator: k1 with kl_in: loss has a gradient of zero mean"):
        _cfg(ppo={"kl_in": "loss", "kl_estimator": "k1"})


@pytest.mark.parametrize("rollout", [{"top_p": 0.9}, {"top_k": 50}])
def test_truncated_sampling_is_refused_for_ppo(rollout):
    with pytest.raises(ConfigError, match="set top_p: 1.0 and top_k: -1 for PPO"):
        _cfg(rollout=rollout)


def test_the_rollout_dtype_must_be_the_policy_dtype():
    with pytest.raises(ConfigError, match="rollout.dtype: float32 differs from policy.dtype bfloat16"):
        _cfg(policy={"name_or_path": "/m", "dtype": "bfloat16"})


def test_evaluation_defaults_and_bad_settings():
    ev = _cfg().eval
    assert (ev.samples_per_prompt, ev.bootstrap, ev.interval, ev.seed) == (4, 2000, 0.95, 0)
    with pytest.raises(ConfigError) as err:
        _cfg(eval={"samples_per_prompt": 0, "bootstrap": 0, "interval": 1.0})
    assert [p for p in err.value.problems if p.startswith("eval.")] == [
        "eval.samples_per_prompt: must be at least 1, got 0", "eval.bootstrap: must be at least 1, got 0",
        "eval.interval: must be in (0, 1), got 1.0"]


@pytest.mark.parametrize("advantage", ["grpo", "rloo"])
def test_group_baselines_need_two_samples_per_prompt(advantage):
    with pytest.raises(ConfigError, match=f"rollout.n_samples: ppo.advantage: {advantage} compares the samples"):
        _cfg(ppo={"advantage": advantage}, rollout={"n_samples": 1})
    assert not _cfg(ppo={"advantage": advantage}, rollout={"n_samples": 2}).ppo.uses_critic
    assert _cfg(ppo={"advantage": "reinforce++"}, rollout={"n_samples": 1}).ppo.advantage == "reinforce++"


def test_critic_warmup_is_refused_without_a_critic():
    with pytest.raises(ConfigError, match="critic_warmup_steps: 2 warms up a critic, but advantage: reinforce"):
        _cfg(ppo={"advantage": "reinforce++", "critic_warmup_steps": 2})
    assert _cfg(ppo={"critic_warmup_steps": 2}).ppo.uses_critic


def test_memory_plan_and_placement_roles_leave_out_the_critic_without_gae():
    from rayrlhf.engine.memory import planned_roles

    assert "critic" in planned_roles("ppo", _cfg())
    roles = planned_roles("ppo", _cfg(ppo={"advantage": "grpo"}, rollout={"n_samples": 2}))
    assert "critic" not in roles and "trainer" in roles and "reference" in roles


def test_the_grpo_job_places_no_critic():
    import os

    from rayrlhf.config.loader import load_config as load
    from rayrlhf.engine.memory import planned_roles

    job = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "toyworld_grpo.yaml")
    cfg = load(PPOConfig, path=job)
    assert cfg.ppo.advantage == "grpo" and cfg.rollout.n_samples == 4
    assert planned_roles("ppo", cfg) == ["trainer", "reference", "rollout", "reward/helpfulness", "reward/safety"]
