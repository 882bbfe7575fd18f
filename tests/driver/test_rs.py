"""Best-of-K rejection sampling on Ray with tiny models: what a round keeps, the best-of-K
curve, exact resume after a crash inside a round, and `best-of-k` at inference time."""
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from rayrlhf import checkpoint as ckpt
from rayrlhf.algo.intervals import paired_interval
from rayrlhf.config import load_config
from rayrlhf.config.rs import RSConfig
from rayrlhf.driver.rs_stage import run_best_of_k, run_rs
from rayrlhf.metrics import read_metrics
from tests.driver import faults
from tests.driver.tiny import world_on_local_ray

pytestmark = pytest.mark.slow

ROUNDS, PROMPTS, K, EVAL, CURVE_K, EVAL_N = 3, 4, 4, 4, 4, 2
# Reward calls: the curve (EVAL x CURVE_K), the evaluation before (EVAL x EVAL_N), then K per
# prompt and EVAL x EVAL_N per round.
CRASH_IN_ROUND_2 = EVAL * CURVE_K + EVAL * EVAL_N + (PROMPTS * K + EVAL * EVAL_N) + 5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from world_on_local_ray(tmp_path_factory, "rs_world")


def _cfg(world, run_dir, **rs):
    r = {"rounds": ROUNDS, "k": K, "prompts_per_round": PROMPTS, "epochs": 2, "global_batch_size": 2, "lr": 1e-3,
         "curve_k": CURVE_K, "curve_prompts": EVAL, "call_timeout_s": 120, **rs}
    return load_config(RSConfig, data={
        "policy": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [f"{world}/data/prompts_train.jsonl"], "eval": [f"{world}/data/prompts_eval.jsonl"],
                 "max_prompt_tokens": 96, "eval_limit": EVAL},
        "rewards": [{"name": "rule", "function": "tests.driver.faults:reward"}],
        "gold": {"helpfulness": "rayrlhf.tasks.toyworld:gold_helpfulness"},
        "rollout": {"backend": "hf", "max_new_tokens": 8, "max_model_len": 160},
        "rs": r,
        "eval": {"samples_per_prompt": EVAL_N},
        "resources": {"trainer": {"num_workers": 2, "cpus_per_worker": 0.25},
                      "rollout": {"num_workers": 2, "cpus_per_worker": 0.25}},
        "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir), "seed": 5},
    })


def _comparable(run_dir):
    return [{k: v for k, v in r.items() if not (k.startswith("timing/") or "seconds" in k)} for r in read_metrics(run_dir)]


def _json(run_dir, name):
    return json.load(open(os.path.join(run_dir, name)))


def _weights(run_dir):
    return load_file(os.path.join(run_dir, "export", "model.safetensors"))


@pytest.fixture(scope="module")
def reference_run(world, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("runs") / "full")
    faults.reset()
    return run_dir, run_rs(_cfg(world, run_dir))


def test_each_round_keeps_the_best_of_k_and_fine_tunes_on_it(reference_run):
    run_dir, summary = reference_run
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(ROUNDS + 1))  # step 0: the evaluation before any round
    for r in rows[1:]:
        assert r["rollout/samples"] == PROMPTS * K and r["rs/kept"] == PROMPTS
        # top-1 keeps each prompt's maximum: the kept mean is the mean of the per-prompt maxima
        assert r["rs/kept_reward"] == pytest.approx(r["rs/reward_max"], abs=1e-6)
        assert r["rs/max_minus_median"] == pytest.approx(r["rs/reward_max"] - r["rs/reward_median"], abs=1e-6)
        assert r["rs/reward_max"] >= r["rs/reward_mean"]
        assert math.isfinite(r["train/nll"]) and r["policy/version"] == rows.index(r)
        assert "sync/probe_max_diff" in r and "eval/gold_helpfulness" in r
    for rnd in range(1, ROUNDS + 1):
        kept = [json.loads(x) for x in open(os.path.join(run_dir, "kept", f"round-{rnd:04d}.jsonl"))]
        assert len(kept) == PROMPTS and len({k["prompt_row"] for k in kept}) == PROMPTS
        assert all(k["messages"][-1]["role"] == "assistant" and k["messages"][0]["role"] == "user" for k in kept)
        assert sum(k["reward"] for k in kept) / PROMPTS == pytest.approx(rows[rnd]["rs/kept_reward"], abs=1e-5)
    assert summary["rounds"] == ROUNDS and len(summary["rounds_history"]["rs/kept_reward"]) == ROUNDS
    # Held-out figures: means over the EVAL prompts of each prompt's mean over EVAL_N samples, with
    # bootstrap intervals; the gain's interval is the paired one of the per-prompt differences.
    held = json.load(open(os.path.join(run_dir, "heldout.json")))
    assert (held["prompts"], held["samples_per_prompt"], held["after_version"]) == (EVAL, EVAL_N, ROUNDS)
    before, after = held["before"]["gold_helpfulness"], held["after"]["gold_helpfulness"]
    assert summary["before/gold_helpfulness"] == pytest.approx(sum(before) / EVAL)
    assert summary["eval/gold_helpfulness"] == pytest.approx(sum(after) / EVAL)
    assert rows[0]["eval/gold_helpfulness"] == summary["before/gold_helpfulness"]
    for key in ("before/gold_helpfulness", "eval/gold_helpfulness", "eval/reward", "gain/gold_helpfulness"):
        assert summary[key + "_ci_low"] <= summary[key] <= summary[key + "_ci_high"], key
    gain = paired_interval(after, before, 0.95, 2000, 0)
    assert [summary[f"gain/gold_helpfulness{s}"] for s in ("", "_ci_low", "_ci_high")] == list(gain)
    samples = json.load(open(os.path.join(run_dir, "samples.json")))
    assert set(samples) == {"before", "after"} and samples["before"][0]["prompt"]
    assert os.path.exists(os.path.join(run_dir, "export", "config.json"))


