"""SFT, reward models and DPO through the shared loop on 2 gloo ranks under FSDP2 (and DDP) against
one worker: the same loss curve and the same exported weights, within float tolerance."""
import os

import pytest
import torch
from safetensors.torch import load_file

from rayrlhf.config import DPOConfig, RMConfig, SFTConfig, load_config, to_dict
from rayrlhf.driver.train_stage import prepare
from rayrlhf.metrics import read_metrics
from tests.engine.ranks import run_ranks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from rayrlhf.driver.toyworld_stage import ToyworldConfig, run_toyworld
    from rayrlhf.models.tiny import TinyModelSpec

    out = tmp_path_factory.mktemp("tw")
    run_toyworld(ToyworldConfig(out=str(out), n_sft=96, n_pref=96, n_prompts=20, n_eval_prompts=10, vocab_size=300,
                                model=TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)))
    return str(out)


def _cfg(stage, world, run_dir, strategy):
    pref = ("pref_helpfulness_train", "pref_helpfulness_eval")
    data = {"sft": ("sft_train", "sft_eval"), "rm": pref, "dpo": pref}[stage]
    raw = {"model": {"name_or_path": f"{world}/base_model", "strategy": strategy},
           "data": {"train": [f"{world}/data/{data[0]}.jsonl"], "eval": [f"{world}/data/{data[1]}.jsonl"]},
           "train": {"epochs": 1, "lr": 3e-3, "global_batch_size": 16, "per_worker_micro_batch_size": 4,
                     "log_every": 1, "checkpoint_every": 3},
           "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir)}}
    return load_config({"sft": SFTConfig, "rm": RMConfig, "dpo": DPOConfig}[stage], data=raw)


def _train(rank, world_size, stage, raw, run_dir, train_ex, eval_ex):
    from rayrlhf.driver.train_stage import STAGES, make_task
    from rayrlhf.trainer.loop import WorkerInfo, train

    cfg = load_config(STAGES[stage], data=raw)
    return train(make_task(stage, cfg), cfg, train_ex, eval_ex, run_dir, WorkerInfo(rank, world_size))


def _run(stage, world, tmp_path, name, workers, strategy):
    run_dir = str(tmp_path / name)
    cfg = _cfg(stage, world, run_dir, strategy)
    prep = prepare(stage, cfg, resume=False)
    run_ranks(workers, _train, stage, to_dict(cfg), prep["run_dir"], prep["train"], prep["eval"],
              tmp_dir=str(tmp_path / f"{name}-ranks"))
    losses = [m["train/loss"] for m in read_metrics(run_dir) if "train/loss" in m]
    return losses, load_file(os.path.join(run_dir, "export", "model.safetensors")), run_dir


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_fsdp_two_ranks_equal_one_worker(stage, world, tmp_path):
    one, w1, _ = _run(stage, world, tmp_path, "one", 1, "ddp")
    two, w2, run_dir = _run(stage, world, tmp_path, "two", 2, "fsdp")
    assert len(one) == len(two) >= 5
    assert two == pytest.approx(one, abs=1e-4)
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 2e-4
    # The FSDP checkpoint is sharded: one file per rank.
    from rayrlhf import checkpoint as ckpt

    files = os.listdir(ckpt.latest_checkpoint(run_dir))
    assert {"model-rank0-of-2.safetensors", "model-rank1-of-2.safetensors"} <= set(files)
    # `rayrlhf export` joins the shards offline: the last checkpoint is the run's own export.
    from rayrlhf.cli import main

    assert main(["export", run_dir, "--out", str(tmp_path / "offline")]) == 0
    offline = load_file(str(tmp_path / "offline" / "model.safetensors"))
    assert offline.keys() == w2.keys() and all(torch.equal(offline[k], w2[k]) for k in w2)


def test_fsdp_loop_resumes_exactly(world, tmp_path):
    """Killed after a checkpoint, resumed on the same 2 ranks: the same weights, bitwise."""
    _, full, _ = _run("sft", world, tmp_path, "full", 2, "fsdp")
    run_dir = str(tmp_path / "cut")
    cfg = _cfg("sft", world, run_dir, "fsdp")
    prep = prepare("sft", cfg, resume=False)
    args = (to_dict(cfg), prep["run_dir"], prep["train"], prep["eval"])
    # 2 micro-batches per rank and step: the 7th loss call is in step 4, after step 3's checkpoint.
    with pytest.raises(AssertionError, match="killed"):
        run_ranks(2, _train_crashing, *args, 7, tmp_dir=str(tmp_path / "c1"))
    prep = prepare("sft", cfg, resume=True)
    run_ranks(2, _train_crashing, to_dict(cfg), prep["run_dir"], prep["train"], prep["eval"], 0,
              tmp_dir=str(tmp_path / "c2"))
    again = load_file(os.path.join(run_dir, "export", "model.safetensors"))
    assert all(torch.equal(full[k], again[k]) for k in full)


def _train_crashing(rank, world_size, raw, run_dir, train_ex, eval_ex, crash_at):
    """The SFT loop, raising on every rank at loss call ``crash_at`` (0: never; then it resumes)."""
    from rayrlhf.trainer.loop import WorkerInfo, train
    from rayrlhf.trainer.sft import SFTTask

    cfg = load_config(SFTConfig, data=raw)
    task = SFTTask(cfg)
    real, calls = task.loss, [0]

    def loss(*a):
        calls[0] += 1
        if calls[0] == crash_at:
            raise RuntimeError("killed")
        return real(*a)

    task.loss = loss
    return train(task, cfg, train_ex, eval_ex, run_dir, WorkerInfo(rank, world_size), resume=not crash_at)


def test_dpo_on_two_ddp_ranks_is_the_whole_batch_loss_and_update(world, tmp_path):
    """Each rank scores its share of the reference and its half of every batch; the loss summed
    over ranks and the update are the whole batch's."""
    one, w1, _ = _run("dpo", world, tmp_path, "one", 1, "ddp")
    two, w2, _ = _run("dpo", world, tmp_path, "two", 2, "ddp")
    assert len(one) == len(two) >= 5
    assert two == pytest.approx(one, abs=1e-5)
    # Adam divides by sqrt(v): a 1e-7 difference in summation order grows to ~1.6e-5 in the weights
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 5e-5
