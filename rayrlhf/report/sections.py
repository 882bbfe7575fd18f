"""The report's sections: what each says about the run, as a list of blocks for ``page``.

A block is ``("h", level, text)``, ``("p", text)``, ``("table", header, rows)`` or
``("img", file, alt)``; every string is plain text (``page`` escapes it).
"""
from __future__ import annotations

import math

from rayrlhf.report.collect import LEVELS, POLICY_KEYS, interval_of

MAX_SAMPLES = 6
POLICY_HEADER = ["policy", "gold reward (0-1)", "gold helpfulness (0-1)", "gold safety (0-1)",
                 "gold helpfulness, safe prompts (0-1)", "gold safety, unsafe prompts (0-1)",
                 "proxy reward (RM score)", "response length (tokens)"]


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not math.isnan(x)


def _num(x, fmt: str = ".3f") -> str:
    return format(x, fmt) if _ok(x) else "—"


def _pct(x) -> str:
    return f"{100 * x:.1f}%" if _ok(x) else "—"


def _fig(x, ci=None) -> str:
    """A figure and its interval: ``0.500 [0.350, 0.650]``."""
    if not _ok(x):
        return "—"
    return f"{_num(x)} [{_num(ci[0])}, {_num(ci[1])}]" if ci and _ok(ci[0]) and _ok(ci[1]) else _num(x)


def _change(c) -> str:
    """A paired change (mean, low, high): ``+0.060 [-0.090, +0.210]``."""
    return f"{c[0]:+.3f} [{c[1]:+.3f}, {c[2]:+.3f}]"


def _policy_cell(row: dict, key: str, first: bool) -> str:
    if first:
        return _fig(row[key], row["ci"][key])
    c, d = row["delta_ci"].get(key), row["delta"][key]
    delta = f" ({_change(c)})" if c else f" ({d:+.3f})" if _ok(d) else ""
    return _fig(row[key], row["ci"][key]) + delta


def _level(rows: list) -> str:
    held = next((r["heldout"] for r in rows if r["heldout"]), None)
    return f"{100 * held['interval']:g}%" if held else "95%"


def _shown(c) -> str:
    """What a paired change (mean, low, high) supports: a rise or fall only if its interval excludes 0."""
    return "higher" if c[1] > 0 else "lower" if c[2] < 0 else "not distinguishable"


def _images(plots: dict, stage: str, names: tuple) -> list:
    return [("img", plots[(stage, n)], f"{stage} {n}") for n in names if (stage, n) in plots]


def _stage_result(s: dict) -> str:
    m, kind = s["summary"], s["kind"]
    if m.get("unfinished"):
        return "did not finish"
    if kind == "toyworld":
        return f"tiny base model of {m.get('base_model_parameters', 0):,} parameters, vocabulary {m.get('vocab_size')}"
    if kind == "sft":
        return f"held-out perplexity {_num(m.get('eval/ppl'))} after {m.get('steps')} steps"
    if kind == "rm":
        return (f"held-out accuracy {_pct(m.get('eval/accuracy'))} (against gold order "
                f"{_pct(m.get('eval/gold_accuracy'))}, length baseline {_pct(m.get('eval/length_baseline_accuracy'))})")
    steps = f"{m.get('rounds')} rounds of best-of-{m.get('k')}" if kind == "rs" else f"{m.get('steps')} PPO iterations"
    kl = f", final KL {_num(m.get('last/kl/per_response'), '.2f')} nats" if kind == "ppo" else ""
    gain = interval_of(m, "gain/gold_reward")
    gain = f" (gain {_change((m['gain/gold_reward'], *gain))})" if gain and _ok(m.get("gain/gold_reward")) else ""
    return (f"{steps}: held-out gold reward {_num(m.get('before/gold_reward'))} → {_num(m.get('eval/gold_reward'))}"
            f"{gain}, proxy reward {_num(m.get('before/reward'))} → {_num(m.get('eval/reward'))}{kl}")


