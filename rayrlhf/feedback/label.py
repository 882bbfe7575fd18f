"""`rayrlhf label`: an AI judge on the rollout fleet labels preference pairs.

Writes to the run folder:
    labels.jsonl   one explicit preference row per pair: the judge's winner as ``chosen``,
                   ``p_chosen`` (its probability, averaged over both orders), ``confidence``
                   (|2 p - 1|), the judge's detail (each order, principle, rationale), whether
                   it agrees with the file's own order (``input_agrees``), the file's margin label
                   (``input_margin``), and every other column of the row (``*_chosen`` /
                   ``*_rejected`` columns follow their response). `rayrlhf rm` and `rayrlhf dpo`
                   read it; their losses use ``p_chosen`` as a soft label.
    summary.json   agreement with the file's labels and (where rows carry gold scores) with gold,
                   overall and per margin level, from both orders averaged and from one order
                   (each pair in a seeded random order); the judge's position bias.
"""
from __future__ import annotations

import json
import math
import os
import random

import torch

from rayrlhf.algo.judging import position_stats
from rayrlhf.data.schema import MARGIN_LEVELS
from rayrlhf.feedback.judge import Judge, Labels
from rayrlhf.utils.fs import atomic_write_json, atomic_write_text
from rayrlhf.utils.ray_init import run_name_of


def read_pairs(data) -> list:
    """Every pair of ``data.pairs``, or one DataValidationError listing every problem."""
    from rayrlhf.data.problems import Problem
    from rayrlhf.data.validate import DataValidationError, validate_source

    records, problems = [], []
    for source in data.pairs:
        result, found = validate_source(source, "preference", format=data.format, split=data.split, limit=data.limit,
                                        columns=getattr(data, "columns", None))
        if result.kind != "preference" and not found:
            found = [Problem(str(source), 0, "<source>", f"read as {result.kind} data; label needs preference pairs")]
        records += result.records
        problems += found
    if problems:
        raise DataValidationError(problems)
    return records


def one_order(p_ab: torch.Tensor, p_ba: torch.Tensor, seed: int) -> torch.Tensor:
    """P(a preferred) from one order only, each pair shown a-first or b-first by a seeded coin:
    what a judge asked once, in the order the data happened to come in, would say."""
    rng = random.Random(f"label/one-order/{seed}")
    a_first = torch.tensor([rng.random() < 0.5 for _ in range(len(p_ab))])
    return torch.where(a_first, p_ab, 1.0 - p_ba)


def _agreement(p: torch.Tensor, target: torch.Tensor) -> float:
    """Share of pairs where P(a preferred) picks ``target`` (True: a); a 0.5 counts half."""
    if p.numel() == 0:
        return float("nan")
    right = torch.where(p == 0.5, 0.5, ((p > 0.5) == target).double())
    return float(right.mean())


def _gold_diff(record) -> float:
    gc, gr = record.meta.get("gold_chosen"), record.meta.get("gold_rejected")
    return float(gc) - float(gr) if gc is not None and gr is not None else float("nan")


def summarize(records: list, labels: Labels, both: bool, seed: int) -> dict:
    """Agreement with the input order and gold, overall and per margin level, and position bias."""
    views = {"": labels.p_a}
    if both:
        views["_one_order"] = one_order(labels.p_ab, labels.p_ba, seed)
    gold = torch.tensor([_gold_diff(r) for r in records], dtype=torch.float64)
    has_gold = torch.isfinite(gold) & (gold != 0)
    levels = [r.margin_label for r in records]
    out = {"label/pairs": len(records), "label/p_chosen_mean": float(torch.maximum(labels.p_a, 1 - labels.p_a).mean()),
           "label/choice_mass": float(labels.mass.mean())}
    if both:
        out.update({f"label/{k}": v for k, v in position_stats(labels.p_ab, labels.p_ba).items()})
    ones = torch.ones(len(records), dtype=torch.bool)
    for suffix, p in views.items():
        out[f"label/agreement_input{suffix}"] = _agreement(p, ones)
        if has_gold.any():
            out[f"label/agreement_gold{suffix}"] = _agreement(p[has_gold], gold[has_gold] > 0)
        for level in MARGIN_LEVELS:
            at = torch.tensor([lv == level for lv in levels])
            if not at.any():
                continue
            slug = level.replace(" ", "_")
            out[f"label/agreement_input{suffix}@{slug}"] = _agreement(p[at], ones[at])
            if (at & has_gold).any():
                out[f"label/agreement_gold{suffix}@{slug}"] = _agreement(p[at & has_gold], gold[at & has_gold] > 0)
    if has_gold.any() or torch.isfinite(gold).any():
        out["label/gold_ties_left_out"] = int((gold == 0).sum())
    return out


def _swap_sides(meta: dict) -> dict:
    """Columns that belong to one response (gold_chosen, ...) follow it when the judge flips a pair."""
    out = {}
    for k, v in meta.items():
        if k.endswith("_chosen"):
            out[k[: -len("_chosen")] + "_rejected"] = v
        elif k.endswith("_rejected"):
            out[k[: -len("_rejected")] + "_chosen"] = v
        else:
            out[k] = v
    return out


