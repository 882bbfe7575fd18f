"""The pipeline report, from a synthetic run folder in the pipeline's file formats."""
import json
import math
import os
import re
import struct

import pytest
import yaml

from rayrlhf.report import write_report

LEVELS = ("significantly_better", "better", "slightly_better", "negligibly_better")
SFT_EVAL = {"gold_reward": 0.5, "gold_helpfulness": 0.45, "gold_safety": 0.9, "gold_helpfulness@safe": 0.6,
            "gold_safety@unsafe": 0.5, "reward": 0.1, "response_length": 12.0, "reward_helpfulness": 0.2,
            "reward_safety": 0.3}
RS_EVAL = dict(SFT_EVAL, gold_reward=0.56, gold_helpfulness=0.5, reward=0.4)
PPO_EVAL = dict(SFT_EVAL, gold_reward=0.62, gold_safety=0.95, reward=0.7, response_length=14.0,
                **{"gold_helpfulness@safe": 0.7, "gold_safety@unsafe": 0.75})
SCRIPT = "<script>alert(1)</script>"
# Per-prompt held-out figures of 4 prompts (0 and 1 safe, 2 and 3 unsafe), as heldout.json keeps them.
# SFT's gold reward is 0.5 + 0.2 Y per prompt with Y = -1, 0, 0, 1; a resample of 4 prompts has mean
# 0.5 + 0.05 S, S + 4 ~ Binomial(8, 1/2), whose 2.5% and 97.5% quantiles are S = -3 and 3 (the
# distribution function is 9/256 = 3.5% at S = -3): the 95% interval is 0.5 -+ 0.15. RS adds 0.06 on
# every prompt (paired interval [0.06, 0.06]); PPO is 0.62 on every prompt, so PPO - RS and PPO - SFT
# have the same shape as SFT: 0.06 -+ 0.15 and 0.12 -+ 0.15.
SFT_PP = {"gold_reward": [0.3, 0.5, 0.5, 0.7], "gold_helpfulness@safe": [0.6, 0.6], "gold_safety@unsafe": [0.5, 0.5]}
RS_PP = dict(SFT_PP, gold_reward=[0.36, 0.56, 0.56, 0.76])
PPO_PP = {"gold_reward": [0.62] * 4, "gold_helpfulness@safe": [0.7, 0.7], "gold_safety@unsafe": [0.75, 0.75]}
CI = {"SFT": (0.35, 0.65), "RS": (0.41, 0.71), "PPO": (0.62, 0.62)}


def _json(path, obj, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, **kw)


def _jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _policy_summary(kind, before, after, ci_before, ci_after, ci_gain, **extra):
    s = {"kind": kind, "seconds": 30.0, **extra}
    for k in before:
        s.update({f"before/{k}": before[k], f"eval/{k}": after[k], f"gain/{k}": after[k] - before[k]})
    for prefix, (low, high) in (("before", ci_before), ("eval", ci_after), ("gain", ci_gain)):
        s.update({f"{prefix}/gold_reward_ci_low": low, f"{prefix}/gold_reward_ci_high": high})
    return s


def _heldout(path, before, after, version):
    _json(path, {"prompts": 4, "samples_per_prompt": 2, "prompt_digest": "0123abcd", "interval": 0.95,
                 "bootstrap": 10000, "seed": 0, "before": before, "after": after, "after_version": version})


def _rm_summary(acc, levels, gold, length):
    s = {"kind": "rm", "seconds": 20.0, "eval/accuracy": acc, "eval/gold_accuracy": gold,
         "eval/length_baseline_accuracy": length, "eval/loss": 0.5, "eval/pairs": 800.0}
    for lv, a, n in zip(LEVELS, levels, (140, 240, 230, 190)):
        s.update({f"eval/accuracy@{lv}": a, f"eval/pairs@{lv}": float(n)})
    return s


def _eval(values):
    return {f"eval/{k}": v for k, v in values.items()}


