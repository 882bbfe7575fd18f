"""Seeded faults in PPO (sync rollout, where a replaced worker or a resumed run is promised to be
the uninterrupted run exactly): a rollout worker killed, the reference crashed (Ray restarts
it), a trainer rank killed, the driver stopped, the held-out evaluation failed, a checkpoint
write failed. Each case ends in the uninterrupted run's metrics, ledger and weights, or in an
ActorLostError naming what died and how to resume, then a resume that gets there."""
import os

import pytest

from rayrlhf import checkpoint as ckpt
from rayrlhf.config import load_config
from rayrlhf.config.ppo import PPOConfig
from rayrlhf.driver.ppo_stage import run_ppo
from rayrlhf.metrics import read_metrics
from rayrlhf.utils.fs import ActorLostError, read_json
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
# The reward calls of step 2's evaluation (the first checkpoint, of step 2, comes after it).
EVAL_2_CALLS = range(EVAL * EVAL_N + 2 * PROMPTS * N + 1, EVAL * EVAL_N * 2 + 2 * PROMPTS * N + 1)
CALLS["eval"] = [tally.pick("eval", EVAL_2_CALLS[0], EVAL_2_CALLS[-1])]
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


def _stop_then_resume(world, full_run, run_dir, call, expect, match, checkpoint_step):
    return runs.stop_then_resume(run_ppo, _cfg(world, run_dir), run_dir, call, expect, match,
                                 checkpoint_step, STEPS * PROMPTS, full_run)


@pytest.mark.parametrize("call", CALLS["trainer"], ids=lambda c: f"trainer-rank-killed-seed{tally.SEED}-call{c}")
def test_a_killed_trainer_rank_stops_clearly_and_a_resume_is_the_same_run(world, full_run, tmp_path, call):
    run_dir = str(tmp_path / "tk")
    faults.reset(kill_at=call, kill_actor="tk/trainer/1")
    # Found dead at its next call: a forward or update (ActorLostError), or the checkpoint's save.
    # Killed in step 2's evaluation, it is found dead by the checkpoint after it.
    msg = _stop_then_resume(world, full_run, run_dir, call, (ActorLostError, ckpt.CheckpointWriteError),
                            "tk/trainer/1", 2 if step_of(call) > 2 else None)
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
    # Stopped in step 2's evaluation, the driver has checkpointed step 2's training first.
    _stop_then_resume(world, full_run, str(tmp_path / "dk"), call, RuntimeError, "driver killed",
                      2 if call > EVAL_2_CALLS[0] - 1 else None)
    tally.survived()


@pytest.mark.parametrize("call", CALLS["eval"], ids=lambda c: f"evaluation-failed-seed{tally.SEED}-call{c}")
def test_a_failed_evaluation_keeps_its_steps_training_and_a_resume_is_the_same_run(world, full_run, tmp_path,
                                                                                  capfd, call):
    """A held-out evaluation that raises (here the gold reward, in step 2's evaluation; no
    checkpoint was due before it) first checkpoints the step's training, marked as not yet
    evaluated; the resume evaluates it and goes on to the uninterrupted run."""
    run_dir = str(tmp_path / "ev")
    faults.reset(crash_at=call)
    with pytest.raises(RuntimeError, match="driver killed"):
        run_ppo(_cfg(world, run_dir))
    tally.injected()
    latest = ckpt.latest_checkpoint(run_dir)
    assert latest == os.path.join(run_dir, "checkpoints", "step-00000002")
    assert sorted(os.listdir(os.path.dirname(latest))) == ["step-00000002"]
    pending = read_json(os.path.join(latest, "eval_pending.json"))
    full_row = read_metrics(full_run)[2]
    assert pending["step"] == 2 and pending["stopped"] is None
    assert not [k for k in pending["metrics"] if k.startswith("eval/")]
    assert pending["metrics"]["rollout/samples"] == full_row["rollout/samples"] == PROMPTS * N
    assert (f"step 2: the held-out evaluation failed (RuntimeError: driver killed); the step's training is kept "
            f"in {latest}: once the cause is fixed, --resume evaluates step 2 and goes on") in capfd.readouterr().out
    faults.reset()
    run_ppo(_cfg(world, run_dir), resume=True)
    assert "at step 2, whose held-out evaluation runs first" in capfd.readouterr().out
    runs.same_run(run_dir, full_run, STEPS * PROMPTS)
    tally.failed_clearly()


