"""Seeded faults in PPO (sync rollout, where a replaced worker or a resumed run is promised to be
the uninterrupted run exactly): a rollout worker killed, the reference crashed (Ray restarts
it), a trainer rank killed, the driver stopped. Each case ends in the uninterrupted run's metrics, ledger and weights, or in an
ActorLostError naming what died and how to resume, then a resume that gets there."""
import os

import pytest

from rayrlhf import checkpoint as ckpt
from rayrlhf.config import load_config
from rayrlhf.config.ppo import PPOConfig
from rayrlhf.driver.ppo_stage import run_ppo
from rayrlhf.metrics import read_metrics
from rayrlhf.utils.fs import ActorLostError
from tests.chaos import runs, tally
from tests.driver import faults
from tests.driver.tiny import world_on_local_ray

pytestmark = pytest.mark.slow

STEPS, PROMPTS, N, EVAL, EVAL_N = 4, 4, 2, 4, 2
# Reward calls: EVAL x EVAL_N before training, PROMPTS x N per step, EVAL x EVAL_N after steps 2 and 4.
FIRST_TRAIN_CALL = EVAL * EVAL_N + 1
LAST_TRAIN_CALL = EVAL * EVAL_N + STEPS * PROMPTS * N + EVAL * EVAL_N


def step_of(call: int) -> int:
    """The iteration (1-based) whose scoring makes reward call ``call``."""
    k = call - EVAL * EVAL_N - 1
    return k // (PROMPTS * N) + 1 if k < 2 * PROMPTS * N else (k - EVAL * EVAL_N) // (PROMPTS * N) + 1


CALLS = {c: [tally.pick(c, FIRST_TRAIN_CALL, LAST_TRAIN_CALL)]
         for c in ("rollout", "async", "trainer", "driver", "reference")}
# And once after the first checkpoint, in steps 3 and 4: found dead at its next forward pass.
CALLS["trainer"].append(tally.pick("trainer-after-checkpoint", EVAL * EVAL_N * 2 + 2 * PROMPTS * N + 1,
                                   LAST_TRAIN_CALL))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from world_on_local_ray(tmp_path_factory, "chaos_ppo_world")


def _resources(node_types: dict) -> dict:
    res = {"trainer": {"num_workers": 2, "cpus_per_worker": 0.25}, "critic": {"cpus_per_worker": 0.25},
           "reference": {"cpus_per_worker": 0.25}, "rollout": {"num_workers": 2, "cpus_per_worker": 0.25}}
    for role, label in node_types.items():
        res[role]["node_type"] = label
    if "rollout" in node_types:
        res["rollout"]["strategy"] = "SPREAD"
    return res


def _cfg(world, run_dir, mode="sync", node_types=None):
    """``node_types``: role -> the custom resource of the nodes it may use (and rollout SPREAD)."""
    return load_config(PPOConfig, data={
        "policy": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [f"{world}/data/prompts_train.jsonl"], "eval": [f"{world}/data/prompts_eval.jsonl"],
                 "max_prompt_tokens": 96, "eval_limit": EVAL},
        "rewards": [{"name": "rule", "function": "tests.driver.faults:reward"}],
        "rollout": {"backend": "hf", "max_new_tokens": 8, "n_samples": N, "max_model_len": 160},
        "ppo": {"total_steps": STEPS, "prompts_per_step": PROMPTS, "ppo_epochs": 1, "global_mini_batch_size": 4,
                "actor_lr": 1e-3, "critic_lr": 1e-3, "eval_every": 2, "checkpoint_every": 2, "rollout_mode": mode,
                "max_staleness": 1, "call_timeout_s": 120},
        "eval": {"samples_per_prompt": EVAL_N},
        "resources": _resources(node_types or {}),
        "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir), "seed": 3},
    })


@pytest.fixture(scope="module")
def full_run(world, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("runs") / "full")
    faults.reset()
    run_ppo(_cfg(world, run_dir))
    return run_dir