def test_best_of_k_curve(reference_run):
    run_dir, summary = reference_run
    curve = json.load(open(os.path.join(run_dir, "best_of_k_curve.json")))
    assert curve["k"] == list(range(1, CURVE_K + 1)) and curve["prompts"] == EVAL
    assert curve["kl_nats"] == pytest.approx([math.log(k) - (k - 1) / k for k in curve["k"]])
    # the expected best of k never falls as k grows; gold is reported beside it
    assert all(b >= a - 1e-9 for a, b in zip(curve["proxy"], curve["proxy"][1:]))
    assert len(curve["gold"]["helpfulness"]) == CURVE_K
    # each gold figure within its bootstrap interval over the curve's prompts; the same in summary.json
    gold, low, high = (curve[f]["helpfulness"] for f in ("gold", "gold_ci_low", "gold_ci_high"))
    assert all(lo <= g <= hi for g, lo, hi in zip(gold, low, high)) and len(low) == len(high) == CURVE_K
    at = f"curve/gold_helpfulness@{CURVE_K}"
    assert [summary[at + s] for s in ("", "_ci_low", "_ci_high")] == [gold[-1], low[-1], high[-1]]
    peak = max(range(CURVE_K), key=gold.__getitem__)
    drop, lo, hi = curve["gold_last_minus_peak"]["helpfulness"]
    assert drop == pytest.approx(gold[-1] - gold[peak]) and lo <= drop <= hi


