"""`rayrlhf ppo`: the PPO loop as a dataflow of named, timed phases.

    generate -> reward -> reference / logprobs / values -> advantages -> update -> sync

With ``ppo.advantage`` other than gae there is no critic: no values phase, and the update
trains the policy alone.

Actors do the model work (``rayrlhf.actors``); this driver only moves batches between them and
computes advantages with the pure functions of ``rayrlhf.algo``. Asynchronous mode keeps up to
``max_staleness`` further iterations of generation in flight while the trainer updates.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import sys
import time

import numpy as np
import torch

from rayrlhf.actors.batch import build_batch, select_rows, split_rows
from rayrlhf.algo.hacking import HackingWatch
from rayrlhf.algo.kl import make_kl_controller
from rayrlhf.config.ppo import probe_atol
from rayrlhf.checkpoint import EVAL_PENDING, evaluate_or_keep, pending_evaluation
from rayrlhf.driver.common import (PendingRows, PromptOrder, Timer, add_gains, load_loop_checkpoint,
                                   save_loop_checkpoint, submit_reference, sync_policy)
from rayrlhf.driver.controller import ScalingControl
from rayrlhf.driver.fleet import GenJob, get
from rayrlhf.driver.ppo_math import (behaviour_for_rows, behaviour_tensor, compute_advantages, engine_mismatch_kl,
                                     loss_divisor)
from rayrlhf.driver.scoring import evaluate, resolve_gold, score_samples
from rayrlhf.metrics import MetricsLogger, run_settings
from rayrlhf.rollout.types import Sample
from rayrlhf.utils.fs import atomic_write_json, read_json


INFLIGHT = "inflight.json"
"""The checkpoint's file of generation in flight: per job its step, prompt rows, version and samples."""


class BadStepError(RuntimeError):
    """Too many consecutive iterations with a non-finite reward or loss."""