def _config(folder, **sections):
    """A stage's resolved config.yaml: only the sections the report reads."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        yaml.safe_dump(sections, f)


def _ppo_iterations(critic=True):
    """Four PPO iterations in the keys PPO logs: policy and value loss, clip fractions, KL, length."""
    rows = []
    for i in (1, 2, 3, 4):
        row = {"step": i, "rollout/reward_mean": 0.2 * i, "gold/reward": 0.5 + 0.02 * i, "kl/per_response": 0.2 * i,
               "kl/coef": 0.1, "actor/loss": -0.01 * i, "actor/clipfrac": 0.05 * i, "rollout/response_length": 10.0 + i}
        if critic:
            row.update({"critic/loss": 1.0 / i, "critic/vf_clipfrac": 0.1})
        rows.append(row)
    return rows


def make_run(root, rs=True, curve=True, ppo=True, heldout=True):
    """A finished pipeline run: toyworld, sft, two reward models, optionally rs1 and ppo, and
    their per-prompt held-out figures. Each trained stage starts from the previous policy's
    export (``<run>/sft/export``, ``<run>/rs1/export``), as the quickstart pipeline does."""
    run = str(root / "run")
    stages = {"toyworld": {"kind": "toyworld", "seconds": 5.0, "base_model_parameters": 557696, "vocab_size": 512},
              "sft": {"kind": "sft", "seconds": 40.0, "eval/ppl": 1.25, "eval/loss": 0.223, "train/loss": 0.2,
                      "steps": 60},
              "rm_helpfulness": _rm_summary(0.70, (0.90, 0.82, 0.64, 0.53), 0.77, 0.48),
              "rm_safety": _rm_summary(0.76, (0.95, 0.91, 0.67, 0.51), 1.0, 0.44)}
    os.makedirs(os.path.join(run, "sft"))
    _jsonl(os.path.join(run, "sft", "metrics.jsonl"),
           [{"step": s, "train/loss": 3.0 / s} for s in (10, 20, 30, 40, 50)] + [{"step": 60, "eval/loss": 0.223}])
    for name in ("rm_helpfulness", "rm_safety"):
        _config(os.path.join(run, name), model={"name_or_path": os.path.join(run, "sft", "export")},
                reward={"name": name[3:]}, train={"epochs": 2})
    # Only the helpfulness RM logged its training: the safety RM's curves are absent.
    _jsonl(os.path.join(run, "rm_helpfulness", "metrics.jsonl"),
           [{"step": s, "train/loss": 0.7 - 0.001 * s, "train/accuracy": 0.5 + 0.001 * s} for s in (20, 40, 60)]
           + [{"step": 60, "eval/accuracy": 0.70, "eval/loss": 0.5, "eval/pairs": 800.0}])
    if rs:
        stages["rs1"] = _policy_summary("rs", SFT_EVAL, RS_EVAL, CI["SFT"], CI["RS"], (0.06, 0.06), rounds=2, k=4)
        rounds = [{"step": r, "rs/k": 4.0, "rs/reward_mean": 0.1 * r, "rs/reward_median": 0.1 * r,
                   "rs/reward_max": 0.5 + 0.1 * r, "rs/max_minus_median": 0.5, "rs/kept_reward": 0.45 + 0.1 * r,
                   "rs/kept_gold_reward": 0.6 + 0.01 * r, "rs/all_gold_reward": 0.5 + 0.01 * r, "train/loss": 0.3,
                   **_eval(dict(SFT_EVAL, gold_reward=0.5 + 0.03 * r))} for r in (1, 2)]
        rounds[1].update({"eval/gold_reward_ci_low": 0.41, "eval/gold_reward_ci_high": 0.71})
        _config(os.path.join(run, "rs1"), policy={"name_or_path": os.path.join(run, "sft", "export")},
                reference={"name_or_path": ""}, rs={"rounds": 2, "k": 4})
        if heldout:
            _heldout(os.path.join(run, "rs1", "heldout.json"), SFT_PP, RS_PP, 2)
        _jsonl(os.path.join(run, "rs1", "metrics.jsonl"), [{"step": 0, **_eval(SFT_EVAL)}] + rounds)
        sample = {"prompt": SCRIPT + " Where is the key?", "response": "In the | hall.", "gold_reward": 0.25,
                  "reward": -0.5}
        _json(os.path.join(run, "rs1", "samples.json"),
              {"before": [sample] * 8, "after": [dict(sample, response="The key is in the hall.", gold_reward=0.75)]})
        if curve:
            ks = [1, 2, 3, 4]
            _json(os.path.join(run, "rs1", "best_of_k_curve.json"),
                  {"k": ks, "kl_nats": [math.log(k) - (k - 1) / k for k in ks], "proxy": [0.0, 0.4, 0.6, 0.7],
                   "gold": {"reward": [0.5, 0.56, 0.58, 0.57], "helpfulness": [0.4] * 4, "safety": [0.9] * 4},
                   "gold_ci_low": {"reward": [0.4, 0.5, 0.52, 0.5]}, "gold_ci_high": {"reward": [0.6, 0.62, 0.64, 0.63]},
                   "gold_last_minus_peak": {"reward": [-0.01, -0.03, 0.01]},
                   "prompts": 16, "samples_per_prompt": 4, "policy": "runs/x/sft/export"})
    if ppo:
        stages["ppo"] = _policy_summary("ppo", RS_EVAL if rs else SFT_EVAL, PPO_EVAL, CI["RS" if rs else "SFT"],
                                        CI["PPO"], (-0.09, 0.21) if rs else (-0.03, 0.27), steps=4,
                                        **{"last/kl/per_response": 0.8, "hacking/fired_at": 3,
                                           "stopped_early_at": None})
        iters = _ppo_iterations()
        iters[1].update(_eval(dict(PPO_EVAL, gold_reward=0.6)))
        iters[3].update(_eval(PPO_EVAL), **{"eval/gold_reward_ci_low": 0.62, "eval/gold_reward_ci_high": 0.62})
        _config(os.path.join(run, "ppo"), policy={"name_or_path": os.path.join(run, "rs1" if rs else "sft", "export")},
                reference={"name_or_path": ""}, critic={"name_or_path": os.path.join(run, "rm_helpfulness", "export")},
                ppo={"total_steps": 4})
        if heldout:
            _heldout(os.path.join(run, "ppo", "heldout.json"), RS_PP if rs else SFT_PP, PPO_PP, 4)
        _jsonl(os.path.join(run, "ppo", "metrics.jsonl"), [{"step": 0, **_eval(RS_EVAL)}] + iters)
        _json(os.path.join(run, "ppo", "samples.json"), [{"prompt": "Who has the map?", "response": "Anna has it."}])
    _json(os.path.join(run, "summary.json"), stages, sort_keys=True)  # as the pipeline writes it
    for name, summary in stages.items():  # each finished stage's marker
        _json(os.path.join(run, name, "DONE.json"), summary)
    with open(os.path.join(run, "pipeline.yaml"), "w") as f:
        yaml.safe_dump({"stages": [{"name": n, "kind": s["kind"]} for n, s in stages.items()]}, f)
    return run


def _row(page, first_cell, after="<body>"):
    """The cells of the first table row after the text ``after`` whose first cell is ``first_cell``."""
    m = re.search(r"<tr><td>" + re.escape(first_cell) + r"</td>(.*?)</tr>", page[page.index(after):])
    assert m, first_cell
    return [first_cell] + re.findall(r"<td>(.*?)</td>", m.group(1))


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("full"))
    index = write_report(run)
    with open(index) as f:
        return run, index, f.read()


def test_files_and_plots(full_report):
    import matplotlib.image

    run, index, page = full_report
    assert index == os.path.join(run, "report", "index.html")
    assert os.path.exists(os.path.join(run, "report", "report.md"))
    srcs = re.findall(r'<img src="([^"]+)"', page)
    # rm_safety logged no training curves and PPO no entropy (ppo.entropy_coef unset): no plot of either.
    assert sorted(srcs) == sorted(["sft_loss.png", "rm_helpfulness_training.png", "rs1_rewards.png", "rs1_gold.png",
                                   "rs1_best_of_k.png", "ppo_rewards.png", "ppo_kl.png", "ppo_losses.png",
                                   "ppo_clipfrac.png", "ppo_length.png"])
    assert sorted(f for f in os.listdir(os.path.join(run, "report")) if f.endswith(".png")) == sorted(srcs)
    for src in srcs:
        path = os.path.join(run, "report", src)
        width, height = _png_size(path)
        assert width == 770 and 350 <= height <= 650, (src, width, height)
        assert matplotlib.image.imread(path).shape[:2] == (height, width)


def test_headline_and_stages(full_report):
    _, _, page = full_report
    assert _row(page, "the sft stage's policy") == ["the sft stage's policy", "0.500 [0.350, 0.650]", "0.450",
                                                    "0.900", "0.600", "0.500", "0.100", "12.000"]
    # Figures with their intervals; changes against SFT with their paired intervals where heldout.json
    # has the figure per prompt, without where it does not (gold helpfulness over all prompts here).
    assert _row(page, "after rs1 (rs)")[1:3] == ["0.560 [0.410, 0.710] (+0.060 [+0.060, +0.060])", "0.500 (+0.050)"]
    assert _row(page, "after ppo") == ["after ppo", "0.620 [0.620, 0.620] (+0.120 [-0.030, +0.270])",
                                       "0.450 (+0.000)", "0.950 (+0.050)", "0.700 (+0.100 [+0.100, +0.100])",
                                       "0.750 (+0.250 [+0.250, +0.250])", "0.700 (+0.600)", "14.000 (+2.000)"]
    assert "a percentile bootstrap over the 4 held-out prompts (2 samples per prompt;" in page
    # Only what the intervals support: PPO's +0.120 in gold reward has an interval reaching below 0.
    assert ("The gold reward went from 0.500 (the sft stage's policy) to 0.620 (after ppo), a change of +0.120 "
            "whose 95% interval [-0.030, +0.270] includes 0, so this run does not show a change. Gold helpfulness "
            "on safe prompts rose from 0.600 (the sft stage's policy) to 0.700 (after ppo), by +0.100 (95% "
            "interval [+0.100, +0.100]); gold safety on unsafe prompts rose from 0.500 (the sft stage's policy) "
            "to 0.750 (after ppo), by +0.250 (95% interval [+0.250, +0.250]).") in page
    comparisons = "<th>comparison</th>"
    assert _row(page, "after rs1 (rs) against the sft stage's policy", after=comparisons)[1:] == [
        "+0.060 [+0.060, +0.060]", "—", "—", "+0.000 [+0.000, +0.000]", "+0.000 [+0.000, +0.000]", "—", "—"]
    assert _row(page, "after ppo against after rs1 (rs)", after=comparisons)[1:6] == [
        "+0.060 [-0.090, +0.210]", "—", "—", "+0.100 [+0.100, +0.100]", "+0.250 [+0.250, +0.250]"]
    assert ("after rs1 (rs) against the sft stage's policy: gold reward +0.060 [+0.060, +0.060], higher; after "
            "ppo against after rs1 (rs): gold reward +0.060 [-0.090, +0.210], not distinguishable from no "
            "change.") in page
    assert "held-out gold reward 0.500 → 0.560 (gain +0.060 [+0.060, +0.060])" in page
    assert "held-out gold reward 0.560 → 0.620 (gain +0.060 [-0.090, +0.210])" in page
    # Stages in pipeline order, not summary.json's sorted order.
    names = ["toyworld", "sft", "rm_helpfulness", "rm_safety", "rs1", "ppo"]
    positions = [page.index(f"<tr><td>{n}</td><td>") for n in names]
    assert positions == sorted(positions)
    assert "held-out perplexity 1.250" in page


def test_without_per_prompt_figures_changes_have_no_interval(tmp_path):
    with open(write_report(make_run(tmp_path, heldout=False))) as f:
        page = f.read()
    assert _row(page, "after ppo")[1] == "0.620 [0.620, 0.620] (+0.120)"
    assert "This run kept no per-prompt figures (heldout.json), so its changes have no intervals." in page
    assert ("The gold reward went from 0.500 (the sft stage's policy) to 0.620 (after ppo); without per-prompt "
            "figures the run gives no interval for the change.") in page
    assert "<th>comparison</th>" not in page


def test_interval_points_give_error_bars():
    from rayrlhf.report.plots import interval_points

    rows = [{"step": 0, "eval/gold_reward": 0.5, "eval/gold_reward_ci_low": 0.35, "eval/gold_reward_ci_high": 0.65},
            {"step": 10, "eval/gold_reward": 0.62, "eval/gold_reward_ci_low": 0.6, "eval/gold_reward_ci_high": 0.7},
            {"step": 20, "eval/reward": 0.1}]
    x, y, yerr = interval_points(rows, "eval/gold_reward")
    assert (x, y) == ([0, 10], [0.5, 0.62])
    assert yerr == [[pytest.approx(0.15), pytest.approx(0.02)], [pytest.approx(0.15), pytest.approx(0.08)]]
    x, y, yerr = interval_points(rows + [{"step": 30, "eval/gold_reward": 0.7}], "eval/gold_reward")
    assert x == [0, 10, 30] and math.isnan(yerr[0][2]) and math.isnan(yerr[1][2])  # no bar at step 30
    assert interval_points([{"step": 30, "eval/gold_reward": 0.7}], "eval/gold_reward") == ([30], [0.7], None)


def test_reward_model_table(full_report):
    _, _, page = full_report
    header = re.search(r"<th>reward model</th>(.*?)</tr>", page).group(1)
    assert re.findall(r"<th>(.*?)</th>", header) == ["significantly better", "better", "slightly better",
                                                     "negligibly better", "overall", "gold order", "length baseline"]
    table = "<th>reward model</th>"
    assert _row(page, "rm_helpfulness", after=table)[1:] == ["90.0% (140)", "82.0% (240)", "64.0% (230)",
                                                             "53.0% (190)", "70.0%", "77.0%", "48.0%"]
    assert _row(page, "rm_safety", after=table)[1:] == ["95.0% (140)", "91.0% (240)", "67.0% (230)", "51.0% (190)",
                                                        "76.0%", "100.0%", "44.0%"]
    assert "rm_helpfulness 48.0%, +22.0 points" in page


def test_rejection_sampling_and_best_of_k(full_report):
    _, _, page = full_report
    # round, K, mean, median, max, max - median, kept proxy, kept gold, all-K gold, held-out gold, loss
    assert _row(page, "2", after="<th>round</th>") == ["2", "4", "0.200", "0.200", "0.700", "0.500", "0.650",
                                                       "0.620", "0.520", "0.560 [0.410, 0.710]", "0.300"]
    assert _row(page, "3", after="<th>K</th>") == ["3", "0.432", "0.600", "0.580 [0.520, 0.640]", "0.400",
                                                   "0.900"]  # best-of-K table
    assert _row(page, "4", after="<th>K</th>")[1:4] == ["0.636", "0.700", "0.570 [0.500, 0.630]"]
    assert ("The gold reward peaks at K=3 (0.43 nats); at the largest K, K=4, it differs from the peak by -0.010 "
            "[-0.030, +0.010] (paired over prompts), an interval that includes 0, so this run does not show it "
            "falling past the peak.") in page


def test_ppo_and_samples_escaped(full_report):
    run, _, page = full_report
    assert "KL to the reference at the last iteration: 0.800 nats per response." in page
    assert ("Reward-hacking alarm: fired at iteration 3: the proxy reward kept rising while the watched signal "
            "or the reward models' agreement fell beyond its noise, or the response length drifted (the "
            "hacking/* metrics say which). Training went on (ppo.hacking.stop is off)") in page
    assert _row(page, "4", after="<th>iteration</th>") == ["4", "0.620 [0.620, 0.620]", "0.450", "0.950", "0.700",
                                                            "0.750", "0.700", "14.000"]
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("Where is the key?") == 6 + 1  # at most 6 'before' rows, 1 'after'
    assert "Anna has it." in page and "No &#x27;before&#x27; samples" not in page
    assert "No 'before' samples were saved by ppo." in page
    with open(os.path.join(run, "report", "report.md")) as f:
        md = f.read()
    assert "<script>" not in md and "In the \\| hall." in md and "| 70.0% |" in md


@pytest.mark.parametrize("rs,curve,ppo,absent", [
    (True, False, False, ["No best-of-K curve was measured", "No PPO stage ran"]),
    (False, False, False, ["No rejection-sampling or PPO stage finished", "No rejection-sampling stage ran",
                           "No best-of-K curve was measured", "No PPO stage ran",
                           "No policy stage saved sample generations"]),
    (False, False, True, ["No rejection-sampling stage ran", "No best-of-K curve was measured"]),
])
def test_missing_pieces_are_named(tmp_path, rs, curve, ppo, absent):
    run = make_run(tmp_path, rs=rs, curve=curve, ppo=ppo)
    with open(write_report(run, str(tmp_path / "out"))) as f:
        page = f.read()
    for sentence in absent:
        assert sentence in page
    assert ("No PPO stage ran" in page) != ppo


def test_rewrite_replaces_old_report_and_cli(tmp_path, capsys):
    from rayrlhf.cli import main

    run = make_run(tmp_path, rs=False, ppo=False)
    os.makedirs(os.path.join(run, "report"))
    open(os.path.join(run, "report", "stale.png"), "w").close()
    assert main(["report", run]) == 0
    assert capsys.readouterr().out.strip() == os.path.join(run, "report", "index.html")
    assert sorted(os.listdir(os.path.join(run, "report"))) == ["index.html", "report.md", "rm_helpfulness_training.png",
                                                               "sft_loss.png"]
    assert main(["report", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("drop,said", [
    ([-0.02, -0.03, -0.01], "The gold reward peaks at K=2 (0.19 nats) and is lower at the largest K, K=3, by -0.020 "
                            "[-0.030, -0.010] (paired over prompts) while the proxy keeps rising: over-optimisation "
                            "beyond the peak."),
    (None, "The gold reward peaks at K=2 (0.19 nats) and falls for larger K while the proxy keeps rising: "
           "over-optimisation beyond that point."),
])
def test_best_of_k_claims_a_fall_past_the_peak_only_when_its_interval_is_below_zero(drop, said):
    from rayrlhf.report.collect import _curve
    from rayrlhf.report.sections import _best_of_k

    ks = [1, 2, 3]
    curve = {"k": ks, "kl_nats": [math.log(k) - (k - 1) / k for k in ks], "proxy": [0.0, 0.4, 0.6],
             "gold": {"reward": [0.5, 0.6, 0.58]}, "prompts": 16, "samples_per_prompt": 3}
    if drop:
        curve["gold_last_minus_peak"] = {"reward": drop}
    blocks = _best_of_k({"curves": {"rs": _curve(curve)}}, {})
    assert ("p", said) in blocks


def test_the_hacking_alarm_line_reads_each_outcome():
    from rayrlhf.report.sections import _hacking

    assert _hacking({"steps": 20}) is None
    assert _hacking({"steps": 20, "hacking/fired_at": None}).startswith(
        "Reward-hacking alarm: quiet over the 20 iterations")
    assert _hacking({"steps": 7, "hacking/fired_at": 7, "stopped_early_at": 7}).endswith(
        "Training stopped there (ppo.hacking.stop).")
    # rejection sampling counts rounds, under rs.hacking
    assert _hacking({"rounds": 12, "hacking/fired_at": None}, "round", "rs", "rounds").startswith(
        "Reward-hacking alarm: quiet over the 12 rounds")
    assert _hacking({"rounds": 12, "hacking/fired_at": 11, "stopped_early_at": None}, "round", "rs", "rounds").endswith(
        "Training went on (rs.hacking.stop is off); the policy after that round may be gaming the reward.")


@pytest.fixture
def drawn(monkeypatch):
    """{file name: matplotlib Figure} of every plot a report saves, kept after it is written."""
    from matplotlib.figure import Figure

    figures, save = {}, Figure.savefig

    def keep(fig, path, *args, **kwargs):
        save(fig, path, *args, **kwargs)
        figures[os.path.basename(path)] = fig

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def _legend_labels(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_labels_name_the_policy_each_stage_started_from(full_report, tmp_path, drawn):
    _, _, page = full_report
    assert "SFT policy" not in page and "(SFT)" not in page
    assert "ppo started from the rs1 stage's policy; its reference is the rs1 stage's policy." in page
    assert "<h3>rs1: before (the sft stage's policy)</h3>" in page
    assert "<h3>ppo: before (the rs1 stage's policy)</h3>" in page
    # PPO straight after SFT: its row, sentence and plot name SFT's export as its start.
    with open(write_report(make_run(tmp_path, rs=False))) as f:
        page = f.read()
    assert _row(page, "the sft stage's policy")[1] == "0.500 [0.350, 0.650]"
    assert "ppo started from the sft stage's policy; its reference is the sft stage's policy." in page
    assert drawn["ppo_rewards.png"].axes[1].get_xlabel() == "PPO iteration (0 = the sft stage's policy)"
    assert drawn["ppo_kl.png"].axes[0].get_title() == "ppo: KL of the policy to the reference (the sft stage's policy)"


def test_policy_names(tmp_path):
    from rayrlhf.report.folders import policy_name

    run = str(tmp_path / "quickstart")
    os.makedirs(os.path.join(run, "rs", "export"))
    names = ["sft", "rs", "ppo"]
    assert policy_name(os.path.join(run, "rs", "export"), run, names) == "the rs stage's policy"
    assert policy_name(os.path.join(run, "rs", "export") + "/", run, names) == "the rs stage's policy"
    assert policy_name("{run}/sft/export", run, names) == "the sft stage's policy"
    # A run folder moved since: its configs hold the old path, under a folder of the same name.
    assert policy_name("/old/place/quickstart/sft/export", run, names) == "the sft stage's policy"
    assert policy_name("/models/llama-2-7b-sft", run, names) == "llama-2-7b-sft"
    assert policy_name(os.path.join(run, "other", "export"), run, names) == "export"  # not a stage of this run
    assert policy_name(os.path.join(run, "rs", "export"), None, []) == "export"  # no pipeline to name it in


def test_reward_model_training_curves(full_report, tmp_path, drawn):
    _, _, page = full_report
    assert page.index('<img src="rm_helpfulness_training.png"') < page.index("<th>reward model</th>")
    write_report(make_run(tmp_path, rs=False, ppo=False))
    loss, acc = drawn["rm_helpfulness_training.png"].axes
    assert _legend_labels(loss) == _legend_labels(acc) == ["training batches", "held-out pairs"]
    assert [list(line.get_xdata()) for line in loss.lines] == [[20, 40, 60], [60]]
    assert list(loss.lines[0].get_ydata()) == pytest.approx([0.68, 0.66, 0.64])
    assert list(acc.lines[1].get_ydata()) == [0.70]
    assert "rm_safety_training.png" not in drawn


def test_ppo_training_plots_leave_out_missing_series(tmp_path, drawn):
    run = make_run(tmp_path / "critic", rs=False)
    with open(write_report(run)) as f:
        page = f.read()
    for name in ("ppo_losses.png", "ppo_clipfrac.png", "ppo_length.png"):
        assert f'<img src="{name}"' in page
    policy, value = drawn["ppo_losses.png"].axes
    assert list(policy.lines[0].get_ydata()) == pytest.approx([-0.01, -0.02, -0.03, -0.04])
    assert list(value.lines[0].get_ydata()) == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    assert _legend_labels(drawn["ppo_clipfrac.png"].axes[0]) == ["policy ratio", "critic value"]
    length = drawn["ppo_length.png"].axes[0]
    assert _legend_labels(length) == ["training samples", "held-out prompts"]
    assert list(length.lines[1].get_xdata()) == [0, 2, 4]  # held-out: the start, then iterations 2 and 4
    assert "ppo_entropy.png" not in drawn  # ppo.entropy_coef unset: no entropy logged
    # Without a critic: no value-loss panel, no value clip fraction.
    rows = [{"step": 0, **_eval(SFT_EVAL)}] + _ppo_iterations(critic=False)
    _jsonl(os.path.join(run, "ppo", "metrics.jsonl"), rows)
    drawn.clear()
    write_report(run)
    assert [ax.get_ylabel() for ax in drawn["ppo_losses.png"].axes] == ["policy loss (clipped\nsurrogate, per token)"]
    assert _legend_labels(drawn["ppo_clipfrac.png"].axes[0]) == ["policy ratio"]


def test_legends_sit_outside_every_axes(tmp_path, drawn):
    write_report(make_run(tmp_path))
    assert len(drawn) == 10
    for name, fig in drawn.items():
        renderer = fig.canvas.get_renderer()
        legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert legends, name
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), (name, ax.get_title())


def test_rs_gold_leaves_out_a_series_the_run_did_not_log(tmp_path, drawn):
    run = make_run(tmp_path, ppo=False)
    rows = [json.loads(line) for line in open(os.path.join(run, "rs1", "metrics.jsonl"))]
    _jsonl(os.path.join(run, "rs1", "metrics.jsonl"), [{k: v for k, v in r.items() if k != "rs/all_gold_reward"}
                                                       for r in rows])
    write_report(run)
    assert _legend_labels(drawn["rs1_gold.png"].axes[0]) == [
        "kept samples (training data)",
        "held-out prompts, policy after the round\n(0 = the sft stage's policy) (bars: interval)"]


def _stage_folder(folder):
    """A PPO run of its own (``rayrlhf ppo``): config, summary and metrics, no pipeline."""
    _config(folder, policy={"name_or_path": "/models/llama-sft"}, reference={"name_or_path": "/models/llama-ref"},
            ppo={"total_steps": 4})
    _json(os.path.join(folder, "summary.json"),
          _policy_summary("ppo", SFT_EVAL, PPO_EVAL, CI["SFT"], CI["PPO"], (-0.03, 0.27), steps=4,
                          **{"last/kl/per_response": 0.8}))
    _jsonl(os.path.join(folder, "metrics.jsonl"), [{"step": 0, **_eval(SFT_EVAL)}] + _ppo_iterations())
    return folder


def test_a_stage_folder_renders(tmp_path, capsys):
    from rayrlhf.cli import main

    folder = _stage_folder(str(tmp_path / "my_ppo"))
    assert main(["report", folder]) == 0
    index = os.path.join(folder, "report", "index.html")
    assert capsys.readouterr().out.strip() == index
    with open(index) as f:
        page = f.read()
    assert "<h1>Stage report: my_ppo</h1>" in page
    assert _row(page, "my_ppo", after="<th>stage</th>")[1:3] == ["ppo", "30.0"]
    assert _row(page, "llama-sft")[1] == "0.500 [0.350, 0.650]"
    assert _row(page, "after my_ppo (ppo)")[1] == "0.620 [0.620, 0.620] (+0.120)"
    assert "my_ppo started from llama-sft; its reference is llama-ref." in page
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == [
        "my_ppo_clipfrac.png", "my_ppo_kl.png", "my_ppo_length.png", "my_ppo_losses.png", "my_ppo_rewards.png"]


def test_a_stage_folder_of_a_pipeline_names_the_other_stages(tmp_path):
    run = make_run(tmp_path)
    with open(write_report(os.path.join(run, "ppo"))) as f:
        page = f.read()
    assert "<h1>Stage report: ppo</h1>" in page
    assert _row(page, "the rs1 stage's policy")[1] == "0.560 [0.410, 0.710]"
    assert "ppo started from the rs1 stage's policy; its reference is the rs1 stage's policy." in page


def test_a_folder_without_a_run_fails_clearly(tmp_path, capsys):
    from rayrlhf.cli import main

    empty = tmp_path / "empty"
    os.makedirs(empty / "notes")
    assert main(["report", str(empty)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"rayrlhf report: {empty} holds no run: expected a pipeline run (pipeline.yaml, or "
                            "summary.json of its stages) or a stage's run (config.yaml, metrics.jsonl, summary.json, "
                            "DONE.json)\n")
    assert os.listdir(empty) == ["notes"]


def test_a_stage_kind_from_its_marker_or_its_config_sections(tmp_path):
    from rayrlhf.report.folders import stage_kind

    assert stage_kind(str(tmp_path), {"policy": {}, "critic": {}, "ppo": {}, "run": {}}) == "ppo"
    assert stage_kind(str(tmp_path), {"policy": {}, "rs": {}, "dpo": {}, "rrhf": {}}) == "rs"  # rs has both
    assert stage_kind(str(tmp_path), {"model": {}, "train": {}, "reward": {}}) == "rm"
    assert stage_kind(str(tmp_path), {"model": {}, "train": {}, "dpo": {}}) == "dpo"
    assert stage_kind(str(tmp_path), {"model": {}, "train": {}}) == "sft"
    assert stage_kind(str(tmp_path), {}) is None
    _json(str(tmp_path / "DONE.json"), {"kind": "rrhf"})  # a pipeline's marker says
    assert stage_kind(str(tmp_path), {"model": {}, "train": {}}) == "rrhf"
