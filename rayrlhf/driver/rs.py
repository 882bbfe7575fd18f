"""`rayrlhf rs`: best-of-K rejection sampling in rounds (Llama 2, section 3.2.3), and online
DPO and RRHF in the same rounds.

Each round is a short dataflow of named, timed phases:

    generate (K samples per prompt, vLLM's n=K) -> reward (every source, combined)
      -> select -> [reference] -> finetune -> sync (new weights to the rollout workers, verified)

so the next round samples from the improved policy. What is selected and trained is
``rs.objective``'s: sft keeps the best top_m of each prompt's K and fine-tunes on them (NLL);
dpo pairs each prompt's best with its worst sample and takes a DPO step against the reference
model's logprobs of both (online / iterative DPO, as in Xiong et al. 2024); rrhf ranks all K
by reward and takes RRHF's ranking + SFT loss (Yuan et al. 2023, online). Before the first
round the driver measures the best-of-K curve of the starting policy (Gao et al. 2022): the
expected proxy and gold reward of the best of k samples against the analytic KL of best-of-k,
log k - (k-1)/k.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from rayrlhf.actors.batch import as_lists, build_batch, select_rows, split_rows
from rayrlhf.config.ppo import PROBE_ATOL, EvalSection
from rayrlhf.algo.hacking import HackingWatch
from rayrlhf.algo.best_of_k import analytic_best_of_k_kl, best_of_k_stats, expected_best_of_k, select_best_of_k
from rayrlhf.algo.intervals import interval, interval_keys, paired_interval
from rayrlhf.checkpoint import EVAL_PENDING, evaluate_or_keep, pending_evaluation
from rayrlhf.driver.common import (PromptOrder, Timer, add_gains, load_loop_checkpoint, reference_logprobs,
                                   save_loop_checkpoint, sync_policy)
from rayrlhf.driver.controller import ScalingControl
from rayrlhf.driver.fleet import get
from rayrlhf.driver.scoring import evaluate, resolve_gold, score_samples
from rayrlhf.metrics import MetricsLogger, run_settings
from rayrlhf.utils.fs import atomic_write_json, atomic_write_text

CURVE_PURPOSE = 0xC0


class RSDriver:
    def __init__(self, cfg, run_dir: str, roles, prompts: list, eval_prompts: list, tokenizer):
        from rayrlhf.data.tokenize import render_prompt

        self.cfg, self.run_dir, self.roles, self.r = cfg, run_dir, roles, cfg.rs
        self.prompts, self.eval_prompts, self.tokenizer = prompts, eval_prompts, tokenizer
        self.prompt_ids = [render_prompt(tokenizer, r.prompt) for r in prompts]
        self.eval_ids = [render_prompt(tokenizer, r.prompt) for r in eval_prompts]
        self.order = PromptOrder(len(prompts), self.r.prompts_per_round, cfg.run.seed)
        self.gold = resolve_gold(cfg.gold)
        self.fleet = roles.fleet
        self.timeout = self.r.call_timeout_s
        self.version = 0
        self.samples: dict[str, list] = {}
        self.history: dict[str, list[float]] = {}
        self.eval_pending: dict | None = None  # a resumed run's evaluation still to do (checkpoint.EVAL_PENDING)
        self.hacking = HackingWatch(self.r.hacking)
        self.done = 0

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        from rayrlhf.utils.progress import progress

        start = self._restore() if resume else 0
        fresh = start == 0
        if fresh:
            self._sync()
        logger = MetricsLogger(self.run_dir, resume_step=None if fresh else start, echo=not sys.stderr.isatty(),
                               **run_settings(self.cfg, "rs"))
        summary = {} if fresh else dict(self.resumed_summary)
        self.history = {k: list(v) for k, v in summary.get("rounds_history", {}).items()}
        self.hacking.load(summary.get("hacking_history", {}))
        stopped, self.done = None, start
        if fresh:
            if self.r.curve_k:
                summary.update(self.best_of_k_curve())
            before = self.evaluate()
            self.samples["before"] = self.samples.pop("after", [])
            summary.update({f"before/{k.split('/', 1)[1]}": v for k, v in before.items()})
            logger.log(0, before)
            logger.log_samples(0, self.samples["before"])
        bar = progress(total=self.r.rounds, initial=start, desc="rejection sampling")
        scaling = ScalingControl(self.roles.run_name, self.fleet)  # `rayrlhf scale` reaches the fleet
        try:
            scaling.start()
            if self.eval_pending:  # the evaluation a stopped run could not do: its round's training is in the checkpoint
                metrics, stopped = self.eval_pending["metrics"], self.eval_pending.get("stopped")
                metrics.update(self.evaluate())
                self._end_round(start, metrics, summary, logger)
            for rnd in range(start, self.r.rounds if not stopped else start):
                fleet_metrics = scaling.poll(rnd, self.version)
                metrics = self.round(rnd)
                metrics.update(fleet_metrics)
                done = self.done = rnd + 1
                if self.hacking.observe(done, metrics, "round", "rs"):
                    stopped = done
                if done % self.r.eval_every == 0 or done == self.r.rounds or stopped:
                    metrics.update(evaluate_or_keep(
                        self.evaluate, done, metrics,
                        lambda pending: self._checkpoint(done, {**summary, "hacking_history": self.hacking.state()},
                                                         {**pending, "stopped": stopped})))
                self._end_round(done, metrics, summary, logger)
                bar.update(1, {"rollout/reward_mean": metrics.get("rs/kept_reward", float("nan"))})
                self._checkpoint(done, summary)
                if stopped:
                    break
        finally:
            scaling.stop()
            bar.close()
            logger.close()
        get(self.roles.policy_leader.export.remote(os.path.join(self.run_dir, "export"),
                                                      {"stage": "rs", "objective": self.r.objective,
                                                       "rounds": self.done}),
            self.timeout, "policy/0 in phase export")
        summary.update({"rounds": self.done, "objective": self.r.objective, "k": self.r.k, "top_m": self.r.top_m,
                        "rollout/worker_restarts": self.fleet.restarts, "hacking/fired_at": self.hacking.fired_at,
                        "stopped_early_at": stopped})
        add_gains(summary)
        atomic_write_json(os.path.join(self.run_dir, "summary.json"), summary)
        return summary

    def round(self, rnd: int) -> dict:
        """One round: K samples per prompt, the objective's selection, one training pass,
        weights synced. A round whose training is skipped (nothing selected, or a non-finite
        loss or gradient norm, which ``update`` undoes whole) says so, sets ``train/skipped``,
        and keeps the version: no sync."""
        t, t0, k = Timer(), time.perf_counter(), self.r.k
        rows = self.order.rows(rnd)
        with t("generate"):
            job = self.fleet.submit(rnd, rows, [self.prompt_ids[i] for i in rows], n=k)
            samples, _ = self.fleet.collect(job)
        for s in samples:
            s.prompt_index = job.prompt_rows[s.prompt_index]
        prompts = [self.prompts[s.prompt_index].prompt for s in samples]
        with t("reward"):
            scored = score_samples(self.roles, self.cfg.combine, self.gold, prompts, [s.text for s in samples],
                                   [self.prompts[s.prompt_index].meta for s in samples], self.timeout)
        if not torch.isfinite(scored.combined).all():
            bad = [i for i, v in enumerate(scored.combined.tolist()) if not np.isfinite(v)]
            raise RuntimeError(f"round {rnd + 1}: non-finite combined reward for samples {bad[:10]} "
                               f"(prompt rows {[samples[i].prompt_index for i in bad[:10]]})")
        with t("select"):
            lists, metrics = self.select(scored, k)
        self._write_kept(rnd, samples, scored, lists)
        skipped = "no sample was kept" if not lists else None
        if lists:
            flat = [i for lst in lists for i in lst]
            batch = build_batch([samples[i].prompt_ids for i in flat], [samples[i].response_ids for i in flat],
                                self.tokenizer.pad_token_id)
            if self.r.objective == "dpo":
                with t("reference"):
                    batch["ref_logps"] = reference_logprobs(self.roles, batch, self.timeout,
                                                            self.r.per_worker_micro_batch_size, 1.0).sum(-1)
            elif self.r.objective == "rrhf":
                batch["scores"] = scored.combined[torch.tensor(flat)]
            with t("finetune"):
                tuned = self._finetune(batch, rnd, len(lists[0]))  # sft: lists of 1
            metrics.update(tuned)
            if tuned["train/skipped"]:
                skipped = (f"non-finite loss or gradient norm in mini-batch {int(tuned.get('train/skipped_at', 0))}; "
                           "weights and optimizer state unchanged")
        if skipped:
            # All or nothing: no new weights, so no new version and nothing to sync.
            print(f"[rayrlhf] round {rnd + 1}: skipped the fine-tuning: {skipped}", flush=True)
            metrics["train/skipped"] = 1.0
        else:
            self.version += 1
            with t("sync"):
                metrics.update(self._sync())
        metrics.update(scored.metrics(self.r.hacking.agree_with))  # reward/*, rollout/reward_*, gold/*
        metrics.update({
            "rollout/samples": len(samples),
            "rollout/response_length": float(np.mean([len(s.response_ids) for s in samples])),
            "rollout/truncated_fraction": float(np.mean([s.finish_reason == "length" for s in samples])),
            "policy/version": float(self.version), **t.times, "timing/step": time.perf_counter() - t0})
        return metrics

    def select(self, scored, k: int) -> tuple[list[list[int]], dict]:
        """What the round trains on, as lists of flat sample indices, and the round's best-of-K
        statistics. sft: each kept sample its own list; dpo: [best, worst] of each prompt whose K
        do not all score the same; rrhf: each prompt's K. ``min_reward`` drops the prompts whose
        best scores below it. The ``rs/kept_*`` figures are those of the best (sft: kept) samples."""
        grouped = scored.combined.reshape(-1, k)  # (P, K)
        P, objective = grouped.shape[0], self.r.objective
        order = select_best_of_k(grouped, k, k if objective == "dpo" else self.r.top_m)  # (P, .), best first
        per_prompt = {"sft": lambda p: [[p * k + int(j)] for j in order[p]],
                      "dpo": lambda p: [[p * k + int(order[p, 0]), p * k + int(order[p, -1])]],
                      "rrhf": lambda p: [[p * k + j for j in range(k)]]}[objective]
        lists, kept, rejected, tied = [], [], 0, 0
        for p in range(P):
            best = float(grouped[p, order[p, 0]])
            if self.r.min_reward is not None and best < self.r.min_reward:
                rejected += 1
                continue
            if objective == "dpo" and best == float(grouped[p, order[p, -1]]):
                tied += 1  # no preference among this prompt's samples
                continue
            mine = per_prompt(p)
            lists.extend(mine)
            kept.extend([x[0] for x in mine] if objective == "sft" else [p * k + int(order[p, 0])])
        stats = best_of_k_stats(grouped)
        out = {f"rs/{'reward_' + n if n in ('mean', 'max', 'median') else n}": v for n, v in stats.items()}
        out.update({"rs/k": float(k), "rs/prompts": float(P), "rs/rejected_prompts": float(rejected),
                    "rs/kept": float(len(lists))})
        if objective == "dpo":
            out["rs/tied_prompts"] = float(tied)
            worst = [x[1] for x in lists]
            out["rs/pair_reward_gap"] = (float((scored.combined[kept] - scored.combined[worst]).mean())
                                         if lists else float("nan"))
        idx = torch.tensor(kept, dtype=torch.long)
        out["rs/kept_reward"] = float(scored.combined[idx].mean()) if kept else float("nan")
        for name, v in scored.raw.items():
            out[f"rs/kept_reward_{name}"] = float(v[idx].mean()) if kept else float("nan")
        for name, vals in scored.gold.items():
            out[f"rs/all_gold_{name}"] = float(np.mean(vals))
            out[f"rs/kept_gold_{name}"] = float(np.mean([vals[i] for i in kept])) if kept else float("nan")
        return lists, out

    # -- phases ------------------------------------------------------------------------------------
    def _finetune(self, batch: dict, rnd: int, group: int = 1) -> dict:
        """``epochs`` passes of mini-batch steps on the trainer group. ``group`` > 1: rows
        ``l * group + g`` are list l's responses (dpo, rrhf), split into mini-batches and ranks
        as whole lists, and each mini-batch's divisor is its list count (else its response
        tokens). A rank left without a list (or row) of a mini-batch gets a zero-weighted one."""
        pol = self.roles.policy
        n, G, world = batch["input_ids"].shape[0] // group, self.r.global_batch_size, pol.world_size

        def take(lists) -> dict:
            part = select_rows(batch, [int(i) * group + g for i in lists for g in range(group)])
            return part if group == 1 else as_lists(part, group)

        jobs, tokens = [[] for _ in range(world)], []
        for epoch in range(self.r.epochs):
            order = np.random.default_rng([self.cfg.run.seed, rnd, epoch, 11]).permutation(n)
            chunks = [order[i:i + G] for i in range(0, n, G)]
            if len(chunks) > 1 and len(chunks[-1]) < world:
                chunks[-2:] = [np.concatenate(chunks[-2:])]  # a trailing mini-batch too small to share out
            for mb in chunks:
                tokens.append(float(batch["response_mask"][mb].sum()) if group == 1 else float(len(mb)))
                for rank, part in enumerate(split_rows(len(mb), world)):
                    if part:
                        jobs[rank].append(take(mb[part]))
                    else:
                        # Fewer rows than ranks: this rank takes part in the step (its
                        # collectives must match the others') with a row weighted zero.
                        pad = take(mb[:1])
                        pad["response_mask"] = torch.zeros_like(pad["response_mask"])
                        jobs[rank].append(pad)
        outs = get([a.update.remote(j, tokens) for a, j in zip(pol.actors, jobs)], self.timeout,
                   "policy in phase finetune")
        keys = set().union(*outs)
        return {f"train/{key}": float(np.mean([o[key] for o in outs if key in o])) for key in keys}

    def _sync(self) -> dict:
        res = self.cfg.resources
        return sync_policy(self.roles, self.version, self.prompt_ids, self.timeout, verify=True,
                           atol=PROBE_ATOL[self.cfg.policy.dtype],
                           backend="nccl" if res.trainer.gpus_per_worker and not res.fake_gpus else "gloo")

    def _write_kept(self, rnd: int, samples, scored, lists: list[list[int]]) -> None:
        """The round's training data as a dataset any stage reads: chat demonstrations (sft),
        prompt/chosen/rejected pairs (dpo, for `rayrlhf dpo` or an RM), or ranked rows with
        their scores (rrhf, for `rayrlhf rrhf`)."""
        import json

        objective, lines = self.r.objective, []
        for lst in lists:
            s = samples[lst[0]]
            rec = self.prompts[s.prompt_index]
            if objective == "sft":
                row = {"messages": list(rec.prompt) + [{"role": "assistant", "content": s.text}],
                       "reward": float(scored.combined[lst[0]]),
                       "scores": {name: float(v[lst[0]]) for name, v in scored.raw.items()}}
                row.update({f"gold_{name}": vals[lst[0]] for name, vals in scored.gold.items()})
            elif objective == "dpo":
                c, r = lst
                row = {"prompt": list(rec.prompt), "chosen": samples[c].text, "rejected": samples[r].text,
                       "chosen_reward": float(scored.combined[c]), "rejected_reward": float(scored.combined[r])}
                row.update({f"chosen_gold_{name}": vals[c] for name, vals in scored.gold.items()})
                row.update({f"rejected_gold_{name}": vals[r] for name, vals in scored.gold.items()})
            else:
                row = {"prompt": list(rec.prompt), "responses": [samples[i].text for i in lst],
                       "scores": [float(scored.combined[i]) for i in lst]}
                row.update({f"gold_{name}": [vals[i] for i in lst] for name, vals in scored.gold.items()})
            row["prompt_row"] = s.prompt_index
            lines.append(json.dumps(row))
        path = os.path.join(self.run_dir, "kept", f"round-{rnd + 1:04d}.jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))

    def _end_round(self, done: int, metrics: dict, summary: dict, logger) -> None:
        """Log round ``done`` and carry its figures into the histories and the summary."""
        logger.log(done, metrics)
        if any(k.startswith("eval/") for k in metrics):
            logger.log_samples(done, self.samples.get("after", []))
        for key in ("rs/kept_reward", "rs/reward_mean", "rs/reward_max", "rs/kept_gold_reward",
                    "eval/gold_reward", "eval/reward"):
            if key in metrics:
                self.history.setdefault(key, []).append(metrics[key])
        summary.update({k: v for k, v in metrics.items() if k.startswith("eval/")})
        summary["rounds_history"] = self.history
        summary["hacking_history"] = self.hacking.state()

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        out, examples = evaluate(self.roles, self.cfg.combine, self.gold, self.eval_prompts, self.eval_ids,
                                 self.timeout, self.cfg.eval, self.run_dir)
        self.samples["after"] = examples
        return out

    def best_of_k_curve(self) -> dict:
        """Expected proxy and gold reward of best-of-k, k = 1..curve_k, on held-out prompts."""
        return best_of_k_curve(self.roles, self.cfg.combine, self.gold, self.eval_prompts[: self.r.curve_prompts],
                               self.eval_ids[: self.r.curve_prompts], self.r.curve_k, self.timeout, self.run_dir,
                               self.cfg.eval)

    # -- checkpoints -------------------------------------------------------------------------------
    def _checkpoint(self, rnd: int, summary: dict, eval_pending: dict | None = None) -> str:
        """``eval_pending``: the round's evaluation failed; a resumed run does it first."""
        return save_loop_checkpoint(self.run_dir, rnd, [self.roles.policy], self.fleet, {"version": self.version},
                                    self.r.keep_checkpoints, summary, self.timeout,
                                    files={EVAL_PENDING: eval_pending} if eval_pending else None)

    def _restore(self) -> int:
        loaded = load_loop_checkpoint(self.run_dir, [self.roles.policy], self.fleet, self.timeout)
        if not loaded:
            return 0
        found, state, self.resumed_summary = loaded
        self.eval_pending = pending_evaluation(found)
        self.version = state["version"]
        self._sync()
        print(f"[rayrlhf] resumed from {found} after round {state['step']}"
              + (", whose held-out evaluation runs first" if self.eval_pending else ""), flush=True)
        return int(state["step"])


