"""Driver side of the supervised stages (`rayrlhf sft`, `rayrlhf rm`, `rayrlhf dpo`, `rayrlhf rrhf`).

Order of work, cheapest first: resolve the run folder, read and validate every data source
(all problems reported at once, before any Ray actor starts), tokenize, then hand the encoded
examples to a Ray Train ``TorchTrainer`` whose workers run ``rayrlhf.trainer.loop.train``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

from rayrlhf.config import DPOConfig, RMConfig, RRHFConfig, SFTConfig, save_config
from rayrlhf.data.validate import read_splits
from rayrlhf.utils.fs import atomic_write_json, read_json, recover_dir

STAGES = {"sft": SFTConfig, "rm": RMConfig, "dpo": DPOConfig, "rrhf": RRHFConfig}
KIND = {"sft": "sft", "rm": "preference", "dpo": "preference", "rrhf": "preference"}


def run_dir_of(stage: str, cfg) -> str:
    return os.path.abspath(os.path.join(cfg.run.output_dir, cfg.run.name or stage))


def make_task(stage: str, cfg):
    if stage == "sft":
        from rayrlhf.trainer.sft import SFTTask

        return SFTTask(cfg)
    if stage == "dpo":
        from rayrlhf.trainer.dpo import DPOTask

        return DPOTask(cfg)
    if stage == "rrhf":
        from rayrlhf.trainer.rrhf import RRHFTask

        return RRHFTask(cfg)
    from rayrlhf.trainer.rm import RMTask

    return RMTask(cfg)


def held_out(record, seed: int, fraction: float) -> bool:
    """A stable split by prompt, so no prompt sits on both sides of it."""
    key = json.dumps(record.prompt, sort_keys=True).encode("utf-8")
    h = int.from_bytes(hashlib.sha256(str(seed).encode() + b"/" + key).digest()[:8], "big")
    return (h % 1_000_000) < fraction * 1_000_000


def read_data(stage: str, cfg, tokenizer) -> tuple[list, list, dict]:
    """Read and validate train and eval sources; raise one error listing every problem."""
    d = cfg.data
    parts, report = read_splits(d, KIND[stage], tokenizer, max_response_tokens=d.max_response_tokens)
    train, evals = parts["train"], parts["eval"]
    if not evals and d.eval_fraction > 0:
        split = {True: [], False: []}
        for r in train:
            split[held_out(r, cfg.run.seed, d.eval_fraction)].append(r)
        evals, train = split[True], split[False]
        report["eval_split"] = f"{len(evals)} of {len(evals) + len(train)} records held out by prompt"
    report.update(train_records=len(train), eval_records=len(evals))
    return train, evals, report


def prepare(stage: str, cfg, resume: bool) -> dict:
    """Everything that happens before Ray: returns what the workers need."""
    run_dir = run_dir_of(stage, cfg)
    from rayrlhf import checkpoint as ckpt

    if os.path.isdir(run_dir):
        for c in ckpt.list_checkpoints(run_dir) + [os.path.join(run_dir, "export")]:
            recover_dir(c)
        if not resume and (ckpt.latest_checkpoint(run_dir) or os.path.exists(os.path.join(run_dir, "summary.json"))):
            raise SystemExit(f"{run_dir} already holds a run: pass --resume to continue it, "
                             "or set run.name to start a new one")
    from rayrlhf.config.loader import check_before_start

    check_before_start(stage, cfg)  # model paths, and the model fits each worker's GPU, before Ray Train starts
    task = make_task(stage, cfg)
    train_recs, eval_recs, report = read_data(stage, cfg, task.tokenizer)
    max_len = cfg.data.max_prompt_tokens + cfg.data.max_response_tokens + 1
    if stage == "sft":
        from rayrlhf.trainer.sft import encode_sft_records

        train_ex, t_stats = encode_sft_records(train_recs, task.tokenizer, max_len)
        eval_ex, _ = encode_sft_records(eval_recs, task.tokenizer, max_len)
    else:
        from rayrlhf.trainer.rm import encode_pair_records, length_baseline

        pair_cfg = cfg.reward if stage == "rm" else getattr(cfg, stage)  # the dpo or rrhf section
        train_ex, t_stats = encode_pair_records(train_recs, task.tokenizer, max_len, pair_cfg)
        eval_ex, _ = encode_pair_records(eval_recs, task.tokenizer, max_len, pair_cfg)
        if stage == "rm":
            report["eval_length_baseline_accuracy"] = length_baseline(eval_recs)
    report["encoding"] = t_stats
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    atomic_write_json(os.path.join(run_dir, "data_report.json"), report)
    return {"run_dir": run_dir, "train": train_ex, "eval": eval_ex, "report": report}


def _worker_loop(config: dict) -> None:
    """``train_loop_per_worker`` of the TorchTrainer."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from rayrlhf.config import load_config
    from rayrlhf.trainer.loop import WorkerInfo, train
    from rayrlhf.utils.quiet import quiet_libraries

    quiet_libraries()
    stage = config["stage"]
    cfg = load_config(STAGES[stage], data=config["cfg"])
    torch.set_num_threads(max(1, int(round(cfg.scaling.cpus_per_worker))))
    ctx = ray.train.get_context()
    info = WorkerInfo(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device())
    train_ex, eval_ex = ray.get(config["train"]), ray.get(config["eval"])
    summary = train(make_task(stage, cfg), cfg, train_ex, eval_ex, config["run_dir"], info,
                    resume=config["resume"], progress=config.get("progress", False))
    ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float))})


def run_train_stage(stage: str, cfg, resume: bool = False) -> dict:
    """Validate, tokenize, train on Ray Train, export; returns the run's summary."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayrlhf.config import to_dict
    from rayrlhf.utils.ray_init import ensure_ray

    prep = prepare(stage, cfg, resume)
    run_dir = prep["run_dir"]
    ensure_ray()
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker}
    trainer = TorchTrainer(
        _worker_loop,
        # A progress bar only where someone watches: tqdm lines would clutter CI logs.
        train_loop_config={"stage": stage, "cfg": to_dict(cfg), "run_dir": run_dir, "resume": resume,
                           "progress": sys.stderr.isatty(),
                           "train": ray.put(prep["train"]), "eval": ray.put(prep["eval"])},
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=f"{stage}-{os.path.basename(run_dir)}",
                             storage_path=os.path.join(run_dir, "ray_train"),
                             failure_config=FailureConfig(max_failures=0)),
    )
    trainer.fit()
    summary = read_json(os.path.join(run_dir, "summary.json"))
    summary["data"] = prep["report"]
    if "eval_length_baseline_accuracy" in prep["report"]:
        summary["eval/length_baseline_accuracy"] = prep["report"]["eval_length_baseline_accuracy"]
    atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary


def print_summary(stage: str, summary: dict, out=sys.stdout) -> None:
    keys = [k for k in summary if k.startswith("eval/")]
    print(f"[{stage}] " + ", ".join(f"{k}={summary[k]:.4g}" for k in sorted(keys)
                                    if isinstance(summary[k], (int, float))), file=out, flush=True)
