"""The data-parallel training loop every supervised stage shares (SFT, reward models, DPO).

It runs in each Ray Train worker (``train_loop_per_worker``) and, unchanged, in one plain
process (``world_size == 1``, no process group), the way Ray Train's quick start runs the
same function both ways. A *task* supplies what differs between stages: how examples become
a batch, the loss, the evaluation sums and the export.

Determinism: the order of examples is a seeded permutation per epoch, and a global batch is
split across ranks by position (``batch[rank::world]``), so the data position is just the
optimizer step. Losses are normalised by the *global* batch's count (tokens or pairs), so the
sum over ranks equals the full-batch loss whatever the number of workers.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from rayrlhf import checkpoint as ckpt
from rayrlhf.engine import Engine, EngineSettings
from rayrlhf.metrics import MetricsLogger, run_settings
from rayrlhf.trainer.optim import build_scheduler
from rayrlhf.utils.fs import atomic_write_json, read_json
from rayrlhf.utils.progress import actor_progress


@dataclass
class WorkerInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    def all_reduce(self, values: dict[str, float]) -> dict[str, float]:
        """Sum a dict of numbers over ranks (same keys on every rank)."""
        if not self.distributed or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def gather(self, obj):
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_batch_indices(n: int, step: int, global_batch: int, seed: int) -> np.ndarray:
    """Example indices of optimizer step ``step`` (a trailing partial batch is skipped)."""
    per_epoch = n // global_batch
    epoch, pos = divmod(step, per_epoch)
    return epoch_order(n, seed, epoch)[pos * global_batch:(pos + 1) * global_batch]


def engine_settings(cfg, stage: str) -> EngineSettings:
    t = cfg.train
    return EngineSettings.from_model(
        cfg.model, role=stage, config_key="model", lr=t.lr, weight_decay=t.weight_decay, betas=tuple(t.betas),
        max_grad_norm=t.max_grad_norm, micro_batch_size=t.per_worker_micro_batch_size,
        forward_micro_batch_size=t.per_worker_micro_batch_size, wants_gpu=cfg.scaling.use_gpu)


def train(task, cfg, train_examples: list, eval_examples: list, run_dir: str, info: WorkerInfo,
          resume: bool = False, progress: bool = False) -> dict:
    """Train ``task`` on the examples; rank 0 writes metrics, checkpoints, export, summary.
    ``progress``: rank 0 shows a progress bar through Ray's tqdm instead of echoing metrics."""
    t_cfg, seed = cfg.train, cfg.run.seed
    torch.manual_seed(seed)
    world, G = info.world, t_cfg.global_batch_size
    mb = t_cfg.per_worker_micro_batch_size
    if G % (mb * world):
        raise ValueError(f"train.global_batch_size ({G}) must be a multiple of per_worker_micro_batch_size "
                         f"x num_workers ({mb} x {world})")
    steps_per_epoch = len(train_examples) // G
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_examples)} training examples are fewer than one global batch ({G})")
    total_steps = max(1, int(math.ceil(t_cfg.epochs * steps_per_epoch)))

    engine = Engine(task.build_model(), engine_settings(cfg, task.name), rank=info.rank, world=world,
                    device=info.device)
    engine.scheduler = build_scheduler(engine.optimizer, total_steps, t_cfg.warmup_ratio, t_cfg.lr_schedule,
                                       t_cfg.min_lr_ratio)
    if hasattr(task, "prepare_reference"):  # from the starting weights, so before a checkpoint loads
        task.prepare_reference(engine, info, train_examples, eval_examples)
    start_step, best, pending = 0, {}, None
    found = ckpt.latest_checkpoint(run_dir) if resume else None
    if found:
        old_lr = engine.load(found, "model")
        ckpt.load_rng(os.path.join(found, f"rng-rank{info.rank}.pt"))
        state = read_json(os.path.join(found, "state.json"))
        start_step, best = state["step"], state.get("summary", {})
        pending = ckpt.pending_evaluation(found)  # the step's evaluation failed: it runs first
        if old_lr is not None and info.rank == 0:
            print(f"[rayrlhf] train.lr is {t_cfg.lr:g}, the checkpoint's was {old_lr:g}: the steps from "
                  f"{start_step} on follow the schedule at the new peak", flush=True)
    skipped = int(best.get("train/skipped_steps", 0))  # logged at every checkpoint step
    skipped = int(pending.get("skipped", skipped)) if pending else skipped

    logger = MetricsLogger(run_dir, resume_step=start_step if found else None, echo=not progress,
                           **run_settings(cfg, task.name)) if info.rank == 0 else None
    bar = actor_progress(total_steps, start_step, os.path.basename(run_dir), enabled=progress and info.rank == 0)
    if logger and found:
        print(f"resumed from {found} at step {start_step}/{total_steps}"
              + (", whose held-out evaluation runs first" if pending else ""), flush=True)
    eval_every = t_cfg.eval_every or steps_per_epoch
    ckpt_every = t_cfg.checkpoint_every or steps_per_epoch
    log_every = max(1, t_cfg.log_every)
    acc: dict[str, float] = dict((pending or {}).get("acc", {}))  # sums since the last logged step
    t_last = time.perf_counter()
    if pending:
        metrics = {**pending["metrics"], **evaluate(task, engine, eval_examples, info, mb)}
        if logger:
            logger.log(start_step, metrics)
        best = _summary_update(best, metrics)
        if start_step % ckpt_every == 0 or start_step == total_steps:  # the checkpoint that step writes
            _save(run_dir, start_step, engine, info, best, t_cfg.keep_checkpoints)
    for step in range(start_step, total_steps):
        batch_idx = global_batch_indices(len(train_examples), step, G, seed)
        global_examples = [train_examples[i] for i in batch_idx]
        normalizer = task.normalizer(global_examples)
        mine = global_examples[info.rank::world]
        micro = [task.collate(mine[i:i + mb]) for i in range(0, len(mine), mb)]
        sums = engine.step_micro(micro, lambda model, batch: task.loss(model, batch, normalizer))
        grad_norm, skip = sums.pop("grad_norm"), sums.pop("skipped")
        if skip:  # the same on every rank: the engine's ranks agree before stepping
            skipped += 1
            if info.rank == 0:
                print(f"[rayrlhf] step {step + 1}: skipped the optimizer step: non-finite loss or gradient norm "
                      f"(grad norm {grad_norm}); weights, optimizer and schedule unchanged", flush=True)
        sums = info.all_reduce(sums)
        if not skip:  # a skipped step's (non-finite) sums stay out of the logged means
            for k, v in sums.items():
                acc[k] = acc.get(k, 0.0) + v
        done = step + 1
        metrics = {}
        if done % log_every == 0 or done % ckpt_every == 0 or done == total_steps:
            now = time.perf_counter()
            if acc:  # empty when every step since the last log was skipped
                metrics.update(task.train_metrics(acc))
            metrics.update({"train/lr": engine.scheduler.get_last_lr()[0], "train/grad_norm": grad_norm,
                            "train/epoch": done / steps_per_epoch, "train/skipped_steps": float(skipped),
                            "timing/step": (now - t_last) / log_every})
            acc, t_last = {}, now
        if done % eval_every == 0 or done == total_steps:
            # A failed evaluation checkpoints the step's training first (checkpoint.evaluate_or_keep).
            metrics.update(ckpt.evaluate_or_keep(
                lambda: evaluate(task, engine, eval_examples, info, mb), done, metrics,
                lambda p: _save(run_dir, done, engine, info, best, t_cfg.keep_checkpoints, {**p, "acc": acc, "skipped": skipped}),
                announce=info.rank == 0))
        if logger and metrics:
            logger.log(done, metrics)
        bar.update(1, metrics)
        if metrics:
            best = _summary_update(best, metrics)
        if done % ckpt_every == 0 or done == total_steps:
            _save(run_dir, done, engine, info, best, t_cfg.keep_checkpoints)
    bar.close()
    summary = dict(best, steps=total_steps, examples_train=len(train_examples), examples_eval=len(eval_examples))
    engine.export(task.tokenizer, os.path.join(run_dir, "export"), task.export_info(summary))
    if info.rank == 0:
        atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
        logger.close()
    info.barrier()
    return summary


