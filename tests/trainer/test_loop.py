"""The shared training loop in one process (world size 1), as each Ray Train worker runs it."""
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from rayrlhf import checkpoint as ckpt
from rayrlhf.config import RMConfig, SFTConfig, load_config
from rayrlhf.driver.train_stage import prepare
from rayrlhf.engine import Engine
from rayrlhf.metrics import read_metrics
from rayrlhf.trainer.loop import WorkerInfo, global_batch_indices, train
from rayrlhf.trainer.rm import RMTask
from rayrlhf.trainer.sft import SFTTask


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from rayrlhf.driver.toyworld_stage import ToyworldConfig, run_toyworld
    from rayrlhf.models.tiny import TinyModelSpec

    out = tmp_path_factory.mktemp("tw")
    cfg = ToyworldConfig(out=str(out), n_sft=240, n_pref=240, n_prompts=20, n_eval_prompts=10, vocab_size=300,
                         model=TinyModelSpec(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128))
    run_toyworld(cfg)
    return str(out)


def _sft_cfg(world, run_dir, **train):
    t = {"epochs": 2, "lr": 1e-2, "global_batch_size": 16, "per_worker_micro_batch_size": 8,
         "log_every": 2, "checkpoint_every": 5, "keep_checkpoints": 2, **train}
    return load_config(SFTConfig, data={
        "model": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [f"{world}/data/sft_train.jsonl"], "eval": [f"{world}/data/sft_eval.jsonl"]},
        "train": t, "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir)},
    })


def _run(cfg, resume=False, task=None):
    prep = prepare("sft", cfg, resume=resume)
    return train(task or SFTTask(cfg), cfg, prep["train"], prep["eval"], prep["run_dir"], WorkerInfo(), resume=resume)


class CrashAt:
    """Delegates to a task, but raises on the n-th loss call: a run killed mid-epoch."""

    def __init__(self, task, n):
        self.task, self.n, self.calls = task, n, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, *args):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("killed")
        return self.task.loss(*args)


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in rows]


def test_global_batches_cover_each_epoch_once():
    seen = [i for step in range(4) for i in global_batch_indices(10, step, 5, seed=0)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]  # a new order each epoch


def test_sft_learns_and_resume_is_exact(world, tmp_path):
    full = _sft_cfg(world, str(tmp_path / "full"))
    summary = _run(full)
    rows = read_metrics(str(tmp_path / "full"))
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < 0.6 * losses[0]
    assert summary["eval/ppl"] < 0.1 * 300  # from about the vocabulary size at random init

    stopped = _sft_cfg(world, str(tmp_path / "stopped"))
    with pytest.raises(RuntimeError, match="killed"):
        _run(stopped, task=CrashAt(SFTTask(stopped), n=2 * 8 + 1))  # dies inside step 9, after the step-5 checkpoint
    assert os.path.basename(ckpt.latest_checkpoint(str(tmp_path / "stopped"))) == "step-00000005"
    _run(stopped, resume=True)

    assert _comparable(read_metrics(str(tmp_path / "stopped"))) == _comparable(rows)
    a = load_file(str(tmp_path / "full" / "export" / "model.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_rng_or_optimizer_state_diverges(world, tmp_path, monkeypatch):
    """The exactness above depends on the saved optimizer state: leaving it out must show."""
    base = _sft_cfg(world, str(tmp_path / "ref"))
    _run(base)
    cut = _sft_cfg(world, str(tmp_path / "cut"))
    with pytest.raises(RuntimeError):
        _run(cut, task=CrashAt(SFTTask(cut), n=2 * 8 + 1))
    real_load = Engine.load

    def forgetful(self, folder, prefix, optimizer=True):
        real_load(self, folder, prefix, optimizer=False)

    monkeypatch.setattr(Engine, "load", forgetful)
    _run(cut, resume=True)
    a = load_file(str(tmp_path / "ref" / "export" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "export" / "model.safetensors"))
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_retention_keeps_newest_complete_checkpoints(world, tmp_path):
    cfg = _sft_cfg(world, str(tmp_path / "r"), checkpoint_every=3, keep_checkpoints=2)
    _run(cfg)
    names = [os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path / "r"))]
    steps = len(read_metrics(str(tmp_path / "r")))
    assert len(names) == 2 and names[-1] == f"step-{int(json.load(open(tmp_path / 'r' / 'summary.json'))['steps']):08d}"
    assert steps > 0


