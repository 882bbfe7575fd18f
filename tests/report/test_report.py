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


def make_run(root, rs=True, curve=True, ppo=True, heldout=True):
    """A finished pipeline run: toyworld, sft, two reward models, optionally rs1 and ppo, and
    their per-prompt held-out figures."""
    run = str(root / "run")
    stages = {"toyworld": {"kind": "toyworld", "seconds": 5.0, "base_model_parameters": 557696, "vocab_size": 512},
              "sft": {"kind": "sft", "seconds": 40.0, "eval/ppl": 1.25, "eval/loss": 0.223, "train/loss": 0.2,
                      "steps": 60},
              "rm_helpfulness": _rm_summary(0.70, (0.90, 0.82, 0.64, 0.53), 0.77, 0.48),
              "rm_safety": _rm_summary(0.76, (0.95, 0.91, 0.67, 0.51), 1.0, 0.44)}
    os.makedirs(os.path.join(run, "sft"))
    _jsonl(os.path.join(run, "sft", "metrics.jsonl"),
           [{"step": s, "train/loss": 3.0 / s} for s in (10, 20, 30, 40, 50)] + [{"step": 60, "eval/loss": 0.223}])
    if rs:
        stages["rs1"] = _policy_summary("rs", SFT_EVAL, RS_EVAL, CI["SFT"], CI["RS"], (0.06, 0.06), rounds=2, k=4)
        rounds = [{"step": r, "rs/k": 4.0, "rs/reward_mean": 0.1 * r, "rs/reward_median": 0.1 * r,
                   "rs/reward_max": 0.5 + 0.1 * r, "rs/max_minus_median": 0.5, "rs/kept_reward": 0.45 + 0.1 * r,
                   "rs/kept_gold_reward": 0.6 + 0.01 * r, "rs/all_gold_reward": 0.5 + 0.01 * r, "train/loss": 0.3,
                   **_eval(dict(SFT_EVAL, gold_reward=0.5 + 0.03 * r))} for r in (1, 2)]
        rounds[1].update({"eval/gold_reward_ci_low": 0.41, "eval/gold_reward_ci_high": 0.71})
        os.makedirs(os.path.join(run, "rs1"))
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
        iters = [{"step": i, "rollout/reward_mean": 0.2 * i, "gold/reward": 0.5 + 0.02 * i, "kl/per_response": 0.2 * i,
                  "kl/coef": 0.1} for i in (1, 2, 3, 4)]
        iters[1].update(_eval(dict(PPO_EVAL, gold_reward=0.6)))
        iters[3].update(_eval(PPO_EVAL), **{"eval/gold_reward_ci_low": 0.62, "eval/gold_reward_ci_high": 0.62})
        os.makedirs(os.path.join(run, "ppo"))
        if heldout:
            _heldout(os.path.join(run, "ppo", "heldout.json"), RS_PP if rs else SFT_PP, PPO_PP, 4)
        _jsonl(os.path.join(run, "ppo", "metrics.jsonl"), [{"step": 0, **_eval(RS_EVAL)}] + iters)
        _json(os.path.join(run, "ppo", "samples.json"), [{"prompt": "Who has the map?", "response": "Anna has it."}])
    _json(os.path.join(run, "summary.json"), stages, sort_keys=True)  # as the pipeline writes it
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
    assert sorted(srcs) == sorted(["sft_loss.png", "rs1_rewards.png", "rs1_gold.png", "rs1_best_of_k.png",
                                   "ppo_rewards.png", "ppo_kl.png"])
    for src in srcs:
        path = os.path.join(run, "report", src)
        width, height = _png_size(path)
        assert width == 770 and 350 <= height <= 650, (src, width, height)
        assert matplotlib.image.imread(path).shape[:2] == (height, width)


def test_headline_and_stages(full_report):
    _, _, page = full_report
    assert _row(page, "SFT policy") == ["SFT policy", "0.500 [0.350, 0.650]", "0.450", "0.900", "0.600", "0.500",
                                        "0.100", "12.000"]
    # Figures with their intervals; changes against SFT with their paired intervals where heldout.json
    # has the figure per prompt, without where it does not (gold helpfulness over all prompts here).
    assert _row(page, "after rs1 (rs)")[1:3] == ["0.560 [0.410, 0.710] (+0.060 [+0.060, +0.060])", "0.500 (+0.050)"]
    assert _row(page, "after ppo") == ["after ppo", "0.620 [0.620, 0.620] (+0.120 [-0.030, +0.270])",
                                       "0.450 (+0.000)", "0.950 (+0.050)", "0.700 (+0.100 [+0.100, +0.100])",
                                       "0.750 (+0.250 [+0.250, +0.250])", "0.700 (+0.600)", "14.000 (+2.000)"]
    assert "a percentile bootstrap over the 4 held-out prompts (2 samples per prompt;" in page
    # Only what the intervals support: PPO's +0.120 in gold reward has an interval reaching below 0.
    assert ("The gold reward went from 0.500 (SFT) to 0.620 (after ppo), a change of +0.120 whose 95% interval "
            "[-0.030, +0.270] includes 0, so this run does not show a change. Gold helpfulness on safe prompts "
            "rose from 0.600 (SFT) to 0.700 (after ppo), by +0.100 (95% interval [+0.100, +0.100]); gold safety "
            "on unsafe prompts rose from 0.500 (SFT) to 0.750 (after ppo), by +0.250 (95% interval "
            "[+0.250, +0.250]).") in page
    comparisons = "<th>comparison</th>"
    assert _row(page, "after rs1 (rs) against SFT policy", after=comparisons)[1:] == [
        "+0.060 [+0.060, +0.060]", "—", "—", "+0.000 [+0.000, +0.000]", "+0.000 [+0.000, +0.000]", "—", "—"]
    assert _row(page, "after ppo against after rs1 (rs)", after=comparisons)[1:6] == [
        "+0.060 [-0.090, +0.210]", "—", "—", "+0.100 [+0.100, +0.100]", "+0.250 [+0.250, +0.250]"]
    assert ("after rs1 (rs) against SFT policy: gold reward +0.060 [+0.060, +0.060], higher; after ppo against "
            "after rs1 (rs): gold reward +0.060 [-0.090, +0.210], not distinguishable from no change.") in page
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
    assert ("The gold reward went from 0.500 (SFT) to 0.620 (after ppo); without per-prompt figures the run gives "
            "no interval for the change.") in page
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
    assert sorted(os.listdir(os.path.join(run, "report"))) == ["index.html", "report.md", "sft_loss.png"]
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
