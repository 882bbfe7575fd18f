"""The PPO engine on Ray with tiny models: exact resume, staleness 0 = synchronous, a killed
rollout worker, a corrupted weight sync, a hanging call, non-finite rewards."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from rayrlhf.algo import kl as kl_module
from rayrlhf.config import load_config
from rayrlhf.config.ppo import PPOConfig
from rayrlhf.driver.ppo import BadStepError
from rayrlhf.driver.ppo_stage import run_ppo
from rayrlhf.metrics import read_metrics
from tests.driver import faults
from tests.driver.tiny import world_on_local_ray

pytestmark = pytest.mark.slow

STEPS, PROMPTS, N, EVAL, EVAL_N = 4, 4, 2, 4, 2
# Reward calls: EVAL x EVAL_N before training, PROMPTS * N per step, EVAL x EVAL_N after steps 2 and 4.
CRASH_IN_STEP_3 = EVAL * EVAL_N + 2 * PROMPTS * N + EVAL * EVAL_N + 3  # after the step-2 checkpoint
KILL_IN_STEP_2 = EVAL * EVAL_N + PROMPTS * N + 1  # the first reward call of step 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from world_on_local_ray(tmp_path_factory, "ppo_world")


def _cfg(world, run_dir, **ppo):
    p = {"total_steps": STEPS, "prompts_per_step": PROMPTS, "ppo_epochs": 2, "global_mini_batch_size": 4,
         "actor_lr": 1e-3, "critic_lr": 1e-3, "kl_controller": "adaptive", "kl_coef": 0.1, "kl_target": 0.5,
         "kl_horizon": 100, "eval_every": 2, "checkpoint_every": 2, "rollout_mode": "sync", "call_timeout_s": 120,
         **ppo}
    return load_config(PPOConfig, data={
        "policy": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [f"{world}/data/prompts_train.jsonl"], "eval": [f"{world}/data/prompts_eval.jsonl"],
                 "max_prompt_tokens": 96, "eval_limit": 4},
        "rewards": [{"name": "rule", "function": "tests.driver.faults:reward"}],
        "gold": {"helpfulness": "rayrlhf.tasks.toyworld:gold_helpfulness"},
        "rollout": {"backend": "hf", "max_new_tokens": 8, "n_samples": N, "max_model_len": 160},
        "ppo": p,
        "eval": {"samples_per_prompt": EVAL_N},
        "resources": {"trainer": {"cpus_per_worker": 0.25}, "critic": {"cpus_per_worker": 0.25},
                      "reference": {"cpus_per_worker": 0.25}, "rollout": {"num_workers": 2, "cpus_per_worker": 0.25}},
        "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir), "seed": 3},
    })


def _comparable(run_dir):
    rows = read_metrics(run_dir)
    return [{k: v for k, v in r.items() if not (k.startswith("timing/") or "seconds" in k or k == "sync/share_of_step")}
            for r in rows]


def _weights(run_dir):
    return load_file(os.path.join(run_dir, "export", "model.safetensors"))


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference_run(world, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("runs") / "full")
    faults.reset()
    summary = run_ppo(_cfg(world, run_dir))
    return run_dir, summary


def test_ppo_run_records_metrics_and_every_prompt_once(reference_run):
    run_dir, summary = reference_run
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(STEPS + 1))  # step 0 is the evaluation before training
    train = rows[1:]
    for key in ("rollout/reward_mean", "reward/rule", "kl/per_response", "actor/loss", "critic/loss",
                "timing/generate", "timing/update", "sync/seconds", "sync/bytes", "async/staleness_max"):
        assert all(key in r for r in train), key
    assert all(r["rollout/samples"] == PROMPTS * N for r in train)
    assert rows[-1]["policy/version"] == STEPS
    ledger = [json.loads(x) for x in open(os.path.join(run_dir, "rollouts.jsonl"))]
    used = [row for entry in ledger for row in entry["prompt_rows"]]
    assert len(used) == STEPS * PROMPTS and len(set(used)) == len(used)  # 16 of 24 prompts, none twice
    assert summary["rollout/prompts_used"] == STEPS * PROMPTS
    assert "before/gold_helpfulness" in summary and "eval/gold_helpfulness" in summary
    for key in ("before/gold_helpfulness", "eval/gold_helpfulness", "gain/gold_helpfulness"):
        assert summary[key + "_ci_low"] <= summary[key] <= summary[key + "_ci_high"], key
    held = json.load(open(os.path.join(run_dir, "heldout.json")))
    assert (held["prompts"], held["samples_per_prompt"], held["after_version"]) == (EVAL, EVAL_N, STEPS)
    assert summary["eval/gold_helpfulness"] == pytest.approx(sum(held["after"]["gold_helpfulness"]) / EVAL)
    assert os.path.exists(os.path.join(run_dir, "export", "config.json"))


def test_resume_after_a_crash_is_exact(world, reference_run, tmp_path, capfd):
    full_dir, _ = reference_run
    run_dir = str(tmp_path / "stopped")
    cfg = _cfg(world, run_dir)
    faults.reset(crash_at=CRASH_IN_STEP_3)
    with pytest.raises(RuntimeError, match="driver killed"):
        run_ppo(cfg)
    faults.reset()
    run_ppo(cfg, resume=True)
    assert "checkpoints/step-00000002 at step 2" in capfd.readouterr().out
    assert _comparable(run_dir) == _comparable(full_dir)
    held = [json.load(open(os.path.join(d, "heldout.json"))) for d in (run_dir, full_dir)]
    assert held[0] == held[1]
    assert _same_weights(_weights(run_dir), _weights(full_dir))


def test_resume_without_kl_controller_state_is_not_exact(world, reference_run, tmp_path, monkeypatch):
    full_dir, _ = reference_run
    run_dir = str(tmp_path / "forgetful")
    cfg = _cfg(world, run_dir)
    faults.reset(crash_at=CRASH_IN_STEP_3)
    with pytest.raises(RuntimeError):
        run_ppo(cfg)
    faults.reset()
    monkeypatch.setattr(kl_module.AdaptiveKLController, "load_state_dict", lambda self, d: None)
    run_ppo(cfg, resume=True)
    assert not _same_weights(_weights(run_dir), _weights(full_dir))


def test_async_with_staleness_zero_equals_sync(world, reference_run, tmp_path):
    full_dir, _ = reference_run
    run_dir = str(tmp_path / "async0")
    faults.reset()
    run_ppo(_cfg(world, run_dir, rollout_mode="async", max_staleness=0))
    assert _comparable(run_dir) == _comparable(full_dir)
    assert _same_weights(_weights(run_dir), _weights(full_dir))


def test_broadcast_weight_sync_gives_the_same_run(world, reference_run, tmp_path):
    full_dir, _ = reference_run
    run_dir = str(tmp_path / "broadcast")
    faults.reset()
    run_ppo(_cfg(world, run_dir, weight_sync="broadcast", sync_bucket_mb=1))
    rows = read_metrics(run_dir)[1:]
    assert all(r["sync/bytes"] == read_metrics(full_dir)[1]["sync/bytes"] for r in rows)
    assert _comparable(run_dir) == _comparable(full_dir)
    assert _same_weights(_weights(run_dir), _weights(full_dir))


def _sample_versions(run_dir):
    return [json.loads(x)["sample_versions"] for x in open(os.path.join(run_dir, "rollouts.jsonl"))]


def test_async_with_staleness_one_uses_older_samples(world, reference_run, tmp_path):
    full_dir, _ = reference_run
    run_dir = str(tmp_path / "async1")
    faults.reset()
    summary = run_ppo(_cfg(world, run_dir, rollout_mode="async", max_staleness=1))
    rows = read_metrics(run_dir)[1:]
    # Iteration i samples from version max(0, i - 1): its generation was sent before the update
    # of iteration i - 1 finished, and the sync after that update did not stop it.
    assert _sample_versions(run_dir) == [[0], [0], [1], [2]]
    assert [r["async/staleness_max"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    assert [r["async/staleness_mean"] for r in rows] == [0.0, 1.0, 1.0, 1.0]
    assert [(r["async/staleness@0"], r.get("async/staleness@1")) for r in rows] == [(1.0, None)] + [(0.0, 1.0)] * 3
    assert "async/importance_weight_mean" not in rows[0]  # fresh samples: no correction
    assert all(0 < r["async/importance_weight_mean"] <= 2.0 for r in rows[1:])
    # The engine-vs-trainer KL, every iteration; on fresh samples (step 1) engines agree closely.
    assert all(r["rollout/mismatch_kl"] >= 0 for r in rows) and rows[0]["rollout/mismatch_kl_fresh"] < 1e-6
    assert summary["async/dropped_samples"] == 0
    assert not _same_weights(_weights(run_dir), _weights(full_dir))


@pytest.fixture(scope="module")
def async_run(world, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("runs") / "async2")
    faults.reset()
    run_ppo(_cfg(world, run_dir, rollout_mode="async", max_staleness=2))
    return run_dir


def test_async_reruns_are_the_same_run(world, async_run, tmp_path):
    run_dir = str(tmp_path / "again")
    faults.reset()
    run_ppo(_cfg(world, run_dir, rollout_mode="async", max_staleness=2))
    assert _sample_versions(run_dir) == _sample_versions(async_run) == [[0], [0], [0], [1]]
    assert _comparable(run_dir) == _comparable(async_run)
    assert _same_weights(_weights(run_dir), _weights(async_run))


def test_async_resume_after_a_crash_is_exact(world, async_run, tmp_path, capfd):
    run_dir = str(tmp_path / "async-stopped")
    cfg = _cfg(world, run_dir, rollout_mode="async", max_staleness=2)
    faults.reset(crash_at=CRASH_IN_STEP_3)
    with pytest.raises(RuntimeError, match="driver killed"):
        run_ppo(cfg)
    saved = json.load(open(os.path.join(run_dir, "checkpoints", "step-00000002", "inflight.json")))
    assert [(j["step"], j["version"]) for j in saved] == [(2, 0), (3, 1)]  # generated, not yet trained on
    faults.reset()
    run_ppo(cfg, resume=True)
    assert "at step 2 with 2 iterations of generation saved in flight" in capfd.readouterr().out
    assert _comparable(run_dir) == _comparable(async_run)
    assert _same_weights(_weights(run_dir), _weights(async_run))


def test_killed_rollout_worker_is_replaced_without_losing_prompts(world, reference_run, tmp_path):
    full_dir, _ = reference_run
    run_dir = str(tmp_path / "killed")
    faults.reset(kill_at=KILL_IN_STEP_2, kill_actor="killed/rollout/1")
    summary = run_ppo(_cfg(world, run_dir))
    assert summary["rollout/worker_restarts"] == 1
    ledger = [json.loads(x)["prompt_rows"] for x in open(os.path.join(run_dir, "rollouts.jsonl"))]
    full = [json.loads(x)["prompt_rows"] for x in open(os.path.join(full_dir, "rollouts.jsonl"))]
    assert ledger == full  # the same prompts, each once, in the same iterations
    # The replacement regenerated its shard with the same seeds, so the run is the same run.
    assert _comparable(run_dir) == _comparable(full_dir)


def test_non_finite_rewards_skip_updates_then_stop_the_run(world, tmp_path, capfd):
    faults.reset(nan=True)
    with pytest.raises(BadStepError, match="3 consecutive iterations"):
        run_ppo(_cfg(world, str(tmp_path / "nan")))
    out = capfd.readouterr().out
    assert "step 1: skipped the update: non-finite reward for samples [0, 1, 2" in out