def _headline(run: dict) -> list:
    out = [("h", 2, "Held-out gold reward of each policy")]
    rows = run["policies"]
    if not rows:
        return out + [("p", "No rejection-sampling or PPO stage finished, so there is no policy to compare "
                            "with the policy it started from.")]
    held = next((r["heldout"] for r in rows if r["heldout"]), None)
    level, base = _level(rows), rows[0]["label"]
    if held:
        brackets = (f"Square brackets: the {level} interval of each figure, a percentile bootstrap over the "
                    f"{held['prompts']} held-out prompts ({held['samples_per_prompt']} samples per prompt; a "
                    "prompt's figure is the mean over its samples). Round brackets: the change against "
                    f"{base} on the same prompts, with the interval of the per-prompt differences (a paired "
                    "bootstrap, so what two policies share on a prompt cancels).")
    else:
        brackets = (f"Round brackets: change against {base}. This run kept no per-prompt figures "
                    "(heldout.json), so its changes have no intervals.")
    out.append(("p", "Each policy answers the same held-out prompts. The gold reward is the task's hidden "
                     "true preference, which no model was trained on; the proxy reward is the reward models' "
                     "score the policies were optimised for. Helpfulness is also shown on the safe prompts alone and "
                     "safety on the unsafe prompts alone (as Llama 2 evaluates them): on unsafe prompts gold "
                     "helpfulness rewards compliance, so a safer policy loses helpfulness there by design. "
                     + brackets))
    table = [[r["label"]] + [_policy_cell(r, k, i == 0) for k in POLICY_KEYS] for i, r in enumerate(rows)]
    out.append(("table", POLICY_HEADER, table))
    if rows[-1]["delta"]["gold_reward"] is None:
        return out + [("p", "This run has no gold reward (only tasks with a known gold preference, such as "
                            "toyworld, do).")]
    names = {"gold_reward": "The gold reward", "gold_helpfulness@safe": "Gold helpfulness on safe prompts",
             "gold_safety@unsafe": "gold safety on unsafe prompts"}
    parts = []
    for key, name in names.items():
        d, c = rows[-1]["delta"][key], rows[-1]["delta_ci"].get(key)
        if d is None:
            continue
        went = f"from {_num(rows[0][key])} ({base}) to {_num(rows[-1][key])} ({rows[-1]['label']})"
        if c is None:
            parts.append(f"{name} went {went}; without per-prompt figures the run gives no interval for the change")
        elif _shown(c) == "not distinguishable":
            parts.append(f"{name} went {went}, a change of {c[0]:+.3f} whose {level} interval "
                         f"[{c[1]:+.3f}, {c[2]:+.3f}] includes 0, so this run does not show a change")
        else:
            parts.append(f"{name} {'rose' if c[1] > 0 else 'fell'} {went}, by {c[0]:+.3f} ({level} interval "
                         f"[{c[1]:+.3f}, {c[2]:+.3f}])")
    out.append(("p", parts[0] + "." + (" " + "; ".join(parts[1:]) + "." if parts[1:] else "")))
    return out + _comparisons(run, level)


def _comparisons(run: dict, level: str) -> list:
    """Each policy against the one before it, when there are more than one RL stage."""
    comps = run["comparisons"]
    if len(comps) < 2 or not any(v for c in comps for v in c["change"].values()):
        return []  # one RL stage: its change is in the table above; or no per-prompt figures
    out = [("p", "Each policy against the one before it, prompt by prompt on the same held-out prompts: the "
                 f"change and its {level} paired interval. A change whose interval includes 0 is not one this "
                 "run can tell from no change.")]
    out.append(("table", ["comparison"] + POLICY_HEADER[1:],
                [[c["label"]] + [_change(c["change"][k]) if c["change"][k] else "—" for k in POLICY_KEYS]
                 for c in comps]))
    said = []
    for c in comps:
        g = c["change"]["gold_reward"]
        if g is None:
            continue
        verdict = {"higher": "higher", "lower": "lower",
                   "not distinguishable": "not distinguishable from no change"}[_shown(g)]
        said.append(f"{c['after']} against {c['before']}: gold reward {_change(g)}, {verdict}")
    return out + ([("p", "; ".join(said) + ".")] if said else [])


