"""What the preference-trained policy stages' tests share (DPO, RRHF): a small toyworld, a
stage config over its files, and a run of the shared loop in this process."""
import os

from rayrlhf.config import load_config
from rayrlhf.driver.train_stage import STAGES, make_task, prepare
from rayrlhf.trainer.loop import WorkerInfo, train


def small_world(out) -> str:
    from rayrlhf.driver.toyworld_stage import ToyworldConfig, run_toyworld
    from rayrlhf.models.tiny import TinyModelSpec

    run_toyworld(ToyworldConfig(out=str(out), n_sft=64, n_pref=96, n_prompts=20, n_eval_prompts=10, vocab_size=300,
                                model=TinyModelSpec(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128)))
    return str(out)


def stage_cfg(stage: str, world: str, run_dir: str, train_file: str, section: dict):
    """2 epochs at lr 3e-3, global batches of 16 in micro-batches of 8, a checkpoint every 4 steps."""
    return load_config(STAGES[stage], data={
        "model": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [train_file], "eval": [f"{world}/data/pref_helpfulness_eval.jsonl"]},
        "train": {"epochs": 2, "lr": 3e-3, "global_batch_size": 16, "per_worker_micro_batch_size": 8,
                  "log_every": 1, "checkpoint_every": 4},
        stage: section, "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir)},
    })


def run_stage(stage: str, cfg, resume=False, task=None):
    """(summary, prepared data, task) of one run on one rank."""
    prep = prepare(stage, cfg, resume=resume)
    task = task or make_task(stage, cfg)
    return train(task, cfg, prep["train"], prep["eval"], prep["run_dir"], WorkerInfo(), resume=resume), prep, task


def check_resumes_exactly(stage: str, cfg, full_dir: str) -> dict:
    """Kill ``cfg``'s run inside step 6 (after the step-4 checkpoint), resume it: its metrics
    and exported weights equal the uninterrupted run's in ``full_dir``. Returns the prepared data
    of the resumed run."""
    import pytest
    import torch
    from safetensors.torch import load_file

    from rayrlhf import checkpoint as ckpt
    from rayrlhf.metrics import read_metrics
    from tests.trainer.test_loop import CrashAt, _comparable

    run_dir = os.path.join(cfg.run.output_dir, cfg.run.name)
    with pytest.raises(RuntimeError, match="killed"):
        run_stage(stage, cfg, task=CrashAt(make_task(stage, cfg), n=5 * 2 + 1))
    assert os.path.basename(ckpt.latest_checkpoint(run_dir)) == "step-00000004"
    _, prep, _ = run_stage(stage, cfg, resume=True)
    assert _comparable(read_metrics(run_dir)) == _comparable(read_metrics(full_dir))
    a = load_file(os.path.join(full_dir, "export", "model.safetensors"))
    b = load_file(os.path.join(run_dir, "export", "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return prep