def test_resume_after_a_crash_inside_a_round_is_exact(world, reference_run, tmp_path, capfd):
    full_dir, _ = reference_run
    run_dir = str(tmp_path / "stopped")
    faults.reset(crash_at=CRASH_IN_ROUND_2)
    with pytest.raises(RuntimeError, match="driver killed"):
        run_rs(_cfg(world, run_dir))
    state = json.load(open(os.path.join(ckpt.latest_checkpoint(run_dir), "state.json")))
    assert state["step"] == 1 and state["rollout_workers"] == 2  # the fleet of 2; a resumed run asks for it again
    faults.reset()
    run_rs(_cfg(world, run_dir), resume=True)
    assert "after round 1" in capfd.readouterr().out
    assert _comparable(run_dir) == _comparable(full_dir)
    assert _json(run_dir, "heldout.json") == _json(full_dir, "heldout.json")
    assert _json(run_dir, "summary.json") == _json(full_dir, "summary.json")
    a, b = _weights(run_dir), _weights(full_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_top_m_and_min_reward(world, tmp_path):
    faults.reset()
    run_dir = str(tmp_path / "top2")
    summary = run_rs(_cfg(world, run_dir, rounds=1, top_m=2, min_reward=-1e9, curve_k=0))
    row = read_metrics(run_dir)[1]
    assert row["rs/kept"] == 2 * PROMPTS and row["rs/rejected_prompts"] == 0
    assert summary["top_m"] == 2
    run_dir = str(tmp_path / "strict")
    run_rs(_cfg(world, run_dir, rounds=1, min_reward=1e9, curve_k=0))
    row = read_metrics(run_dir)[1]
    assert row["rs/kept"] == 0 and row["rs/rejected_prompts"] == PROMPTS and row["policy/version"] == 0


def test_best_of_k_at_inference_time(world, tmp_path):
    faults.reset()
    cfg = _cfg(world, str(tmp_path / "bok"), curve_k=2)
    summary = run_best_of_k(cfg)
    rows = [json.loads(x) for x in open(tmp_path / "bok" / "best_of_k.jsonl")]
    assert len(rows) == summary["prompts"] == 24
    for r in rows:
        assert len(r["candidates_rewards"]) == K and r["reward"] == pytest.approx(max(r["candidates_rewards"]))
        assert r["reward"] == pytest.approx(r["scores"]["rule"])
    assert summary["rs/kept_reward"] == pytest.approx(summary["rs/max"], abs=1e-6)
    assert os.path.exists(tmp_path / "bok" / "best_of_k_curve.json")
    assert not os.path.exists(tmp_path / "bok" / "export")  # nothing trained


def _online_cfg(world, run_dir, objective, rounds=2):
    cfg = _cfg(world, run_dir, rounds=rounds, curve_k=0, objective=objective)
    cfg.resources.reference.cpus_per_worker = 0.25
    return cfg


@pytest.fixture(scope="module")
def online_dpo_run(world, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("runs") / "online_dpo")
    faults.reset()
    return run_dir, run_rs(_online_cfg(world, run_dir, "dpo"))


def test_online_dpo_trains_on_best_worst_pairs_and_writes_them(online_dpo_run):
    from rayrlhf.data.formats import read_records

    run_dir, summary = online_dpo_run
    rows = read_metrics(run_dir)
    assert summary["objective"] == "dpo" and [r["step"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["rs/kept"] + r["rs/tied_prompts"] == PROMPTS and r["rs/kept"] > 0
        assert r["rs/pair_reward_gap"] > 0 and r["train/skipped"] == 0.0
        assert math.isfinite(r["train/rewards/margins"]) and r["policy/version"] == r["step"]
        assert "timing/reference" in r
    pairs = [json.loads(x) for x in open(os.path.join(run_dir, "kept", "round-0001.jsonl"))]
    assert len(pairs) == rows[1]["rs/kept"] and all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    read = read_records(os.path.join(run_dir, "kept", "round-0001.jsonl"), "preference")
    assert read.format == "explicit" and not read.problems and len(read.records) == len(pairs)
    assert _json(run_dir, "export/rayrlhf.json")["objective"] == "dpo"


def test_online_dpo_resumes_exactly_after_a_crash_inside_a_round(world, online_dpo_run, tmp_path):
    full_dir, _ = online_dpo_run
    run_dir = str(tmp_path / "stopped")
    # Reward calls: the evaluation before (EVAL x EVAL_N), round 1 (PROMPTS x K, EVAL x EVAL_N), 5 of round 2.
    faults.reset(crash_at=EVAL * EVAL_N + PROMPTS * K + EVAL * EVAL_N + 5)
    with pytest.raises(RuntimeError, match="driver killed"):
        run_rs(_online_cfg(world, run_dir, "dpo"))
    faults.reset()
    run_rs(_online_cfg(world, run_dir, "dpo"), resume=True)
    assert _comparable(run_dir) == _comparable(full_dir)
    a, b = _weights(run_dir), _weights(full_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_online_rrhf_trains_on_each_prompts_ranked_samples(world, tmp_path):
    from rayrlhf.data.formats import read_records

    faults.reset()
    run_dir = str(tmp_path / "online_rrhf")
    summary = run_rs(_online_cfg(world, run_dir, "rrhf", rounds=1))
    rows = read_metrics(run_dir)
    assert summary["objective"] == "rrhf"
    for r in rows[1:]:
        assert r["rs/kept"] == PROMPTS and r["train/skipped"] == 0.0 and math.isfinite(r["train/rank_loss"])
        # the best of each ranked list is its maximum
        assert r["rs/kept_reward"] == pytest.approx(r["rs/reward_max"], abs=1e-6)
    lists = [json.loads(x) for x in open(os.path.join(run_dir, "kept", "round-0001.jsonl"))]
    assert len(lists) == PROMPTS and all(len(x["responses"]) == len(x["scores"]) == K for x in lists)
    read = read_records(os.path.join(run_dir, "kept", "round-0001.jsonl"), "preference")
    assert read.format == "ranked" and not read.problems
