"""Seeded faults in best-of-K rejection sampling, scored by a rule and a reward model: a rollout
worker killed (replaced; the same run), the reward model crashed (Ray restarts it in its bundle
and retries the call; the same run), a policy rank killed, the driver stopped and the held-out evaluation failed (a clear error
naming the checkpoint that is intact, then a resume that is the same run)."""
import os

import pytest

from rayrlhf import checkpoint as ckpt
from rayrlhf.config import load_config
from rayrlhf.config.rs import RSConfig
from rayrlhf.driver.rs_stage import run_rs
from rayrlhf.utils.fs import ActorLostError
from tests.chaos import runs, tally
from tests.driver import faults
from tests.driver.tiny import tiny_reward_model, world_on_local_ray

pytestmark = pytest.mark.slow

ROUNDS, PROMPTS, K, EVAL, EVAL_N = 3, 4, 4, 4, 2
# Reward calls (the rule's): EVAL x EVAL_N before the first round, then PROMPTS x K and
# EVAL x EVAL_N in each round.
BEFORE, PER_ROUND = EVAL * EVAL_N, PROMPTS * K + EVAL * EVAL_N
FIRST_CALL, LAST_CALL = BEFORE + 1, BEFORE + ROUNDS * PER_ROUND
CALLS = {c: tally.pick(f"rs-{c}", FIRST_CALL, LAST_CALL) for c in ("rollout", "reward", "policy", "driver")}


def round_of(call: int) -> int:
    """The round (1-based) whose scoring or evaluation makes reward call ``call``."""
    return (call - FIRST_CALL) // PER_ROUND + 1


def in_evaluation(call: int) -> bool:
    """Whether reward call ``call`` is made by a round's evaluation (after its scoring)."""
    return (call - FIRST_CALL) % PER_ROUND >= PROMPTS * K


# A call of one of the rounds' evaluations.
_EVAL_CALL = tally.pick("rs-eval", 0, ROUNDS * EVAL * EVAL_N - 1)
CALLS["eval"] = FIRST_CALL + (_EVAL_CALL // (EVAL * EVAL_N)) * PER_ROUND + PROMPTS * K + _EVAL_CALL % (EVAL * EVAL_N)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    for world in world_on_local_ray(tmp_path_factory, "chaos_rs_world"):
        tiny_reward_model(world)
        yield world


def _cfg(world, run_dir):
    return load_config(RSConfig, data={
        "policy": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [f"{world}/data/prompts_train.jsonl"], "eval": [f"{world}/data/prompts_eval.jsonl"],
                 "max_prompt_tokens": 96, "eval_limit": EVAL},
        "rewards": [{"name": "rule", "function": "tests.driver.faults:reward"},
                    {"name": "rm", "model": f"{world}/rm"}],
        "combine": {"weights": {"rule": 1.0, "rm": 0.5}},
        "rollout": {"backend": "hf", "max_new_tokens": 8, "max_model_len": 160},
        "rs": {"rounds": ROUNDS, "k": K, "prompts_per_round": PROMPTS, "epochs": 1, "global_batch_size": 2,
               "lr": 1e-3, "curve_k": 0, "call_timeout_s": 120, "keep_checkpoints": 1},
        "eval": {"samples_per_prompt": EVAL_N},
        "resources": {"trainer": {"num_workers": 2, "cpus_per_worker": 0.25},
                      "rollout": {"num_workers": 2, "cpus_per_worker": 0.25},
                      "rewards": {"rm": {"cpus_per_worker": 0.25}}},
        "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir), "seed": 5},
    })


@pytest.fixture(scope="module")
def full_run(world, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("runs") / "full")
    faults.reset()
    run_rs(_cfg(world, run_dir))
    return run_dir


def test_a_killed_rollout_worker_is_replaced_and_the_rounds_are_the_same(world, full_run, tmp_path):
    call = CALLS["rollout"]
    run_dir = str(tmp_path / "rr")
    faults.reset(kill_at=call, kill_actor="rr/rollout/1")
    summary = run_rs(_cfg(world, run_dir))
    assert faults.STATE["calls"] >= call
    tally.injected()
    assert summary["rollout/worker_restarts"] == 1
    runs.same_run(run_dir, full_run, ROUNDS * PROMPTS)
    tally.survived()


def test_a_crashed_reward_model_is_restarted_and_the_rounds_are_the_same(world, full_run, tmp_path):
    """Killed between the rule's score and its own: the call in flight is retried on the
    restarted actor, which scores as the first did."""
    call = CALLS["reward"]
    run_dir = str(tmp_path / "rm")
    faults.reset(kill_at=call, kill_actor="rm/reward/rm/0", restart=True)
    run_rs(_cfg(world, run_dir))
    tally.injected()
    assert faults.STATE["restarted"]
    runs.same_run(run_dir, full_run, ROUNDS * PROMPTS)
    tally.survived()


def test_a_killed_policy_rank_stops_clearly_and_a_resume_is_the_same_run(world, full_run, tmp_path):
    call = CALLS["policy"]
    run_dir = str(tmp_path / "pk")
    faults.reset(kill_at=call, kill_actor="pk/trainer/1")
    done = round_of(call) - 1
    msg = runs.stop_then_resume(run_rs, _cfg(world, run_dir), run_dir, call, (ActorLostError, ckpt.CheckpointWriteError),
                                "pk/trainer/1", done or None, ROUNDS * PROMPTS, full_run)
    assert "pk/trainer/1 died (it was killed by" in msg or "writing failed (ActorDiedError" in msg
    if done:
        assert f"checkpoint {run_dir}/checkpoints/step-{done:08d} is intact" in msg and "--resume" in msg
    else:
        assert "there is no earlier checkpoint: a rerun starts from the beginning" in msg
    tally.failed_clearly()


def test_a_stopped_driver_resumes_to_the_same_rounds(world, full_run, tmp_path):
    call = CALLS["driver"]
    faults.reset(crash_at=call)
    run_dir = str(tmp_path / "dk")
    # Stopped in a round's evaluation, the driver has checkpointed the round's training first.
    runs.stop_then_resume(run_rs, _cfg(world, run_dir), run_dir, call, RuntimeError, "driver killed",
                          (round_of(call) - (0 if in_evaluation(call) else 1)) or None, ROUNDS * PROMPTS, full_run)
    tally.survived()


def test_a_failed_evaluation_keeps_its_rounds_training_and_a_resume_is_the_same_run(world, full_run, tmp_path,
                                                                                   capfd):
    call = CALLS["eval"]
    assert in_evaluation(call)
    faults.reset(crash_at=call)
    run_dir = str(tmp_path / "ev")
    rnd = round_of(call)
    runs.stop_then_resume(run_rs, _cfg(world, run_dir), run_dir, call, RuntimeError, "driver killed",
                          rnd, ROUNDS * PROMPTS, full_run)
    out = capfd.readouterr().out
    assert f"step {rnd}: the held-out evaluation failed (RuntimeError: driver killed)" in out
    assert f"after round {rnd}, whose held-out evaluation runs first" in out
    tally.failed_clearly()