def _stages(run: dict) -> list:
    rows = [[s["name"], s["kind"] or "?", _num(s["seconds"], ".1f"), _stage_result(s)] for s in run["stages"]]
    total = sum(s["seconds"] or 0 for s in run["stages"])
    said = (f"The pipeline ran these stages in order, {total:.1f} s in all." if run["is_pipeline"]
            else f"This folder holds one stage's run, {total:.1f} s.")
    return [("h", 2, "Stages"), ("p", said),
            ("table", ["stage", "kind", "time (s)", "result"], rows)]


def _sft(run: dict, plots: dict) -> list:
    out = [("h", 2, "Supervised fine-tuning")]
    for s in [s for s in run["stages"] if s["kind"] == "sft"]:
        out.append(("p", f"{s['name']}: the base model learns from demonstrations. Held-out perplexity "
                         f"{_num(s['summary'].get('eval/ppl'))} (loss {_num(s['summary'].get('eval/loss'))} nats per "
                         "token; 1.0 would be a perfect fit)."))
        if (s["name"], "loss") in plots:
            out.append(("img", plots[(s["name"], "loss")], f"{s['name']} loss curve"))
    return out if len(out) > 1 else out + [("p", "No SFT stage ran.")]


def _reward_models(run: dict, plots: dict) -> list:
    out = [("h", 2, "Reward models")]
    curves = [img for s in run["stages"] if s["kind"] == "rm" for img in _images(plots, s["name"], ("training",))]
    if curves:
        out.append(("p", "Training curves: the loss and share of pairs ranked right on the training batches, "
                         "and the same on the held-out pairs at each evaluation."))
    if not run["rm_rows"]:
        return out + curves + [("p", "No reward-model stage finished." if curves else "No reward-model stage ran.")]
    out.append(("p", "Accuracy is the share of held-out preference pairs in which the reward model scores "
                     "the preferred response higher, split by how much better the annotator said it was "
                     "(as in Llama 2, Table 8; pairs per level in brackets). 'Gold' is accuracy against the "
                     "noise-free gold order of the task, where it is known."))
    header = ["reward model"] + [lv.replace("_", " ") for lv in LEVELS] + ["overall", "gold order", "length baseline"]
    rows = [[r["name"]] + [f"{_pct(a)} ({_num(n, '.0f')})" for a, n in (r["levels"][lv] for lv in LEVELS)]
            + [_pct(r["overall"]), _pct(r["gold"]), _pct(r["length"])] for r in run["rm_rows"]]
    out += curves + [("table", header, rows)]
    gaps = ", ".join(f"{r['name']} {_pct(r['length'])}, {100 * (r['overall'] - r['length']):+.1f} points for the model"
                     for r in run["rm_rows"] if r["length"] is not None and r["overall"] is not None)
    if gaps:
        out.append(("p", "The length baseline always prefers the longer response; a reward model that barely "
                         f"beats it has mostly learned length. Baseline: {gaps}."))
    return out