def evaluate(task, engine: Engine, examples: list, info: WorkerInfo, mb: int) -> dict:
    """Sums over this rank's share of ``examples``, added over ranks. Every rank runs the same
    number of micro-batches (a sharded model gathers its layers in each): a rank whose share
    ran out repeats a batch it has, or the first example, and discards the result."""
    if not examples:
        return {}
    mine = examples[info.rank::info.world]
    chunks = math.ceil(math.ceil(len(examples) / info.world) / mb)
    sums: dict[str, float] = {k: 0.0 for k in task.eval_keys()}

    def fn(model, batch):
        return task.eval_sums(model, batch)

    for i in range(chunks):
        part = mine[i * mb:(i + 1) * mb]
        out = engine.evaluate_batch(task.collate(part or examples[:1]), fn)
        if part:
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    return task.eval_metrics(info.all_reduce(sums))


def _save(run_dir, step, engine: Engine, info: WorkerInfo, summary, keep, eval_pending: dict | None = None):
    """Every rank writes its part (the whole model on rank 0 under ddp, its shards under fsdp)
    into rank 0's temporary folder, which becomes the checkpoint once all are done; returns it
    (on rank 0). ``eval_pending``: the step's evaluation failed (its metrics so far and the
    sums not yet logged), as ``checkpoint.EVAL_PENDING``; a resumed run evaluates it first."""
    def write(tmp):
        engine.save(tmp, "model")
        ckpt.save_rng(os.path.join(tmp, f"rng-rank{info.rank}.pt"))
        info.barrier()

    folder = None
    if info.rank == 0:
        def fill(tmp):
            info.broadcast(tmp)
            write(tmp)
            if eval_pending is not None:
                atomic_write_json(os.path.join(tmp, ckpt.EVAL_PENDING), eval_pending)

        folder = ckpt.write_checkpoint(run_dir, step, fill, {"summary": summary}, keep=keep)
    else:
        write(info.broadcast(None))
    info.barrier()
    return folder


def _summary_update(summary: dict, metrics: dict) -> dict:
    """Keep the latest value of every eval/ and train/ metric."""
    out = dict(summary)
    out.update({k: v for k, v in metrics.items() if k.startswith(("eval/", "train/"))})
    return out
