"""A held-out evaluation that fails checkpoints its step's training first (``evaluate_or_keep``);
the runs themselves are in tests/chaos (PPO and rejection sampling, resumed to the same run)."""
import json

import numpy as np
import pytest

from rayrlhf.checkpoint import EVAL_PENDING, evaluate_or_keep, pending_evaluation


def test_a_passing_evaluation_saves_nothing():
    saved = []
    assert evaluate_or_keep(lambda: {"eval/reward": 0.5}, 3, {"x": 1.0}, saved.append) == {"eval/reward": 0.5}
    assert saved == []


def test_a_failing_evaluation_saves_the_steps_metrics_then_raises_its_own_error(tmp_path, capsys):
    folder = tmp_path / "step-00000003"
    folder.mkdir()

    def save(pending):
        (folder / EVAL_PENDING).write_text(json.dumps(pending))
        return str(folder)

    def evaluate():
        raise ValueError("gold function: bad row 7")

    metrics = {"rollout/reward_mean": np.float32(0.25), "rollout/samples": 8, "kl/mean": float("nan")}
    with pytest.raises(ValueError, match="gold function: bad row 7"):
        evaluate_or_keep(evaluate, 3, metrics, save)
    pending = pending_evaluation(str(folder))
    assert pending["step"] == 3 and pending["metrics"]["rollout/reward_mean"] == 0.25
    assert pending["metrics"]["rollout/samples"] == 8 and np.isnan(pending["metrics"]["kl/mean"])
    assert (f"step 3: the held-out evaluation failed (ValueError: gold function: bad row 7); the step's training "
            f"is kept in {folder}: once the cause is fixed, --resume evaluates step 3 and goes on") in capsys.readouterr().out
    assert pending_evaluation(str(tmp_path)) is None  # a checkpoint whose step was evaluated


def test_when_the_checkpoint_fails_too_both_errors_are_told(capsys):
    def save(pending):
        raise OSError(28, "No space left on device")

    def evaluate():
        raise RuntimeError("reward model gone")

    with pytest.raises(RuntimeError, match="reward model gone") as e:
        evaluate_or_keep(evaluate, 2, {}, save)
    assert isinstance(e.value.__cause__, OSError)
    out = capsys.readouterr().out
    assert "step 2: the held-out evaluation failed (RuntimeError: reward model gone), and writing the step's " \
           "checkpoint failed too (OSError: [Errno 28] No space left on device)" in out