def _rejection_sampling(run: dict, plots: dict) -> list:
    out = [("h", 2, "Rejection sampling (best-of-K)")]
    stages = [s for s in run["stages"] if s["kind"] == "rs"]
    if not stages:
        return out + [("p", "No rejection-sampling stage ran in this pipeline.")]
    out.append(("p", "Each round samples K responses per training prompt from the current policy, scores them "
                     "with the reward models, keeps the best one and fine-tunes the policy on the kept samples "
                     "(Llama 2, Section 3.2.3). The gap between the maximum and the median of the K samples is "
                     "what a round can gain (Llama 2, Figure 7)."))
    keys = ["rs/k", "rs/reward_mean", "rs/reward_median", "rs/reward_max", "rs/max_minus_median", "rs/kept_reward",
            "rs/kept_gold_reward", "rs/all_gold_reward", "eval/gold_reward", "train/loss"]
    header = ["round", "K", "mean of K", "median of K", "max of K", "max − median", "kept (proxy)",
              "kept (gold)", "all K (gold)", "held-out gold after", "training loss"]
    for s in stages:
        out.append(("h", 3, s["name"]))
        out += _images(plots, s["name"], ("rewards", "gold"))
        rows = [[str(r["step"]), _num(r.get("rs/k"), ".0f")] + [_fig(r.get(k), interval_of(r, k)) for k in keys[1:]]
                for r in s["steps"]]
        out.append(("table", header, rows) if rows else ("p", "No rounds were logged (no metrics.jsonl lines)."))
        said = _hacking(s["summary"], "round", "rs", "rounds")
        if said:
            out.append(("p", said))
    return out


def _best_of_k(run: dict, plots: dict) -> list:
    out = [("h", 2, "Best-of-K curve")]
    if not run["curves"]:
        return out + [("p", "No best-of-K curve was measured (no best_of_k_curve.json in any stage).")]
    out.append(("p", "For each K, the expected proxy and gold reward of the response the reward models pick "
                     "among K samples, against the analytic KL of best-of-K sampling, log K − (K−1)/K nats "
                     "(Gao et al. 2022). Where the gold reward stops following the proxy reward, selecting "
                     "harder on the reward models over-optimises them. Square brackets: the interval of a gold "
                     "figure, a percentile bootstrap over the curve's prompts."))
    for name, c in run["curves"].items():
        out.append(("h", 3, f"{name}: {c.get('prompts')} prompts × {c.get('samples_per_prompt')} samples"))
        if (name, "best_of_k") in plots:
            out.append(("img", plots[(name, "best_of_k")], f"{name} best-of-K curve"))
        gold, ks = c.get("gold") or {}, c.get("k") or []
        # Every K when there are few, else the powers of two and the largest K.
        show = [i for i, k in enumerate(ks) if len(ks) <= 12 or k & (k - 1) == 0 or i == len(ks) - 1]
        low, high = c.get("gold_ci_low") or {}, c.get("gold_ci_high") or {}

        def cell(name, i):
            v = c.get("proxy") if name is None else gold.get(name)
            if i >= len(v or []):
                return "—"
            lo, hi = (low.get(name), high.get(name)) if name else (None, None)
            return _fig(v[i], (lo[i], hi[i]) if lo and hi and i < min(len(lo), len(hi)) else None)

        rows = [[str(ks[i]), _num(c["kl_nats"][i])] + [cell(name, i) for name in
                (None, "reward", "helpfulness", "safety")] for i in show]
        out.append(("table", ["K", "KL (nats)", "proxy reward", "gold reward", "gold helpfulness", "gold safety"],
                    rows))
        p = c["gold_peak_index"]
        if p is not None:
            where = f"K={ks[p]} ({_num(c['kl_nats'][p], '.2f')} nats)"
            drop = (c.get("gold_last_minus_peak") or {}).get("reward")
            if p == len(ks) - 1:
                said = f"The gold reward still rises at the largest K tried, {where}: no over-optimisation in this range."
            elif not drop:
                said = (f"The gold reward peaks at {where} and falls for larger K while the proxy keeps rising: "
                        "over-optimisation beyond that point.")
            elif drop[2] < 0:
                said = (f"The gold reward peaks at {where} and is lower at the largest K, K={ks[-1]}, by "
                        f"{_change(drop)} (paired over prompts) while the proxy keeps rising: over-optimisation "
                        "beyond the peak.")
            else:
                said = (f"The gold reward peaks at {where}; at the largest K, K={ks[-1]}, it differs from the peak by "
                        f"{_change(drop)} (paired over prompts), an interval that includes 0, so this run does not "
                        "show it falling past the peak.")
            out.append(("p", said))
    return out