def test_rm_reports_accuracy_per_margin_level_and_gold(world, tmp_path):
    cfg = load_config(RMConfig, data={
        "model": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [f"{world}/data/pref_helpfulness_train.jsonl"],
                 "eval": [f"{world}/data/pref_helpfulness_eval.jsonl"]},
        "train": {"epochs": 1, "lr": 1e-3, "global_batch_size": 16, "per_worker_micro_batch_size": 16},
        "run": {"output_dir": str(tmp_path), "name": "rm"},
    })
    prep = prepare("rm", cfg, resume=False)
    summary = train(RMTask(cfg), cfg, prep["train"], prep["eval"], prep["run_dir"], WorkerInfo())
    n_eval = len(prep["eval"])
    assert summary["eval/pairs"] == n_eval
    level_pairs = sum(v for k, v in summary.items() if k.startswith("eval/pairs@"))
    assert level_pairs == n_eval  # every pair counted in exactly one level
    assert 0.0 <= summary["eval/gold_accuracy"] <= 1.0
    assert os.path.exists(tmp_path / "rm" / "export" / "model.safetensors")
    exported = json.load(open(tmp_path / "rm" / "export" / "rayrlhf.json"))
    assert exported["stage"] == "rm" and exported["reward_name"] == "reward"


def test_too_long_rows_stop_the_run_or_are_left_out_and_counted(world, tmp_path):
    strict = _sft_cfg(world, str(tmp_path / "strict"))
    strict.data.max_response_tokens = 12
    from rayrlhf.data.validate import DataValidationError

    with pytest.raises(DataValidationError, match="more than max_response_tokens=12"):
        prepare("sft", strict, resume=False)
    lenient = _sft_cfg(world, str(tmp_path / "lenient"))
    lenient.data.max_response_tokens = 12
    lenient.data.too_long = "drop"
    prep = prepare("sft", lenient, resume=False)
    source = f"{world}/data/sft_train.jsonl"
    rep = prep["report"]["sources"][source]
    n_rows = sum(1 for _ in open(source))
    assert rep["dropped"]["too_long"] > 0
    assert rep["records"] == n_rows - rep["dropped"]["too_long"]
    assert len(rep["too_long"]) >= rep["dropped"]["too_long"]


def _lora(cfg, r=8):
    from rayrlhf.config.schema import LoraSection

    cfg.model.lora = LoraSection(r=r, alpha=2.0 * r)
    return cfg


