"""PPO end to end on the vLLM engine (the CPU build here): weight reloads into vLLM, the probe
check after every swap, sync and async generation, and a vLLM worker killed and replaced."""
import json
import os

import pytest

from rayrlhf.driver.ppo_stage import run_ppo
from rayrlhf.metrics import read_metrics
from tests.conftest import vllm_available
from tests.driver import faults
from tests.driver.test_ppo_engine import (KILL_IN_STEP_2, PROMPTS, STEPS, _cfg, _comparable, _same_weights,
                                          _weights)
from tests.driver.tiny import world_on_local_ray

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not vllm_available(), reason="vllm does not import here")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from world_on_local_ray(tmp_path_factory, "ppo_vllm_world")


def _vllm(world, run_dir, **ppo):
    cfg = _cfg(world, run_dir, **ppo)
    cfg.rollout.backend = "vllm"
    cfg.rollout.cpu_kv_cache_gib = 0.25
    return cfg


def _ledger(run_dir):
    return [json.loads(x) for x in open(os.path.join(run_dir, "rollouts.jsonl"))]


@pytest.fixture(scope="module")
def vllm_sync_run(world, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("runs") / "vsync")
    faults.reset()
    summary = run_ppo(_vllm(world, run_dir, truncated_importance_sampling=True))
    return run_dir, summary


def test_ppo_on_vllm_verifies_every_swap_and_corrects_the_mismatch(vllm_sync_run):
    run_dir, summary = vllm_sync_run
    rows = read_metrics(run_dir)[1:]
    assert [r["policy/version"] for r in rows] == [1.0, 2.0, 3.0, 4.0]
    # Each sync's swap was checked against the trainer's probe logprobs (float32: 1e-3).
    assert all(0 <= r["sync/probe_max_diff"] < 1e-3 for r in rows)
    # vLLM's sampling logprobs are the trainer's up to kernel numerics: a small, logged mismatch,
    # and TIS weights (sync mode, fresh samples) within the cap.
    assert all(0 <= r["rollout/mismatch_kl"] < 1e-3 and r["rollout/mismatch_kl"] == r["rollout/mismatch_kl_fresh"]
               for r in rows)
    assert all(0 < r["async/importance_weight_mean"] <= 2.0 for r in rows)
    assert [e["sample_versions"] for e in _ledger(run_dir)] == [[0], [1], [2], [3]]
    assert summary["rollout/prompts_used"] == STEPS * PROMPTS


def test_a_killed_vllm_worker_is_replaced_and_the_run_is_the_same(world, vllm_sync_run, tmp_path):
    full_dir, _ = vllm_sync_run
    run_dir = str(tmp_path / "vkilled")
    faults.reset(kill_at=KILL_IN_STEP_2, kill_actor="vkilled/rollout/1")
    summary = run_ppo(_vllm(world, run_dir, truncated_importance_sampling=True))
    assert summary["rollout/worker_restarts"] == 1
    assert [e["prompt_rows"] for e in _ledger(run_dir)] == [e["prompt_rows"] for e in _ledger(full_dir)]
    assert _comparable(run_dir) == _comparable(full_dir)
    assert _same_weights(_weights(run_dir), _weights(full_dir))


def test_async_on_vllm_with_a_killed_worker(world, tmp_path):
    run_dir = str(tmp_path / "vasync")
    faults.reset(kill_at=KILL_IN_STEP_2, kill_actor="vasync/rollout/1")
    summary = run_ppo(_vllm(world, run_dir, rollout_mode="async", max_staleness=1))
    assert summary["rollout/worker_restarts"] == 1
    ledger = _ledger(run_dir)
    used = [r for e in ledger for r in e["prompt_rows"]]
    assert len(used) == STEPS * PROMPTS and len(set(used)) == len(used)
    # Iteration 3's job was queued at version 1; the killed worker's shard was redone by its
    # replacement, which serves the newest weights (version 2) and says so.
    assert [e["sample_versions"] for e in ledger] == [[0], [0], [1, 2], [2]]
    rows = read_metrics(run_dir)[1:]
    assert rows[2]["async/staleness_max"] == 1.0 and rows[2]["async/staleness_mean"] == 0.5
    assert rows[2]["async/staleness@0"] == 0.5 and rows[2]["async/staleness@1"] == 0.5
    assert all(r["sync/probe_max_diff"] < 1e-3 for r in rows if "sync/probe_max_diff" in r)
