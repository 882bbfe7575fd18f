"""The held-out evaluation with a scripted fleet and reward source: per-prompt means over several
samples, bootstrap intervals over prompts, heldout.json, and paired gain intervals."""
import json
import os
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from rayrlhf.config.ppo import CombineSection, EvalSection
from rayrlhf.driver import scoring
from rayrlhf.driver.common import add_gains

EV = EvalSection(samples_per_prompt=2, bootstrap=10000, interval=0.95, seed=0)


@dataclass
class Sample:
    text: str
    response_ids: list = field(default_factory=list)


@dataclass
class Prompt:
    prompt: list
    meta: dict


class Roles:
    """Answers each prompt with the scripted responses (a number as text, its length as tokens);
    the reward source scores a response by twice its number."""

    def __init__(self, answers: list[list[str]], version: int = 0):
        self.answers, self.fleet, self.asked = answers, SimpleNamespace(version=version), []

    def eval_generate(self, prompt_ids, n=1, purpose=0):
        self.asked.append((len(prompt_ids), n, purpose))
        samples = [Sample(t, [1] * (i + 1)) for a in self.answers for i, t in enumerate(a[:n])]
        return [samples[:2 * n], samples[2 * n:]]  # two rollout workers' shards

    def score_all(self, prompts, texts, meta, timeout):
        return {"rule": torch.tensor([2 * float(t) for t in texts])}


def gold_number(question: str, response: str) -> float:
    return float(response)


PROMPTS = [Prompt([{"role": "user", "content": f"q{i}"}], {"unsafe": i == 2}) for i in range(3)]
# Prompt 0 answers 1 then 0 (mean 0.5), prompt 1 answers 1 and 1, prompt 2 (unsafe) 0 and 0.
ANSWERS = [["1", "0"], ["1", "1"], ["0", "0"]]


def run_eval(roles, run_dir=None):
    return scoring.evaluate(roles, CombineSection(), {"reward": gold_number}, PROMPTS, [[0]] * 3, 10.0, EV, run_dir)


def test_figures_are_means_over_prompts_with_bootstrap_intervals(tmp_path):
    roles = Roles(ANSWERS)
    out, examples = run_eval(roles, str(tmp_path))
    assert roles.asked == [(3, 2, 0)]  # two samples per prompt, the evaluation's seeds
    # Per prompt 0.5, 1, 0: mean 0.5. A resample of three prompts is all 0 or all 1 with
    # probability 1/27 = 3.7% each, more than 2.5%: the 95% interval is [0, 1].
    assert (out["eval/gold_reward"], out["eval/gold_reward_ci_low"], out["eval/gold_reward_ci_high"]) == (0.5, 0, 1)
    assert (out["eval/reward"], out["eval/reward_ci_low"], out["eval/reward_ci_high"]) == (1.0, 0, 2)
    assert out["eval/reward_rule"] == 1.0
    # Safe prompts 0.5 and 1: resample means 0.5, 0.75, 1 with probabilities 1/4, 1/2, 1/4.
    assert [out[f"eval/gold_reward@safe{s}"] for s in ("", "_ci_low", "_ci_high")] == [0.75, 0.5, 1.0]
    assert [out[f"eval/gold_reward@unsafe{s}"] for s in ("", "_ci_low", "_ci_high")] == [0.0, 0.0, 0.0]
    # Each prompt's first sample is 1 token long, its second 2.
    assert [out[f"eval/response_length{s}"] for s in ("", "_ci_low", "_ci_high")] == [1.5, 1.5, 1.5]
    assert [(e["prompt"], e["response"], e["reward"], e["gold_reward"]) for e in examples] == [
        ("q0", "1", 2.0, 1.0), ("q1", "1", 2.0, 1.0), ("q2", "0", 0.0, 0.0)]
    held = json.load(open(tmp_path / "heldout.json"))
    assert held["before"] == held["after"] and held["after_version"] == 0
    assert held["before"]["gold_reward"] == [0.5, 1.0, 0.0] and held["before"]["gold_reward@safe"] == [0.5, 1.0]
    assert (held["prompts"], held["samples_per_prompt"], held["bootstrap"]) == (3, 2, 10000)


def test_gain_intervals_pair_prompts(tmp_path):
    run_eval(Roles(ANSWERS, version=0), str(tmp_path))
    # After training: prompt 0 answers 1 and 0.5 (0.75), prompt 1 unchanged, prompt 2 answers 0.5 and 0.
    after, _ = run_eval(Roles([["1", "0.5"], ["1", "1"], ["0.5", "0"]], version=7), str(tmp_path))
    held = json.load(open(tmp_path / "heldout.json"))
    assert held["before"]["gold_reward"] == [0.5, 1.0, 0.0] and held["after"]["gold_reward"] == [0.75, 1.0, 0.25]
    assert held["after_version"] == 7
    before, _ = run_eval(Roles(ANSWERS), None)  # no run folder: nothing recorded
    summary = add_gains({**{f"before/{k[5:]}": v for k, v in before.items()}, **after})
    assert "gain/gold_reward_ci_low" not in summary  # not a difference of two intervals' bounds
    assert summary["gain/gold_reward"] == pytest.approx(1 / 6)
    json.dump(summary, open(tmp_path / "summary.json", "w"))
    scoring.add_gain_intervals(str(tmp_path), summary)
    # Per-prompt gains 0.25, 0, 0.25: a resample of three is all 0 with probability 1/27 > 2.5%
    # and all 0.25 with probability 8/27: the interval is [0, 0.25], though the two policies'
    # own intervals, [0, 1] and [0.25, 1], overlap almost entirely.
    assert summary["gain/gold_reward"] == pytest.approx(1 / 6)
    assert (summary["gain/gold_reward_ci_low"], summary["gain/gold_reward_ci_high"]) == (0.0, 0.25)
    assert (after["eval/gold_reward_ci_low"], after["eval/gold_reward_ci_high"]) == (0.25, 1.0)
    # Unsafe prompt 2 alone gained 0.25: a one-prompt interval is that value.
    assert [summary[f"gain/gold_reward@unsafe{s}"] for s in ("", "_ci_low", "_ci_high")] == [0.25] * 3
    assert json.load(open(tmp_path / "summary.json")) == summary


def test_heldout_starts_again_for_another_prompt_set(tmp_path):
    run_eval(Roles(ANSWERS, version=0), str(tmp_path))
    scoring.evaluate(Roles(ANSWERS[:2], version=3), CombineSection(), {"reward": gold_number}, PROMPTS[:2],
                     [[0]] * 2, 10.0, EV, str(tmp_path))
    held = json.load(open(tmp_path / "heldout.json"))
    assert "before" not in held and held["prompts"] == 2 and held["after"]["gold_reward"] == [0.5, 1.0]
    assert scoring.gain_intervals(held) == {}
    summary = {"eval/gold_reward": 0.75}
    assert scoring.add_gain_intervals(str(tmp_path / "elsewhere"), summary) == {"eval/gold_reward": 0.75}
    assert not os.path.exists(tmp_path / "elsewhere" / "summary.json")


def test_fleet_returning_too_few_samples_is_an_error():
    roles = Roles([["1"], ["1", "1"], ["0", "0"]])
    with pytest.raises(RuntimeError, match="5 samples for 3 prompts x 2"):
        run_eval(roles)