def test_sft_with_lora_learns_keeps_adapter_checkpoints_and_resumes_exactly(world, tmp_path):
    pytest.importorskip("peft")
    full = _lora(_sft_cfg(world, str(tmp_path / "full"), lr=2e-2))
    _run(full)
    rows = read_metrics(str(tmp_path / "full"))
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    # A random base with adapters on its linear layers only (embeddings, head frozen) learns
    # slowly, but it learns.
    print("LoRA SFT losses", losses)
    assert losses[-1] < 0.95 * losses[0]
    saved = load_file(os.path.join(ckpt.latest_checkpoint(str(tmp_path / "full")), "model.safetensors"))
    assert saved and all(".lora_" in k for k in saved)

    stopped = _lora(_sft_cfg(world, str(tmp_path / "stopped"), lr=2e-2))
    with pytest.raises(RuntimeError, match="killed"):
        _run(stopped, task=CrashAt(SFTTask(stopped), n=2 * 8 + 1))
    _run(_lora(_sft_cfg(world, str(tmp_path / "stopped"), lr=2e-2)), resume=True)
    assert _comparable(read_metrics(str(tmp_path / "stopped"))) == _comparable(rows)
    a = load_file(str(tmp_path / "full" / "export" / "model.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any("lora" in k for k in a)
    assert os.path.exists(tmp_path / "full" / "export" / "adapter" / "adapter_config.json")


def test_rm_with_lora_trains_adapters_and_its_scalar_head(world, tmp_path):
    pytest.importorskip("peft")
    cfg = _lora(load_config(RMConfig, data={
        "model": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [f"{world}/data/pref_helpfulness_train.jsonl"],
                 "eval": [f"{world}/data/pref_helpfulness_eval.jsonl"]},
        "train": {"epochs": 1, "lr": 1e-2, "global_batch_size": 16, "per_worker_micro_batch_size": 16,
                  "checkpoint_every": 5},
        "run": {"output_dir": str(tmp_path), "name": "rm"},
    }))
    prep = prepare("rm", cfg, resume=False)
    summary = train(RMTask(cfg), cfg, prep["train"], prep["eval"], prep["run_dir"], WorkerInfo())
    print("LoRA RM", {k: v for k, v in summary.items() if "accuracy" in k})
    saved = load_file(os.path.join(ckpt.latest_checkpoint(str(tmp_path / "rm")), "model.safetensors"))
    assert "score.weight" in saved and all(".lora_" in k or k == "score.weight" for k in saved)
    from rayrlhf.models import load_scalar_model

    exported = load_scalar_model(str(tmp_path / "rm" / "export"))
    assert not any("lora" in k for k in exported.state_dict())


class NaNAt(CrashAt):
    """Delegates to a task, but the n-th loss call gives NaN: a step with a non-finite gradient."""

    def loss(self, *args):
        self.calls += 1
        loss, stats = self.task.loss(*args)
        if self.calls == self.n:
            return loss * float("nan"), {k: float("nan") for k in stats}
        return loss, stats


def test_a_non_finite_step_is_skipped_whole_said_and_counted(world, tmp_path, capfd):
    cfg = _sft_cfg(world, str(tmp_path / "nan"), epochs=0.5, log_every=2, checkpoint_every=100)
    _run(cfg, task=NaNAt(SFTTask(cfg), n=2 * 2 + 1))  # 2 micro-batches a step: inside step 3
    rows = [r for r in read_metrics(str(tmp_path / "nan")) if "train/skipped_steps" in r]
    assert [r["train/skipped_steps"] for r in rows] == [0.0] + [1.0] * (len(rows) - 1)
    # The skipped step's sums stay out of the logged loss, which stays finite.
    assert all(isinstance(r.get("train/loss"), float) and math.isfinite(r["train/loss"]) for r in rows)
    assert "step 3: skipped the optimizer step: non-finite loss or gradient norm" in capfd.readouterr().out


class FailEvaluation:
    """Delegates to a task, but its ``n``-th held-out evaluation raises (a broken eval batch)."""

    def __init__(self, task, n):
        self.task, self.n, self.done = task, n, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def eval_sums(self, *args):
        if self.done + 1 == self.n:
            raise RuntimeError("evaluation broke")
        return self.task.eval_sums(*args)

    def eval_metrics(self, sums):
        self.done += 1
        return self.task.eval_metrics(sums)


def test_a_failed_evaluation_keeps_its_steps_training_and_a_resume_is_the_same_run(world, tmp_path, capfd):
    from rayrlhf.checkpoint import EVAL_PENDING

    settings = dict(eval_every=3, log_every=4, checkpoint_every=5)
    full = _sft_cfg(world, str(tmp_path / "full"), **settings)
    _run(full)
    broken = _sft_cfg(world, str(tmp_path / "broken"), **settings)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        _run(broken, task=FailEvaluation(SFTTask(broken), n=2))  # step 6's, after the step-5 checkpoint
    kept = ckpt.latest_checkpoint(str(tmp_path / "broken"))
    assert os.path.basename(kept) == "step-00000006"
    pending = json.load(open(os.path.join(kept, EVAL_PENDING)))
    assert pending["step"] == 6 and set(pending["acc"]) and "eval/loss" not in pending["metrics"]
    assert (f"step 6: the held-out evaluation failed (RuntimeError: evaluation broke); the step's training is "
            f"kept in {kept}: once the cause is fixed, --resume evaluates step 6 and goes on") in capfd.readouterr().out
    _run(broken, resume=True)
    assert _comparable(read_metrics(str(tmp_path / "broken"))) == _comparable(read_metrics(str(tmp_path / "full")))
    a = load_file(str(tmp_path / "full" / "export" / "model.safetensors"))
    b = load_file(str(tmp_path / "broken" / "export" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