# Each file of a PPO checkpoint (written by the trainer and critic ranks or by the driver), the
# folder it goes in, the rename that completes it, and the run's summary.json copy after it.
WORKER_FILES = ["critic-optim.json", "critic-optim.safetensors", "critic-rng-rank0.pt", "critic.safetensors",
                "policy-optim.json", "policy-optim.safetensors", "policy-rng-rank0.pt", "policy-rng-rank1.pt",
                "policy.safetensors"]
DRIVER_FILES = ["inflight.json", "state.json", "summary.json"]
CHECKPOINT_FILES = sorted(WORKER_FILES + DRIVER_FILES)
WRITE_POINTS = ["folder", *CHECKPOINT_FILES, "rename", "run-summary"]
FAILING = "step-00000004"  # the last checkpoint; step-00000002's stays
# Every case resumes from the same intact checkpoint; these (a seeded file of each writer among
# them) also run the resume and compare it with the uninterrupted run.
RESUMED = {"folder", "rename", "run-summary",
           WORKER_FILES[tally.pick("write-fails-resumed-worker-file", 0, len(WORKER_FILES) - 1)],
           DRIVER_FILES[tally.pick("write-fails-resumed-driver-file", 0, len(DRIVER_FILES) - 1)]}


def _write_fails_at(monkeypatch, run_dir, point):
    """Disk full at ``point`` of the step-4 checkpoint. A file's write is made to fail where it
    happens, in whichever process writes it: a directory stands at its path in the new folder."""
    import errno
    import tempfile

    from rayrlhf.driver import common
    from rayrlhf.utils import fs

    real_mkdtemp, real_replace, real_write = tempfile.mkdtemp, fs.os.replace, common.atomic_write_json

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    def mkdtemp(*a, **k):
        if not k.get("prefix", "").startswith(f".tmp-{FAILING}-"):
            return real_mkdtemp(*a, **k)
        if point == "folder":
            full(k.get("dir"))
        tmp = real_mkdtemp(*a, **k)
        if point in CHECKPOINT_FILES:
            os.makedirs(os.path.join(tmp, point, "in-the-way"))
        return tmp

    def replace(src, dst):
        if point == "rename" and os.path.basename(str(dst)) == FAILING:
            full(dst)
        return real_replace(src, dst)

    def write(path, value):
        if point == "run-summary" and path == os.path.join(run_dir, "summary.json") and \
                os.path.isdir(os.path.join(run_dir, "checkpoints", FAILING)):
            full(path)
        return real_write(path, value)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(fs.os, "replace", replace)
    monkeypatch.setattr(common, "atomic_write_json", write)


def test_the_write_points_are_those_of_a_real_checkpoint(full_run):
    assert sorted(os.listdir(os.path.join(full_run, "checkpoints", FAILING))) == CHECKPOINT_FILES


@pytest.mark.parametrize("point", WRITE_POINTS, ids=[f"write-fails-at-{p}" for p in WRITE_POINTS])
def test_a_failed_checkpoint_write_in_a_run_stops_clearly_and_a_resume_is_the_same_run(
        world, full_run, tmp_path, monkeypatch, point):
    run_dir = str(tmp_path / "wf")
    faults.reset()
    cfg = _cfg(world, run_dir)
    with monkeypatch.context() as m:
        _write_fails_at(m, run_dir, point)
        with pytest.raises(ckpt.CheckpointWriteError) as e:
            run_ppo(cfg)
    tally.injected()
    msg, kept = str(e.value), os.path.join(run_dir, "checkpoints", "step-00000002")
    if point == "run-summary":  # the checkpoint holds the summary: it is the one to go on from
        kept = os.path.join(run_dir, "checkpoints", FAILING)
        assert msg.startswith(f"{run_dir}/summary.json: writing failed (OSError: [Errno 28] No space left")
        assert f"the latest checkpoint {kept} is intact" in msg
    else:
        assert msg.startswith(f"checkpoint {run_dir}/checkpoints/{FAILING}: writing failed (")
        why = msg.split(";")[0]
        if point in CHECKPOINT_FILES:  # the writer's own error (not Ray's wrapper), naming the file
            assert "Is a directory" in why and f"{FAILING}-" in why and f"/{point}" in why
        else:
            assert "OSError: [Errno 28] No space left" in why
        assert "\n" not in msg
        assert f"the previous checkpoint {kept} is intact" in msg
    assert "--resume" in msg
    # Nothing half-written beside the intact checkpoint(s) (two are kept), whose files are complete.
    left = ["step-00000002", FAILING] if point == "run-summary" else ["step-00000002"]
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == left
    assert sorted(os.listdir(kept)) == CHECKPOINT_FILES
    tally.failed_clearly()
    if point in RESUMED:
        run_ppo(cfg, resume=True)
        runs.same_run(run_dir, full_run, STEPS * PROMPTS)