def best_of_k_curve(roles, combine, gold_fns: dict, eval_prompts: list, eval_ids: list[list[int]], n: int,
                    timeout: float, out_dir: str | None = None, ev: EvalSection | None = None) -> dict:
    """Sample ``n`` responses per prompt once; the unbiased best-of-k estimator
    (``expected_best_of_k``) then gives every k <= n, each gold figure with its bootstrap
    interval over prompts (``ev``'s settings; ``gold_ci_low``, ``gold_ci_high``). Writes
    best_of_k_curve.json to ``out_dir``."""
    ev = ev or EvalSection()
    if not eval_prompts:
        return {}
    parts = roles.eval_generate(eval_ids, n=n, purpose=CURVE_PURPOSE)
    samples = [s for part in parts for s in part]
    P = len(eval_prompts)
    prompts = [eval_prompts[i // n].prompt for i in range(P * n)]
    meta = [eval_prompts[i // n].meta for i in range(P * n)]
    scored = score_samples(roles, combine, gold_fns, prompts, [s.text for s in samples], meta, timeout)
    proxy = scored.combined.reshape(P, n)
    ks = list(range(1, n + 1))
    curve = {"k": ks, "kl_nats": [analytic_best_of_k_kl(k) for k in ks],
             "proxy": [float(expected_best_of_k(proxy, k).mean()) for k in ks],
             "gold": {}, "prompts": P, "samples_per_prompt": n}
    unsafe = torch.tensor([bool(r.meta.get(combine.unsafe_field)) for r in eval_prompts])
    subsets = {"": torch.ones(P, dtype=torch.bool)}
    if 0 < int(unsafe.sum()) < P:
        subsets.update({"@safe": ~unsafe, "@unsafe": unsafe})
    curve.update(gold_ci_low={}, gold_ci_high={}, gold_last_minus_peak={})
    for name, v in scored.gold.items():
        values = torch.tensor(v).reshape(P, n)
        for tag, rows in subsets.items():
            per_prompt = [expected_best_of_k(proxy[rows], k, values[rows]).tolist() for k in ks]
            per_k = [interval(x, ev.interval, ev.bootstrap, ev.seed) for x in per_prompt]
            for field_name, i in (("gold", 0), ("gold_ci_low", 1), ("gold_ci_high", 2)):
                curve[field_name][name + tag] = [c[i] for c in per_k]
            # Whether the gold reward falls past its peak: the largest k against the peak, paired by prompt.
            peak = max(range(len(ks)), key=lambda i: per_k[i][0])
            curve["gold_last_minus_peak"][name + tag] = list(
                paired_interval(per_prompt[-1], per_prompt[peak], ev.interval, ev.bootstrap, ev.seed))
    if out_dir:
        atomic_write_json(os.path.join(out_dir, "best_of_k_curve.json"), curve)
    out = {"curve/proxy@1": curve["proxy"][0], f"curve/proxy@{n}": curve["proxy"][-1]}
    for name in (k for k in curve["gold"] if "@" not in k):
        for at, i in (("1", 0), (str(n), -1)):
            out.update(interval_keys(f"curve/gold_{name}@{at}", curve["gold"][name][i], curve["gold_ci_low"][name][i],
                                     curve["gold_ci_high"][name][i]))
    return out