def _ppo(run: dict, plots: dict) -> list:
    out = [("h", 2, "PPO")]
    stages = [s for s in run["stages"] if s["kind"] == "ppo"]
    if not stages:
        return out + [("p", "No PPO stage ran in this pipeline.")]
    out.append(("p", "Each iteration samples responses to a batch of training prompts, scores them with the "
                     "reward models and updates the policy with PPO, penalising KL to a frozen reference "
                     "policy. Lines: the iteration's training samples; dots: evaluation on held-out prompts."))
    for s in stages:
        out.append(("h", 3, s["name"]))
        out.append(("p", f"{s['name']} started from {s['start']}; its reference is "
                         f"{s['reference'] or 'not recorded (no config.yaml)'}."))
        out += _images(plots, s["name"], ("rewards", "kl", "losses", "clipfrac", "entropy", "length"))
        rows = [[str(r.get("step"))] + [_fig(r.get(f"eval/{k}"), interval_of(r, f"eval/{k}")) for k in POLICY_KEYS]
                for r in s["evals"]]
        if rows:
            out.append(("table", ["iteration"] + POLICY_HEADER[1:], rows))
        out.append(("p", f"KL to the reference at the last iteration: "
                         f"{_num(s['summary'].get('last/kl/per_response'))} nats per response."))
        said = _hacking(s["summary"])
        if said:
            out.append(("p", said))
    return out


def _hacking(summary: dict, unit: str = "iteration", section: str = "ppo", count: str = "steps") -> str | None:
    """What the reward-hacking alarm (``<section>.hacking``, rayrlhf.algo.hacking) said over the run."""
    if "hacking/fired_at" not in summary:
        return None  # a run from before the alarm existed
    fired, stopped = summary.get("hacking/fired_at"), summary.get("stopped_early_at")
    if fired is None:
        return (f"Reward-hacking alarm: quiet over the {summary.get(count)} {unit}s (the proxy reward never rose "
                "while the watched signal or the reward models' agreement fell beyond its noise or the response "
                "length drifted).")
    return (f"Reward-hacking alarm: fired at {unit} {fired}: the proxy reward kept rising while the watched "
            "signal or the reward models' agreement fell beyond its noise, or the response length drifted (the "
            "hacking/* metrics say which)."
            + (f" Training stopped there ({section}.hacking.stop)." if stopped else f" Training went on ({section}."
               f"hacking.stop is off); the policy after that {unit} may be gaming the reward."))


def _samples(run: dict) -> list:
    out = [("h", 2, "Sample generations")]
    header = ["prompt", "response", "gold reward (0-1)", "proxy reward"]
    for s in [s for s in run["stages"] if s["kind"] in ("rs", "ppo")]:
        for when in ("before", "after"):
            items = s["samples"][when][:MAX_SAMPLES]
            out.append(("h", 3, f"{s['name']}: {when}" + (f" ({s['start']})" if when == "before" else "")))
            out.append(("table", header, [[x.get("prompt", ""), x.get("response", ""), _num(x.get("gold_reward")),
                                           _num(x.get("reward"))] for x in items]) if items
                       else ("p", f"No '{when}' samples were saved by {s['name']}."))
    return out if len(out) > 1 else out + [("p", "No policy stage saved sample generations.")]


def build(run: dict, plots: dict) -> list:
    """The report as blocks, in section order."""
    title = f"{'Pipeline' if run['is_pipeline'] else 'Stage'} report: {run['name']}"
    return ([("h", 1, title), ("p", f"Run folder: {run['run_dir']}")]
            + _headline(run) + _stages(run) + _sft(run, plots) + _reward_models(run, plots)
            + _rejection_sampling(run, plots) + _best_of_k(run, plots) + _ppo(run, plots) + _samples(run))