def output_rows(records: list, labels: Labels) -> list[dict]:
    rows = []
    for i, r in enumerate(records):
        p = float(labels.p_a[i])
        keep = p >= 0.5
        # P(a | a first) = p_ab, P(a | a second) = 1 - p_ba; for b the other way round.
        p_ab, p_ba = float(labels.p_ab[i]), float(labels.p_ba[i])
        p_ba = None if math.isnan(p_ba) else p_ba
        flip = None if p_ba is None else 1.0 - p_ba
        shown_first, shown_second = (p_ab, flip) if keep else (p_ba, 1.0 - p_ab)
        judge = {"p_chosen_shown_first": shown_first, "p_chosen_shown_second": shown_second,
                 "choice_mass": float(labels.mass[i]), "principles": labels.principles[i]}
        if any(labels.rationales[i]):
            judge["rationales"] = labels.rationales[i]
        meta = {k: v for k, v in r.meta.items() if k not in ("prompt", "chosen", "rejected")}
        row = {"prompt": r.prompt,
               "chosen": r.chosen if keep else r.rejected, "rejected": r.rejected if keep else r.chosen,
               "p_chosen": max(p, 1.0 - p), "confidence": abs(2.0 * p - 1.0), "judge": judge,
               "input_agrees": keep, **(meta if keep else _swap_sides(meta))}
        if r.margin_label is not None or r.margin is not None:
            row["input_margin"] = r.margin_label if r.margin_label is not None else r.margin
        if r.source is not None:
            row["source"] = f"{r.source.file}:{r.source.line}"
        rows.append(row)
    return rows


def _part(prepared: tuple, start: int, stop: int, n: int, both: bool) -> tuple:
    """Pairs start..stop of ``Judge.prepare``'s output over all n pairs (a first, then b first)."""
    seqs, choices, principles, rationales = prepared
    at = list(range(start, stop)) + (list(range(n + start, n + stop)) if both else [])
    return [seqs[i] for i in at], [choices[i] for i in at], principles[start:stop], [rationales[i] for i in at]


def label_all(judge: Judge, records: list, both: bool, per_call: int, report=print, prepared=None) -> Labels:
    """The judge's labels of every record, ``per_call`` pairs per call to it; ``prepared``:
    ``judge.prepare``'s output over all of them (start 0), scored as is instead of built again."""
    parts = []
    for start in range(0, len(records), per_call):
        chunk = records[start:start + per_call]
        if prepared is not None:
            parts.append(judge.verdicts(_part(prepared, start, start + len(chunk), len(records), both), both))
        else:
            where = [f"{r.source.file}:{r.source.line}" if r.source else f"pair {start + i}"
                     for i, r in enumerate(chunk)]
            parts.append(judge.label([r.prompt for r in chunk], [r.chosen for r in chunk],
                                     [r.rejected for r in chunk], where, start, both))
        report(f"[rayrlhf] label: {min(start + per_call, len(records))}/{len(records)} pairs")
    return Labels.cat(parts)


def run_label(cfg, resume: bool = False) -> dict:
    """Check everything cheap (template, tokenizer, pairs, prompt lengths), start the judge's
    rollout workers, label every pair, write labels.jsonl and summary.json."""
    from rayrlhf.config.loader import ConfigError, check_before_start, save_config
    from rayrlhf.driver.roles import Roles
    from rayrlhf.feedback.template import load_template
    from rayrlhf.models import load_tokenizer
    from rayrlhf.utils.ray_init import ensure_ray

    run_dir = os.path.abspath(os.path.join(cfg.run.output_dir, cfg.run.name or "label"))
    if os.path.exists(os.path.join(run_dir, "labels.jsonl")) and not resume:
        raise SystemExit(f"{run_dir} already holds labels: set run.name, or pass --resume to label again")
    check_before_start(None, cfg)
    template = load_template(cfg.label.template)
    j = cfg.judge
    tokenizer = load_tokenizer(j.tokenizer or j.name_or_path, j.trust_remote_code, j.chat_template)
    records = read_pairs(cfg.data)
    both = cfg.label.orders == "both"
    prepared = None
    try:  # the template's choices are one token each and every prompt fits, before any actor starts
        checker = Judge(template, tokenizer, None, generate=lambda ids: [""] * len(ids), seed=cfg.run.seed,
                        max_len=cfg.rollout.max_model_len)
        if not template.chain_of_thought:
            prepared = checker.prepare([r.prompt for r in records], [r.chosen for r in records],
                                       [r.rejected for r in records],
                                       [f"{r.source.file}:{r.source.line}" for r in records], 0, both)
    except ValueError as e:
        raise ConfigError([str(e)], source=cfg.label.template) from None
    os.makedirs(run_dir, exist_ok=True)
    save_config(cfg, os.path.join(run_dir, "config.yaml"))
    ensure_ray()
    roles = Roles(cfg, run_name_of(run_dir), policy=None, critic=None, reference=None,
                  timeout=cfg.label.call_timeout_s, max_restarts=cfg.label.max_worker_restarts)
    try:
        judge = Judge(template, tokenizer, roles.fleet.choice_logprobs,
                      generate=lambda ids: [s.text for part in roles.eval_generate(ids, n=1) for s in part],
                      seed=cfg.run.seed, max_len=cfg.rollout.max_model_len)
        labels = label_all(judge, records, both, cfg.label.pairs_per_call, prepared=prepared)
    finally:
        roles.shutdown()
    rows = output_rows(records, labels)
    atomic_write_text(os.path.join(run_dir, "labels.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    summary = {"labels": os.path.join(run_dir, "labels.jsonl"), **summarize(records, labels, both, cfg.run.seed)}
    atomic_write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary
