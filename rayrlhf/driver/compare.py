"""`rayrlhf compare`: alignment methods from one starting policy, on one reward-KL frontier.

    rayrlhf compare --config jobs/toyworld_compare.yaml

The config is a pipeline (``stages``: the shared work, e.g. toyworld, SFT and the reward
models) plus a ``compare`` section: the starting policy, a list of methods, each a stage
``kind`` (ppo, rs, dpo, rrhf) with its config and a ``sweep`` of one key over several values
(a KL coefficient, beta, a learning rate, K), and the sample budget every online method gets
(``budget_samples``: PPO's steps and rejection sampling's rounds are set from it, so each run
generates the same number of samples). Each method-value pair runs as a pipeline stage
(``<method>@<value>``), so a rerun skips what has finished and resumes what has not.

Then one evaluator, the same for every policy (the starting one too), samples
``eval.samples_per_prompt`` responses per held-out prompt at temperature 1 and measures the
gold reward of each and its KL to the starting policy, log pi(y) - log ref(y) summed over the
response's tokens (a Monte Carlo estimate of KL(pi || ref), since y is drawn from pi). Every
figure is a mean over prompts with a 95% percentile-bootstrap interval over prompts; each gain
over the starting policy is paired by prompt. ``<run>/compare/`` holds ``frontier.json``, the
frontier plot (gold reward against KL, one line per method through its sweep, as in the DPO
paper's Figure 2) and ``index.html`` / ``report.md`` with the table: method, value, gold reward,
gain, KL, wall seconds, samples generated and examples trained on.
"""
from __future__ import annotations

import copy
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rayrlhf.config.loader import ConfigError, load_config
from rayrlhf.config.schema import RunSection
from rayrlhf.driver.pipeline import PipelineConfig, RaySection, StageSpec, _substitute, resolve_pipeline, run_stages
from rayrlhf.utils.fs import atomic_dir, atomic_write_json, read_json

ONLINE = ("ppo", "rs")


@dataclass
class SweepSection:
    key: str = ""
    """Dotted key of the method's stage config, e.g. ppo.kl_coef, dpo.beta, rs.lr, rs.k."""
    values: list[Any] = field(default_factory=list)
    """One run per value (empty: one run with the config as given)."""


@dataclass
class MethodSpec:
    name: str = ""
    """The method's label in the table and plot; its runs' folders are <name>@<value>."""
    kind: Literal["ppo", "rs", "dpo", "rrhf"] = "ppo"
    """The stage that runs it: ppo (PPO, GRPO, RLOO, REINFORCE++ by ppo.advantage), rs (rejection
    sampling, online DPO or online RRHF by rs.objective), dpo or rrhf (offline, on a file)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The stage's config, as its command takes it; the starting policy is set by compare.start."""
    sweep: SweepSection = field(default_factory=SweepSection)
    """The config key swept and its values (one run per value)."""

    def validate(self) -> list[str]:
        out = [] if self.name and "@" not in self.name and "/" not in self.name else [
            f"name: {self.name!r}; give each method a name without '@' or '/'"]
        if self.sweep.values and not self.sweep.key:
            out.append("sweep.key: required with sweep.values")
        return out


@dataclass
class CompareEvalSection:
    prompts: str = ""
    """Held-out prompts (any prompt format); ``{stage}`` references as in the stages."""
    limit: int = 200
    """Prompts used (the first ones)."""
    samples_per_prompt: int = 4
    """Responses sampled per prompt from every evaluated policy."""
    max_prompt_tokens: int = 96
    """A prompt over this many tokens is a problem reported before any training."""
    max_new_tokens: int = 32
    """Longest response sampled, in tokens."""
    backend: Literal["hf", "vllm", "auto"] = "hf"
    """Engine that samples the evaluated responses (every policy the same)."""
    interval: float = 0.95
    """Coverage of the percentile-bootstrap intervals over prompts."""
    bootstrap: int = 2000
    """Bootstrap resamples per interval."""
    seed: int = 0
    """Seed of the sampling and of the bootstrap."""


@dataclass
class CompareSection:
    start: str = ""
    """The policy every method starts from (an HF folder, e.g. "{sft}/export"); the KL of every
    evaluated policy is to it."""
    budget_samples: int = 0
    """Samples each online run generates for training (ppo.total_steps and rs.rounds are set
    from it; it must divide by a step's or round's samples); 0 keeps each config's own."""
    methods: list[MethodSpec] = field(default_factory=list)
    """The methods compared, each run once per value of its sweep."""
    gold: dict[str, str] = field(default_factory=dict)
    """Gold reward functions ("module:callable"): the evaluator's measure; "reward" is plotted."""
    eval: CompareEvalSection = field(default_factory=CompareEvalSection)

    def validate(self) -> list[str]:
        out = [] if self.start else ["start: required (the starting policy's folder)"]
        if not self.methods:
            out.append("methods: at least one method is required")
        if not self.gold:
            out.append("gold: at least one gold reward function is required to draw the frontier")
        names = [m.name for m in self.methods]
        out += [f"methods: {n!r} is used twice" for n in sorted({n for n in names if names.count(n) > 1})]
        return out


@dataclass
class CompareConfig:
    """`rayrlhf compare`: shared stages, then every method's runs, then one evaluation of all."""

    NAMED_LISTS = {"stages": "config"}
    """``stages.<name>.<key>=VALUE`` on the command line sets ``<key>`` in that stage's config."""

    run: RunSection = field(default_factory=lambda: RunSection(name="compare"))
    shared: dict[str, Any] = field(default_factory=dict)
    """Free-form: YAML anchors the methods reuse (``&online`` ... ``<<: *online``); read by nothing else."""
    stages: list[StageSpec] = field(default_factory=list)
    """Shared stages run first (toyworld, SFT, reward models); methods may reference them, {sft}."""
    compare: CompareSection = field(default_factory=CompareSection)
    ray: RaySection = field(default_factory=RaySection)


def _set(data: dict, dotted: str, value) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError([f"sweep.key {dotted}: {part!r} is a value, not a section"])
    node[last] = value


def _get(data: dict, dotted: str, default):
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def method_stages(cmp: CompareSection) -> list[tuple[MethodSpec, Any, StageSpec]]:
    """(method, swept value or None, its stage) for every run, with the starting policy and the
    sample budget applied; raises ConfigError naming the method when the budget does not divide."""
    from rayrlhf.config.ppo import PPOSection
    from rayrlhf.config.rs import RSSection
    from rayrlhf.rollout.config import RolloutSection

    out, problems = [], []
    for m in cmp.methods:
        for value in m.sweep.values or [None]:
            data = copy.deepcopy(m.config)
            if value is not None:
                _set(data, m.sweep.key, value)
            _set(data, "policy.name_or_path" if m.kind in ONLINE else "model.name_or_path", cmp.start)
            label = m.name if value is None else f"{m.name}@{value}"
            if cmp.budget_samples and m.kind in ONLINE:
                if m.kind == "ppo":
                    per = (_get(data, "ppo.prompts_per_step", PPOSection.prompts_per_step)
                           * _get(data, "rollout.n_samples", RolloutSection.n_samples))
                    key = "ppo.total_steps"
                else:
                    per = _get(data, "rs.prompts_per_round", RSSection.prompts_per_round) * _get(data, "rs.k", RSSection.k)
                    key = "rs.rounds"
                if cmp.budget_samples % per:
                    problems.append(f"methods.{label}: budget_samples {cmp.budget_samples} is not a multiple of "
                                    f"the {per} samples of one {'step' if m.kind == 'ppo' else 'round'}")
                    continue
                _set(data, key, cmp.budget_samples // per)
            out.append((m, value, StageSpec(name=label, kind=m.kind, config=data)))
    if problems:
        raise ConfigError(problems)
    return out


def load_compare(path: str | None, overrides: list[str] | None = None, data: dict | None = None):
    """The compare config, the pipeline it expands to (resolved and checked) and the runs."""
    cfg = load_config(CompareConfig, path, list(overrides or []), data=data)
    runs = method_stages(cfg.compare)
    taken = {s.name for s in cfg.stages}
    clash = [s.name for _, _, s in runs if s.name in taken]
    if clash:
        raise ConfigError([f"compare.methods: {clash} are also names of stages"], source=path)
    pipe = PipelineConfig(run=cfg.run, stages=list(cfg.stages) + [s for _, _, s in runs], ray=cfg.ray)
    problems = pipe.validate()
    if problems:
        raise ConfigError(problems, source=path)
    pipe_cfg, run_dir, configs = resolve_pipeline(pipe, path)
    return cfg, pipe_cfg, run_dir, configs, runs


def run_compare(path: str | None, overrides: list[str] | None = None, out=None, data: dict | None = None,
                rerun: str | None = None, from_stage: str | None = None) -> dict:
    """Run the compare pipeline's stages (``from_stage``: --from), then evaluate every policy."""
    out = out or sys.stdout
    cfg, pipe, run_dir, configs, runs = load_compare(path, overrides, data)
    folders = {"run": run_dir, **{s.name: os.path.join(run_dir, s.name) for s in pipe.stages}}
    cmp = cfg.compare
    start = _substitute(cmp.start, folders)
    prompts_path = _substitute(cmp.eval.prompts, folders)
    if os.path.exists(start) and os.path.exists(prompts_path):
        eval_prompts(prompts_path, start, cmp.eval)  # bad prompts stop the run before any training
    results = run_stages(pipe, run_dir, configs, out=out, rerun=rerun, start=from_stage)
    t0 = time.perf_counter()
    rows = [{"method": "start", "value": None, "policy": start, "seconds": 0.0, "generated": 0, "trained": 0}]
    for m, value, spec in runs:
        folder = os.path.join(run_dir, spec.name)
        rows.append({"method": m.name, "value": value, "kind": m.kind, "policy": os.path.join(folder, "export"),
                     "seconds": results[spec.name].get("seconds"), **_budget(m.kind, folder, results[spec.name])})
    figures = evaluate_policies([r["policy"] for r in rows], start, prompts_path, cmp.gold, cmp.eval)
    base = figures[0]
    for row, fig in zip(rows, figures):
        row.update(summarise(fig, base, cmp.eval))
    frontier = {"start": start, "prompts": prompts_path, "samples_per_prompt": cmp.eval.samples_per_prompt,
                "budget_samples": cmp.budget_samples, "interval": cmp.eval.interval, "rows": rows,
                "evaluation_seconds": round(time.perf_counter() - t0, 1)}
    index = write_compare_report(os.path.join(run_dir, "compare"), frontier, list(cmp.gold))
    print_frontier(frontier, out)
    print(f"[compare] report: {index}", file=out, flush=True)
    return frontier


def _budget(kind: str, folder: str, summary: dict) -> dict:
    """Samples generated for training (online runs: every iteration's rollout/samples) and the
    examples the updates used: PPO every sample; rounds their kept samples, pairs or lists
    (rs/kept); offline runs the training examples times the epochs."""
    if kind in ONLINE:
        from rayrlhf.metrics import read_metrics

        rows = [r for r in read_metrics(folder) if r.get("step", 0) > 0]
        generated = int(sum(r.get("rollout/samples", 0) for r in rows))
        trained = generated if kind == "ppo" else int(sum(r.get("rs/kept", 0) for r in rows))
        return {"generated": generated, "trained": trained}
    cfg = read_json(os.path.join(folder, "STAGE.json")).get("config", {})
    return {"generated": 0, "trained": int(summary.get("examples_train", 0)) * int(cfg.get("train.epochs", 1))}


def eval_prompts(prompts_path: str, tokenizer_path: str, ev: CompareEvalSection) -> tuple[list, list, object]:
    """The first ``ev.limit`` held-out prompts, checked (a prompt over ``max_prompt_tokens`` is an
    error naming its row), their token ids and the tokenizer."""
    from rayrlhf.data.tokenize import render_prompt
    from rayrlhf.data.validate import load_validated
    from rayrlhf.models import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    records = load_validated(prompts_path, "prompt", tokenizer=tok, max_prompt_tokens=ev.max_prompt_tokens,
                             limit=ev.limit)
    return records, [render_prompt(tok, r.prompt) for r in records], tok


def evaluate_policies(policies: list[str], reference: str, prompts_path: str, gold: dict[str, str],
                      ev: CompareEvalSection) -> list[dict[str, np.ndarray]]:
    """Per-prompt figures of each policy: ``gold_<name>`` (the mean over its samples), ``kl``
    (the mean of log pi(y) - log ref(y) over its samples) and ``response_length``. The same
    prompts and sampling seeds for every policy; the reference model is loaded once."""
    import torch

    from rayrlhf.actors.batch import build_batch
    from rayrlhf.actors.model_worker import ModelWorker
    from rayrlhf.actors.reward import last_user_text
    from rayrlhf.driver.scoring import resolve_gold
    from rayrlhf.engine.settings import EngineSettings
    from rayrlhf.rollout.config import RolloutSection
    from rayrlhf.rollout.worker import make_backend

    records, ids, tok = eval_prompts(prompts_path, reference, ev)
    questions = [last_user_text(r.prompt) for r in records]
    fns = resolve_gold(gold)
    n, P = ev.samples_per_prompt, len(records)
    gpu = torch.cuda.is_available()
    settings = EngineSettings(role="reference", forward_micro_batch_size=32, wants_gpu=gpu)
    ref = ModelWorker("reference", reference, settings)
    out = []
    for path in policies:
        backend = make_backend(path, RolloutSection(backend=ev.backend, n_samples=n, temperature=1.0,
                                                    max_new_tokens=ev.max_new_tokens,
                                                    max_model_len=ev.max_prompt_tokens + ev.max_new_tokens))
        samples = backend.generate(ids, n=n, seed=ev.seed)
        del backend
        batch = build_batch([s.prompt_ids for s in samples], [s.response_ids for s in samples], tok.pad_token_id)
        pol = ModelWorker("reference", path, settings) if path != reference else ref
        kl = (pol.forward(batch, temperature=1.0) - ref.forward(batch, temperature=1.0)).sum(-1)
        del pol
        fig = {f"gold_{name}": np.array([np.mean([float(fn(questions[p], samples[p * n + j].text)) for j in range(n)])
                                         for p in range(P)]) for name, fn in fns.items()}
        fig["kl"] = kl.reshape(P, n).mean(1).double().numpy()
        fig["response_length"] = np.array([np.mean([len(samples[p * n + j].response_ids) for j in range(n)])
                                           for p in range(P)])
        out.append(fig)
    return out


def summarise(fig: dict, base: dict, ev: CompareEvalSection) -> dict:
    """Each figure's mean and interval over prompts, and each gold figure's gain over ``base``."""
    from rayrlhf.algo.intervals import interval, paired_interval

    out = {}
    for name, values in fig.items():
        out[name] = list(interval(values, ev.interval, ev.bootstrap, ev.seed))
        if name.startswith("gold_"):
            out["gain_" + name] = list(paired_interval(values, base[name], ev.interval, ev.bootstrap, ev.seed))
    return out


def _fmt(x) -> str:
    return f"{x[0]:.3f} [{x[1]:.3f}, {x[2]:.3f}]"


def table(frontier: dict, gold_names: list[str]) -> tuple[list[str], list[list[str]]]:
    key = "gold_reward" if "reward" in gold_names else f"gold_{gold_names[0]}"
    head = ["method", "value", key.replace("_", " "), "gain", "KL to start (nats)", "seconds", "generated", "trained on"]
    rows = []
    for r in frontier["rows"]:
        rows.append([r["method"], "" if r["value"] is None else str(r["value"]), _fmt(r[key]),
                     "" if r["method"] == "start" else _fmt(r["gain_" + key]), _fmt(r["kl"]),
                     "" if r["seconds"] is None else f"{r['seconds']:.0f}", str(r["generated"]), str(r["trained"])])
    return head, rows


def print_frontier(frontier: dict, out=None) -> None:
    out = out or sys.stdout
    names = [k[len("gold_"):] for k in frontier["rows"][0] if k.startswith("gold_")]
    head, rows = table(frontier, names)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    for line in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip(), file=out)
    out.flush()


def plot_frontier(frontier: dict, key: str, path: str) -> None:
    """Gold reward against KL to the start, one line per method through its sweep, both axes
    with their intervals."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    methods = []
    for r in frontier["rows"]:
        if r["method"] not in methods:
            methods.append(r["method"])
    for m in methods:
        pts = sorted((r for r in frontier["rows"] if r["method"] == m), key=lambda r: r["kl"][0])
        x, y = [r["kl"][0] for r in pts], [r[key][0] for r in pts]
        xerr = [[v - r["kl"][1] for v, r in zip(x, pts)], [r["kl"][2] - v for v, r in zip(x, pts)]]
        yerr = [[v - r[key][1] for v, r in zip(y, pts)], [r[key][2] - v for v, r in zip(y, pts)]]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=m, linestyle="-" if len(pts) > 1 else "")
    ax.set_xlabel("KL to the starting policy (nats per response)")
    ax.set_ylabel(key.replace("_", " ") + " (held out)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)


def write_compare_report(out_dir: str, frontier: dict, gold_names: list[str]) -> str:
    """``frontier.json``, ``frontier.png``, ``index.html`` and ``report.md`` in ``out_dir``, written
    whole beside it and renamed into place."""
    from rayrlhf.report import page
    from rayrlhf.utils.fs import recover_dir

    key = "gold_reward" if "reward" in gold_names else f"gold_{gold_names[0]}"
    recover_dir(out_dir)
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(os.path.join(tmp, "frontier.json"), frontier)
        plot_frontier(frontier, key, os.path.join(tmp, "frontier.png"))
        head, rows = table(frontier, gold_names)
        blocks = [("h", 1, "Methods on one reward-KL frontier"),
                  ("p", f"From {frontier['start']}; {len(rows) - 1} runs; held-out prompts {frontier['prompts']}, "
                        f"{frontier['samples_per_prompt']} samples each at temperature 1. Every figure is a mean over "
                        f"prompts with its {frontier['interval']:.0%} bootstrap interval; gains are paired by prompt. "
                        f"KL: log pi(y) - log ref(y) summed over the response, averaged over samples of pi. "
                        f"Online runs generate {frontier['budget_samples'] or 'their configured'} samples each."),
                  ("img", "frontier.png", "gold reward against KL to the starting policy"),
                  ("table", head, rows)]
        with open(os.path.join(tmp, "index.html"), "w", encoding="utf-8") as f:
            f.write(page.to_html(blocks))
        with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as f:
            f.write(page.to_markdown(blocks))
    return os.path.join(out_dir, "index.html")


__all__ = ["CompareConfig", "load_compare", "run_compare"]
