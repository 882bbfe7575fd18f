"""The report's PNG plots, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Each function takes the plain dicts of ``collect.load_run`` and a file path, draws one figure
and returns True, or returns False when the run holds nothing to draw. A series the run did
not log is left out of its figure (no line, no legend entry); legends sit outside the axes, so
they never cover a line.
"""
from __future__ import annotations

import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, MaxNLocator

from rayrlhf.algo.intervals import CI_HIGH, CI_LOW

DPI = 110
PROXY = "reward (standardised RM score)"
GOLD = "gold reward (0-1)"
KL = "KL to reference (nats per response)"


def _figure(nrows: int = 1, height: float = 4.0):
    fig = Figure(figsize=(7, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, list(axes)


def _save(fig, axes, path: str) -> bool:
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.savefig(path)
    return True


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def _line(ax, rows: list[dict], key: str, *fmt, **style) -> bool:
    """Figure ``key`` of ``rows`` by step as a line; nothing, not even a legend entry, without points."""
    x, y = _series(rows, key)
    if x:
        ax.plot(x, y, *fmt, **style)
    return bool(x)


def interval_points(rows: list[dict], key: str, x_of=lambda r: r.get("step")) -> tuple[list, list, list | None]:
    """(x, y, yerr) of figure ``key`` in ``rows``: ``yerr`` is [below, above], the distances to
    ``key_ci_low`` and ``key_ci_high`` (nan, no bar, at a point without them), or None when no
    point has an interval."""
    num = (int, float)
    pts = [(x_of(r), r[key], r.get(key + CI_LOW), r.get(key + CI_HIGH)) for r in rows
           if isinstance(r.get(key), num) and isinstance(x_of(r), num)]
    pts = [(x, y, lo, hi) if isinstance(lo, num) and isinstance(hi, num) else (x, y, None, None)
           for x, y, lo, hi in pts]
    x, y = [p[0] for p in pts], [p[1] for p in pts]
    if all(p[2] is None for p in pts):
        return x, y, None
    nan = float("nan")
    return x, y, [[nan if lo is None else v - lo for _, v, lo, _ in pts],
                  [nan if hi is None else hi - v for _, v, _, hi in pts]]


def _held_out(ax, rows: list[dict], key: str, fmt: str, x_of=lambda r: r.get("step"), **style) -> None:
    """Held-out figure ``key`` with its interval as error bars where the rows have one."""
    x, y, yerr = interval_points(rows, key, x_of)
    if not x:
        return
    if yerr is not None and "label" in style:
        style["label"] += " (bars: interval)"
    ax.errorbar(x, y, yerr=yerr, fmt=fmt, capsize=3, **style)


def sft_loss(stage: dict, path: str) -> bool:
    if not _series(stage["metrics"], "train/loss")[0] and not _series(stage["metrics"], "eval/loss")[0]:
        return False
    fig, (ax,) = _figure()
    _line(ax, stage["metrics"], "train/loss", label="training loss")
    _line(ax, stage["metrics"], "eval/loss", "o-", label="held-out loss")
    ax.set(yscale="log", xlabel="optimizer step", ylabel="loss (nats per token, log scale)",
           title=f"{stage['name']}: supervised fine-tuning loss")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%.2g"))  # 0.3, 0.4 rather than 3x10^-1
    return _save(fig, [ax], path)


def rs_rewards(stage: dict, path: str) -> bool:
    rows = stage["steps"]
    if not _series(rows, "rs/reward_mean")[0]:
        return False
    fig, (ax,) = _figure()
    for key, label, style in (("rs/reward_max", "max of K (per prompt)", "^-"),
                              ("rs/reward_median", "median of K", "s-"), ("rs/reward_mean", "mean of K", "o-"),
                              ("rs/kept_reward", "kept samples", "D--")):
        _line(ax, rows, key, style, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="rejection-sampling round", ylabel=PROXY,
           title=f"{stage['name']}: proxy reward of the K samples per prompt")
    return _save(fig, [ax], path)


def rs_gold(stage: dict, path: str) -> bool:
    rows, evals = stage["steps"], _series(stage["evals"], "eval/gold_reward")
    if not _series(rows, "rs/kept_gold_reward")[0] and not evals[0]:
        return False
    fig, (ax,) = _figure()
    _line(ax, rows, "rs/kept_gold_reward", "D--", label="kept samples (training data)")
    _line(ax, rows, "rs/all_gold_reward", "o-", label="all K samples")
    _held_out(ax, stage["evals"], "eval/gold_reward", "s-", lw=2,
              label=f"held-out prompts, policy after the round\n(0 = {stage['start']})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="rejection-sampling round", ylabel=GOLD, title=f"{stage['name']}: gold reward per round")
    return _save(fig, [ax], path)


def _kl_of(row: dict):
    """The KL of a PPO metrics row's training samples; 0 at step 0, the starting policy."""
    return row.get("kl/per_response", 0.0 if row.get("step") == 0 else None)


def best_of_k(name: str, curve: dict, ppo_stages: list[dict], path: str) -> bool:
    """Gao et al. 2022, Fig. 1 style: proxy (left axis) and gold (right axis) reward of the
    best of K samples against the analytic KL of best-of-K, with K on the top axis."""
    kl, proxy, gold = curve.get("kl_nats") or [], curve.get("proxy") or [], (curve.get("gold") or {}).get("reward")
    if not kl:
        return False
    fig, (ax,) = _figure(height=4.4)
    ax.plot(kl, proxy, "o-", ms=4, color="tab:blue", label="proxy reward of best of K")
    ax.set(xlabel="KL of best-of-K to the sampling policy (nats per response) = log K - (K-1)/K",
           ylabel=PROXY, title=f"{name}: best-of-K, proxy vs gold reward")
    ax.yaxis.label.set_color("tab:blue")
    right = ax.twinx()
    if gold:
        right.plot(kl, gold, "s-", ms=4, color="tab:orange", label="gold reward of best of K (proxy-selected)")
        low, high = ((curve.get(f"gold_ci_{end}") or {}).get("reward") for end in ("low", "high"))
        if low and high and len(low) == len(high) == len(kl):
            right.fill_between(kl, low, high, color="tab:orange", alpha=0.2, label="its interval over prompts")
    for s in ppo_stages:  # PPO's held-out gold at the KL its training samples had at that step
        if interval_points(s["evals"], "eval/gold_reward", _kl_of)[0]:
            _held_out(right, s["evals"], "eval/gold_reward", "x:", _kl_of, color="tab:red",
                      label=f"{s['name']}: held-out gold (KL to reference)")
    right.set_ylabel(GOLD, color="tab:orange")
    shown = [i for i, k in enumerate(curve.get("k", [])) if k & (k - 1) == 0 or i == len(kl) - 1]
    top = ax.secondary_xaxis("top")
    top.set_xticks([kl[i] for i in shown], labels=[str(curve["k"][i]) for i in shown])
    top.set_xlabel("K (samples per prompt)")
    handles, extra = ax.get_legend_handles_labels(), right.get_legend_handles_labels()
    fig.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="outside lower center", ncols=2)
    ax.grid(alpha=0.3)
    fig.savefig(path)
    return True


def ppo_rewards(stage: dict, path: str) -> bool:
    rows, evals = stage["steps"], stage["evals"]
    if not _series(rows, "rollout/reward_mean")[0] and not _series(evals, "eval/reward")[0]:
        return False
    fig, (top, bottom) = _figure(nrows=2, height=5.5)
    _line(top, rows, "rollout/reward_mean", label="training samples")
    _held_out(top, evals, "eval/reward", "o", ms=7, color="navy", label="held-out prompts")
    top.set(ylabel=PROXY, title=f"{stage['name']}: proxy and gold reward by PPO iteration")
    _line(bottom, rows, "gold/reward", color="tab:orange", label="training samples")
    _held_out(bottom, evals, "eval/gold_reward", "o", ms=7, color="tab:red", label="held-out prompts")
    bottom.set(xlabel=f"PPO iteration (0 = {stage['start']})", ylabel=GOLD)
    return _save(fig, [top, bottom], path)


def ppo_kl(stage: dict, path: str) -> bool:
    series = _series(stage["steps"], "kl/per_response")
    if not series[0]:
        return False
    fig, (ax,) = _figure(height=3.5)
    ax.plot(*series, color="tab:green", label="training samples")
    ref = f" ({stage['reference']})" if stage.get("reference") else ""
    ax.set(xlabel="PPO iteration", ylabel=KL, title=f"{stage['name']}: KL of the policy to the reference{ref}")
    return _save(fig, [ax], path)


def panels(stage: dict, path: str, title: str, xlabel: str, spec: list) -> bool:
    """One panel per ``(ylabel, [(key, label, fmt), ...])`` of ``spec``, over the steps of
    ``stage``'s metrics; a series without points is left out, and so is a panel without any."""
    rows = stage["metrics"]
    shown = [(ylabel, [x for x in series if _series(rows, x[0])[0]]) for ylabel, series in spec]
    shown = [(ylabel, series) for ylabel, series in shown if series]
    if not shown:
        return False
    fig, axes = _figure(nrows=len(shown), height=2.2 + 1.6 * len(shown))
    for ax, (ylabel, series) in zip(axes, shown):
        for key, label, fmt in series:
            _line(ax, rows, key, fmt, label=label)
        ax.set_ylabel(ylabel)
    axes[0].set_title(f"{stage['name']}: {title}")
    axes[-1].set_xlabel(xlabel)
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, axes, path)


def rm_training(stage: dict, path: str) -> bool:
    """A reward model's loss and accuracy on its training batches and on the held-out pairs."""
    return panels(stage, path, "reward-model training", "optimizer step", [
        ("loss (nats per pair)", [("train/loss", "training batches", "-"), ("eval/loss", "held-out pairs", "o-")]),
        ("accuracy (share of pairs\nranked right)", [("train/accuracy", "training batches", "-"),
                                                      ("eval/accuracy", "held-out pairs", "o-")])])


def ppo_losses(stage: dict, path: str) -> bool:
    """The policy's PPO loss and, when the run has a critic, the value loss, per iteration."""
    return panels(stage, path, "PPO losses", "PPO iteration", [
        ("policy loss (clipped\nsurrogate, per token)", [("actor/loss", "policy", "-")]),
        ("value loss (half squared\nerror, per token)", [("critic/loss", "critic", "-")])])


def ppo_clipfrac(stage: dict, path: str) -> bool:
    """The share of response tokens whose PPO ratio (and critic value) the clip held back."""
    return panels(stage, path, "clip fraction", "PPO iteration", [
        ("share of tokens clipped", [("actor/clipfrac", "policy ratio", "-"),
                                     ("critic/vf_clipfrac", "critic value", "--")])])


def ppo_entropy(stage: dict, path: str) -> bool:
    """The policy's entropy on its training samples (logged when ppo.entropy_coef is set)."""
    return panels(stage, path, "policy entropy", "PPO iteration",
                  [("entropy (nats per token)", [("actor/entropy", "training samples", "-")])])


def ppo_length(stage: dict, path: str) -> bool:
    """Response length on the training samples and on the held-out prompts."""
    return panels(stage, path, "response length", f"PPO iteration (0 = {stage['start']})", [
        ("response length (tokens)", [("rollout/response_length", "training samples", "-"),
                                      ("eval/response_length", "held-out prompts", "o")])])


def make_plots(run: dict, folder: str) -> dict:
    """Draw every plot the run has data for into ``folder``; {(stage, plot): file name}."""
    ppo = [s for s in run["stages"] if s["kind"] == "ppo"]
    jobs = {"sft": [("loss", sft_loss)], "rm": [("training", rm_training)],
            "rs": [("rewards", rs_rewards), ("gold", rs_gold)],
            "ppo": [("rewards", ppo_rewards), ("kl", ppo_kl), ("losses", ppo_losses), ("clipfrac", ppo_clipfrac),
                    ("entropy", ppo_entropy), ("length", ppo_length)]}
    made = {}
    for stage in run["stages"]:
        for what, draw in jobs.get(stage["kind"], []):
            name = f"{stage['name']}_{what}.png"
            if draw(stage, os.path.join(folder, name)):
                made[(stage["name"], what)] = name
    for stage_name, curve in run["curves"].items():
        name = f"{stage_name}_best_of_k.png"
        # PPO's points share the curve's KL axis only when PPO starts from the curve's policy.
        start = next(s["policy"] for s in run["stages"] if s["name"] == stage_name)
        same = [s for s in ppo if s.get("policy") == start]
        if best_of_k(stage_name, curve, same, os.path.join(folder, name)):
            made[(stage_name, "best_of_k")] = name
    return made