class PPODriver:
    def __init__(self, cfg, run_dir: str, roles, prompts: list, eval_prompts: list, tokenizer):
        self.cfg, self.run_dir, self.roles = cfg, run_dir, roles
        self.p = cfg.ppo
        self.prompts, self.eval_prompts, self.tokenizer = prompts, eval_prompts, tokenizer
        self.prompt_ids = [self._render(r.prompt) for r in prompts]
        self.eval_ids = [self._render(r.prompt) for r in eval_prompts]
        self.kl_ctl = make_kl_controller(
            self.p.kl_controller, **({"kl_coef": self.p.kl_coef} if self.p.kl_controller == "fixed" else
                                     {"init_kl_coef": self.p.kl_coef, "target": self.p.kl_target,
                                      "horizon": self.p.kl_horizon}))
        self.fleet = roles.fleet
        self.scaling = ScalingControl(roles.run_name, self.fleet)  # `rayrlhf scale` reaches the fleet here
        self.version = 0
        self.step = 0
        self.bad_steps = 0
        self.pending: collections.deque = collections.deque()
        self.next_gen_step = 0
        self.counters = {"async/dropped_samples": 0, "rollout/prompts_used": 0}
        self.gold = resolve_gold(roles.gold)
        self.samples: dict[str, list] = {}  # held-out generations before / after
        self.timeout = self.p.call_timeout_s
        self.order = PromptOrder(len(prompts), self.p.prompts_per_step, cfg.run.seed)
        self.hacking = HackingWatch(self.p.hacking)
        self.eval_pending: dict | None = None  # a resumed run's evaluation still to do (checkpoint.EVAL_PENDING)

    def _render(self, messages):
        from rayrlhf.data.tokenize import render_prompt

        return render_prompt(self.tokenizer, messages)

    # -- data position ---------------------------------------------------------------------------
    def prompt_rows(self, step: int) -> list[int]:
        """Prompts of iteration ``step``: consecutive slices of a seeded order per epoch."""
        return self.order.rows(step)

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        from rayrlhf.utils.progress import progress

        start, restored = self._restore() if resume else (0, [])
        if start == 0:
            self._sync()
        logger = MetricsLogger(self.run_dir, resume_step=start if resume and start else None,
                               echo=not sys.stderr.isatty(), **run_settings(self.cfg, "ppo"))
        # Which prompts each iteration used: the record that no prompt is lost or used twice.
        self.ledger = MetricsLogger(self.run_dir, resume_step=start if resume and start else None, tensorboard=False,
                                    echo=False, filename="rollouts.jsonl", publish=False)
        summary = dict(self.resumed_summary) if resume and start else {}
        self.hacking.load(summary.get("hacking_history", {}))
        stopped = None
        if start == 0:
            before = self.evaluate()
            self.samples["before"] = self.samples.pop("after", [])
            summary.update({f"before/{k.split('/', 1)[1]}": v for k, v in before.items()})
            logger.log(0, before)
            logger.log_samples(0, self.samples["before"])
        self.step = start
        # Generation saved with the checkpoint: the jobs that were in flight, as they came out.
        self.pending = collections.deque(restored)
        self.next_gen_step = start + len(restored)
        bar = progress(total=self.p.total_steps, initial=start, desc="ppo")
        try:
            self.scaling.start()
            if self.eval_pending:  # the evaluation a stopped run could not do: its step's training is in the checkpoint
                metrics, stopped = self.eval_pending["metrics"], self.eval_pending.get("stopped")
                metrics.update(self.evaluate())
                self._end_step(start, metrics, summary, logger)
            for step in range(start, self.p.total_steps if not stopped else start):
                scaling = self.scaling.poll(step, self.version)  # add or remove rollout workers between iterations
                metrics = self.train_step(step)
                metrics.update(scaling)
                done = step + 1
                if self.hacking.observe(done, metrics, "step", "ppo"):
                    stopped = done
                last = done == self.p.total_steps or stopped == done
                self.step = done
                if done % self.p.eval_every == 0 or last:
                    metrics.update(self._evaluate_or_keep(done, metrics, summary, stopped))
                self._end_step(done, metrics, summary, logger)
                bar.update(1, metrics)
                if done % self.p.checkpoint_every == 0 or last:
                    self._checkpoint(done, summary)
                if stopped:
                    break
        finally:
            self.scaling.stop()
            bar.close()
            logger.close()
            self.ledger.close()
        policy0 = self.roles.policy_leader
        steps = self.step
        get(policy0.export.remote(os.path.join(self.run_dir, "export"), {"stage": "ppo", "steps": steps}),
            self.timeout, "policy/0 in phase export")
        summary.update({"steps": steps, **self.counters, "rollout/worker_restarts": self.fleet.restarts,
                        "hacking/fired_at": self.hacking.fired_at, "stopped_early_at": stopped})
        add_gains(summary)
        atomic_write_json(os.path.join(self.run_dir, "summary.json"), summary)
        return summary

    def _end_step(self, done: int, metrics: dict, summary: dict, logger) -> None:
        """Log iteration ``done`` and carry its held-out figures and histories into the summary."""
        logger.log(done, metrics)
        if any(k.startswith("eval/") for k in metrics):
            logger.log_samples(done, self.samples.get("after", []))
        summary.update({k: v for k, v in metrics.items() if k.startswith("eval/")})
        summary.update({f"last/{k}": v for k, v in metrics.items() if k.startswith(("kl/", "rollout/reward"))})
        summary["hacking_history"] = self.hacking.state()

    def _evaluate_or_keep(self, done: int, metrics: dict, summary: dict, stopped: int | None) -> dict:
        """The held-out evaluation of iteration ``done``; if it fails, the iteration's training is
        checkpointed first, with the evaluation marked as still to do (``evaluate_or_keep``)."""
        def save(pending):
            pending["stopped"] = stopped
            return self._checkpoint(done, {**summary, "hacking_history": self.hacking.state()}, pending)

        return evaluate_or_keep(self.evaluate, done, metrics, save)

    def train_step(self, step: int) -> dict:
        t = Timer()
        t0 = time.perf_counter()
        with t("generate"):
            samples, gen_metrics = self._next_samples(step)
        # Per sample: a replacement worker may have regenerated a shard with newer weights.
        staleness = torch.tensor([self.version - s.policy_version for s in samples])
        rows = [s.prompt_index for s in samples]
        batch = build_batch([s.prompt_ids for s in samples], [s.response_ids for s in samples],
                            self.tokenizer.pad_token_id)
        prompts = [self.prompts[r].prompt for r in rows]
        meta = [self.prompts[r].meta for r in rows]
        texts = [s.text for s in samples]
        with t("reward"):
            scores, reward_metrics = self.score(prompts, texts, meta)
        metrics = {**gen_metrics, **reward_metrics}
        bad = [i for i, v in enumerate(scores.tolist()) if not math.isfinite(v)]
        if bad:
            return self._bad_step(step, f"non-finite reward for samples {bad[:10]} (prompt rows "
                                        f"{[rows[i] for i in bad[:10]]})", metrics, t)
        with t("forwards"):
            # Reference logprobs, old logprobs and values depend on the batch only: all three
            # groups compute at once (on different cores or GPUs), then the driver collects.
            pending = [self._reference(batch), self._forward(self.roles.policy, batch, "policy")]
            if self.roles.critic is not None:
                pending.append(self._forward(self.roles.critic, batch, "critic"))
            ref_lp, old_lp, *rest = [p.result() for p in pending]
            values = rest[0] if rest else None
        with t("advantages"):
            engine_lp = behaviour_tensor([s.logprobs for s in samples], batch["response_mask"])
            stale = staleness > 0
            # KL(behaviour || trainer) over every sample: what importance weights correct; on
            # fresh samples (same weights on both sides) only the engines' numerics differ.
            metrics["rollout/mismatch_kl"] = engine_mismatch_kl(old_lp, engine_lp, batch["response_mask"])
            fresh_mask = batch["response_mask"] * (~stale).float()[:, None]
            if fresh_mask.sum() > 0:
                metrics["rollout/mismatch_kl_fresh"] = engine_mismatch_kl(old_lp, engine_lp, fresh_mask)
            tis = self.p.truncated_importance_sampling
            behaviour = behaviour_for_rows(engine_lp, old_lp, stale, tis) if tis or bool(stale.any()) else None
            adv = compute_advantages(scores, old_lp, ref_lp, values, batch["response_mask"], behaviour,
                                     self.kl_ctl.value, self.p.kl_estimator_used, self.p.kl_in, self.p.gamma, self.p.lam,
                                     self.p.whiten_advantages, self.p.importance_cap, self.p.advantage,
                                     self.cfg.rollout.n_samples, self.p.grpo_std_normalize)
        batch.update(old_logprobs=old_lp, ref_logprobs=ref_lp, advantages=adv["advantages"], returns=adv["returns"])
        if values is not None:
            batch["values"] = values
        with t("update"):
            upd = self._update(batch, step)
        failed = [r for r in ("actor", "critic") if upd.get(f"{r}/skipped")]
        if failed or not all(math.isfinite(v) for v in upd.values()):
            # All or nothing: the role whose update failed put its weights back itself; the
            # other one undoes its update too, so weights, optimizer state and version all stay
            # at this iteration's start and the next iteration's samples are truly fresh.
            trained = self._rollback(step)
            where = ", ".join(f"{r} mini-batch {int(upd.get(f'{r}/skipped_at', 0))}" for r in failed) or "stats"
            metrics.update({f"{r}/skipped": 1.0 for r in trained})
            return self._bad_step(step, f"non-finite loss or gradient norm ({where}: "
                                        f"{ {k: v for k, v in upd.items() if not math.isfinite(v)} }); policy and "
                                        f"critic weights, optimizer state and version unchanged", metrics, t)
        self.bad_steps = 0
        self.version += 1
        self.kl_ctl.update(float(adv["kl_per_response"].mean()), len(samples))
        if self.version % self.p.sync_every == 0:
            with t("sync"):
                metrics.update(self._sync())
        lengths = [len(s.response_ids) for s in samples]
        metrics.update(adv["stats"])
        metrics.update(upd)
        metrics.update({
            "rollout/samples": len(samples), "rollout/response_length": float(np.mean(lengths)),
            "rollout/truncated_fraction": float(np.mean([s.finish_reason == "length" for s in samples])),
            "async/staleness_mean": float(staleness.float().mean()), "async/staleness_max": float(staleness.max()),
            **{f"async/staleness@{k}": float((staleness == k).float().mean()) for k in range(int(staleness.max()) + 1)},
            "async/queue_depth": float(len(self.pending)), "policy/version": float(self.version),
            **self.counters,
        })
        metrics.update(t.times)
        metrics["timing/step"] = time.perf_counter() - t0
        if metrics.get("timing/step"):
            metrics["sync/share_of_step"] = metrics.get("timing/sync", 0.0) / metrics["timing/step"]
        return metrics

    def _bad_step(self, step: int, why: str, metrics: dict, t: Timer) -> dict:
        self.bad_steps += 1
        print(f"[rayrlhf] step {step + 1}: skipped the update: {why}", flush=True)
        if self.bad_steps >= self.p.max_bad_steps:
            raise BadStepError(f"{self.bad_steps} consecutive iterations had a non-finite reward or loss "
                               f"(last at step {step + 1}: {why}); stopping (ppo.max_bad_steps)")
        metrics.update(t.times)
        metrics["train/skipped"] = 1.0
        return metrics

    # -- phases --------------------------------------------------------------------------------------
    def _submit(self, step: int):
        rows = self.prompt_rows(step)
        return self.fleet.submit(step, rows, [self.prompt_ids[r] for r in rows])

    def _next_samples(self, step: int):
        if self.p.rollout_mode == "sync":
            job = self._submit(step)
        else:
            # Keep max_staleness + 1 iterations in flight: generation for the next iterations
            # runs on the rollout workers while the trainer updates on this one.
            while len(self.pending) < 1 + self.p.max_staleness and self.next_gen_step < self.p.total_steps:
                self.pending.append(self._submit(self.next_gen_step))
                self.next_gen_step += 1
            job = self.pending.popleft()
        samples, metrics = job.result if job.result is not None else self.fleet.collect(job)
        oldest = min((s.policy_version for s in samples), default=self.version)
        if self.p.rollout_mode == "async" and self.version - oldest > self.p.max_staleness:
            # Too old to use: drop and regenerate the same prompts (same seeds) now.
            self.counters["async/dropped_samples"] += len(samples)
            fresh = self.fleet.submit(step, job.prompt_rows, job.prompt_ids)
            samples, metrics = self.fleet.collect(fresh)
            job = fresh
        for s in samples:
            s.prompt_index = job.prompt_rows[s.prompt_index]
        self.counters["rollout/prompts_used"] += len(job.prompt_rows)
        self.ledger.log(step + 1, {"prompt_rows": job.prompt_rows, "samples": len(samples),
                                   "policy_version": job.version,
                                   "sample_versions": sorted({s.policy_version for s in samples})})
        return samples, metrics

    def score(self, prompts, texts, meta) -> tuple[torch.Tensor, dict]:
        """Every reward source's raw scores, then their combination (a pure function)."""
        scored = score_samples(self.roles, self.cfg.combine, self.gold, prompts, texts, meta, self.timeout)
        return scored.combined, scored.metrics(self.p.hacking.agree_with)

    # Policy and reference both under softmax(logits / T), the distribution the rollout sampled:
    # the KL is zero at step 0 whatever the temperature (the critic ignores T).
    def _forward(self, group, batch, what: str) -> PendingRows:
        return PendingRows(group, batch, what, self.timeout, self.p.forward_micro_batch_size,
                           self.cfg.rollout.temperature or 1.0)

    def _reference(self, batch) -> PendingRows:
        return submit_reference(self.roles, batch, self.timeout, self.p.forward_micro_batch_size,
                                self.cfg.rollout.temperature or 1.0)

    def _update(self, batch: dict, step: int) -> dict:
        """Clipped PPO on the policy group and the value loss on the critic group, together."""
        n = batch["input_ids"].shape[0]
        G = self.p.global_mini_batch_size
        pol, cri = self.roles.policy, self.roles.critic
        cri_size = cri.world_size if cri is not None else 0
        pol_jobs = [[] for _ in range(pol.world_size)]
        cri_jobs = [[] for _ in range(cri_size)]
        tokens, divisors = [], []
        for epoch in range(self.p.ppo_epochs):
            order = np.random.default_rng([self.cfg.run.seed, step, epoch, 7]).permutation(n)
            for start in range(0, n, G):
                mb = order[start:start + G]
                tokens.append(float(batch["response_mask"][mb].sum()))
                divisors.append(loss_divisor(batch["response_mask"][mb], self.p.loss_agg,
                                             self.cfg.rollout.max_new_tokens))
                for jobs, size in ((pol_jobs, pol.world_size), (cri_jobs, cri_size)):
                    if not size:
                        continue
                    for rank, part in enumerate(split_rows(len(mb), size)):
                        jobs[rank].append(select_rows(batch, mb[part]))
        refs = []
        train_policy = step >= self.p.critic_warmup_steps
        if train_policy:
            pol_divisors = None if self.p.loss_agg == "token_mean" else divisors
            refs += [a.update.remote(j, tokens, pol_divisors) for a, j in zip(pol.actors, pol_jobs)]
        if cri is not None:
            refs += [a.update.remote(j, tokens) for a, j in zip(cri.actors, cri_jobs)]
        outs = get(refs, self.timeout, "policy and critic in phase update")
        pol_outs = outs[:pol.world_size] if train_policy else []
        cri_outs = outs[pol.world_size if train_policy else 0:]
        out = {f"actor/{k}": v for k, v in _mean_dicts(pol_outs).items()}
        out.update({f"critic/{k}": v for k, v in _mean_dicts(cri_outs).items()})
        return out

    def _rollback(self, step: int) -> list[str]:
        """Undo this iteration's updates on every group that trained; the names undone."""
        groups = {"critic": self.roles.critic} if self.roles.critic is not None else {}
        if step >= self.p.critic_warmup_steps:
            groups = {"actor": self.roles.policy, **groups}
        get([a.rollback.remote() for g in groups.values() for a in g.actors], self.timeout,
            "policy and critic in phase rollback")
        return list(groups)

    def _sync(self) -> dict:
        res = self.cfg.resources
        backend = "nccl" if res.trainer.gpus_per_worker and not res.fake_gpus else "gloo"
        return sync_policy(self.roles, self.version, self.prompt_ids, self.timeout, verify=self.p.verify_sync,
                           mode=self.p.weight_sync, bucket_mb=self.p.sync_bucket_mb, atol=probe_atol(self.p.probe_atol, self.cfg.policy.dtype),
                           backend=backend)

    # -- evaluation -----------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Proxy and gold rewards of the current policy on the held-out prompts."""
        out, examples = evaluate(self.roles, self.cfg.combine, self.gold, self.eval_prompts, self.eval_ids,
                                 self.timeout, self.cfg.eval, self.run_dir)
        self.samples["after"] = examples
        return out

    # -- checkpoints ----------------------------------------------------------------------------------
    def _checkpoint(self, step: int, summary: dict, eval_pending: dict | None = None) -> str:
        """Everything a resumed run needs to continue as this one does: the trained groups, the
        loop's state, and the generation in flight (async), collected and saved as it came out,
        since a resumed run no longer has the older weights that produced it. The fleet is
        brought to the trainer's version first (with sync_every > 1 it may lag), as a resumed
        run's fleet starts at the checkpoint's weights. ``eval_pending``: the step's evaluation
        failed; a resumed run does it first (``checkpoint.EVAL_PENDING``). Returns the folder."""
        if self.fleet.version != self.version:
            self._sync()
        for job in self.pending:
            if job.result is None:
                job.result = self.fleet.collect(job)
        self.fleet.check_activations()
        inflight = [{"step": job.step, "prompt_rows": job.prompt_rows, "version": job.version,
                     "samples": [dataclasses.asdict(x) for x in job.result[0]]} for job in self.pending]
        state = {"version": self.version, "kl_controller": self.kl_ctl.state_dict(), "counters": self.counters,
                 "bad_steps": self.bad_steps}
        files = {INFLIGHT: inflight, **({EVAL_PENDING: eval_pending} if eval_pending else {})}
        return save_loop_checkpoint(self.run_dir, step, self._trained_groups(), self.fleet, state,
                                    self.p.keep_checkpoints, summary, self.timeout, files=files)

    def _trained_groups(self) -> list:
        """The groups a checkpoint holds: the policy, and the critic where there is one."""
        return [g for g in (self.roles.policy, self.roles.critic) if g is not None]

    def _restore(self) -> tuple[int, list[GenJob]]:
        """The step to go on from and the in-flight jobs saved with its checkpoint."""
        loaded = load_loop_checkpoint(self.run_dir, self._trained_groups(), self.fleet, self.timeout)
        if not loaded:
            return 0, []
        found, state, self.resumed_summary = loaded
        self.eval_pending = pending_evaluation(found)
        self.version = state["version"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.counters.update(state.get("counters", {}))
        self.bad_steps = state.get("bad_steps", 0)
        self._sync()
        path = os.path.join(found, INFLIGHT)
        restored = []
        for job in read_json(path) if os.path.exists(path) else []:
            g = GenJob(job["step"], job["prompt_rows"], [self.prompt_ids[r] for r in job["prompt_rows"]],
                       job["version"])
            g.result = ([Sample(**x) for x in job["samples"]], {})
            restored.append(g)
        print(f"[rayrlhf] resumed from {found} at step {state['step']}"
              + (f" with {len(restored)} iterations of generation saved in flight" if restored else "")
              + (", whose held-out evaluation runs first" if self.eval_pending else ""), flush=True)
        return int(state["step"]), restored


def _mean_dicts(dicts: list[dict]) -> dict:
    """Mean over ranks; each rank reports world x its share, so a loss's mean is the global loss."""
    if not dicts:
        return {}
    keys = set().union(*dicts)
    return {k: float(np.mean([d[k] for d in dicts if k in d])) for k in keys}