@pytest.mark.parametrize("call", CALLS["rollout"], ids=lambda c: f"rollout-worker-killed-seed{tally.SEED}-call{c}")
def test_a_killed_rollout_worker_is_replaced_and_the_run_is_the_same(world, full_run, tmp_path, call):
    run_dir = str(tmp_path / "rk")
    faults.reset(kill_at=call, kill_actor="rk/rollout/1")
    summary = run_ppo(_cfg(world, run_dir))
    assert faults.STATE["calls"] >= call
    tally.injected()
    assert summary["rollout/worker_restarts"] == 1
    runs.same_run(run_dir, full_run, STEPS * PROMPTS)
    tally.survived()


@pytest.mark.parametrize("call", CALLS["async"], ids=lambda c: f"async-rollout-worker-killed-seed{tally.SEED}-call{c}")
def test_async_a_killed_rollout_worker_is_replaced_without_losing_a_prompt(world, full_run, tmp_path, call):
    """Async rollout is not promised exact (a replacement serves newer weights); the run
    finishes and every prompt is used once, in the iteration the sync run used it."""
    run_dir = str(tmp_path / "ak")
    faults.reset(kill_at=call, kill_actor="ak/rollout/1")
    summary = run_ppo(_cfg(world, run_dir, "async"))
    assert faults.STATE["calls"] >= call
    tally.injected()
    assert summary["rollout/worker_restarts"] == 1 and summary["steps"] == STEPS
    assert runs.prompt_use(run_dir) == runs.prompt_use(full_run)
    assert all(r["rollout/samples"] == PROMPTS * N for r in read_metrics(run_dir)[1:])
    tally.survived()


@pytest.mark.parametrize("call", CALLS["reference"], ids=lambda c: f"reference-crashed-seed{tally.SEED}-call{c}")
def test_a_crashed_reference_is_restarted_and_the_run_is_the_same(world, full_run, tmp_path, call):
    """The reference (like a reward model) is frozen: Ray builds it again in its bundle and
    retries its calls, and the run goes on to the uninterrupted run's results."""
    run_dir = str(tmp_path / "rf")
    faults.reset(kill_at=call, kill_actor="rf/reference/0", restart=True)
    run_ppo(_cfg(world, run_dir))
    tally.injected()
    assert faults.STATE["restarted"]
    runs.same_run(run_dir, full_run, STEPS * PROMPTS)
    tally.survived()


def _stop_then_resume(world, full_run, run_dir, call, expect, match):
    return runs.stop_then_resume(run_ppo, _cfg(world, run_dir), run_dir, call, expect, match,
                                 2 if step_of(call) > 2 else None, STEPS * PROMPTS, full_run)


@pytest.mark.parametrize("call", CALLS["trainer"], ids=lambda c: f"trainer-rank-killed-seed{tally.SEED}-call{c}")
def test_a_killed_trainer_rank_stops_clearly_and_a_resume_is_the_same_run(world, full_run, tmp_path, call):
    run_dir = str(tmp_path / "tk")
    faults.reset(kill_at=call, kill_actor="tk/trainer/1")
    # Found dead at its next call: a forward or update (ActorLostError), or the checkpoint's save.
    msg = _stop_then_resume(world, full_run, run_dir, call, (ActorLostError, ckpt.CheckpointWriteError),
                            "tk/trainer/1")
    assert "tk/trainer/1 died (it was killed by" in msg or "writing failed (ActorDiedError" in msg
    if "died (it was killed by" in msg:
        assert "while the run waited on policy" in msg
    if step_of(call) > 2:
        assert f"checkpoint {run_dir}/checkpoints/step-00000002 is intact" in msg and "--resume" in msg
    else:
        assert "there is no earlier checkpoint: a rerun starts from the beginning" in msg
    tally.failed_clearly()


@pytest.mark.parametrize("call", CALLS["driver"], ids=lambda c: f"driver-stopped-seed{tally.SEED}-call{c}")
def test_a_stopped_driver_resumes_to_the_same_run(world, full_run, tmp_path, call):
    faults.reset(crash_at=call)
    _stop_then_resume(world, full_run, str(tmp_path / "dk"), call, RuntimeError, "driver killed")
    tally.survived()
