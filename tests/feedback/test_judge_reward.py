"""An AI judge as a reward source: a direct rating's expected score, a pairwise judge's
probability of beating the row's reference, checked before start, and best-of-K on Ray
scoring with it."""
import json
import math

import pytest
import torch

from rayrlhf.actors.judge_reward import JudgeRewardWorker, check_references
from rayrlhf.config import load_config
from rayrlhf.config.loader import ConfigError
from rayrlhf.config.rs import RSConfig
from rayrlhf.data.schema import PromptRecord, Source
from rayrlhf.data.validate import DataValidationError
from rayrlhf.feedback.judge import Judge
from rayrlhf.feedback.template import load_template

DIRECT = "kind: direct\npreamble: Rate the response.\nchoices: ['1', '2', '3']\nending: 'Rating = '\n"
PROMPTS = [[{"role": "user", "content": "Where is the red key?"}]] * 2


@pytest.fixture()
def direct(tmp_path):
    path = tmp_path / "direct.yaml"
    path.write_text(DIRECT)
    return str(path)


def test_a_direct_judges_reward_is_its_expected_rating(judge_world, hf_judge, direct):
    worker = JudgeRewardWorker("judge", f"{judge_world}/base_model", direct)
    got = worker.score(PROMPTS, ["In the kitchen.", "In the hall."])
    tok, t = hf_judge.tokenizer, load_template(direct)
    from rayrlhf.data.tokenize import render_prompt

    for prompt, response, r in zip(PROMPTS, ["In the kitchen.", "In the hall."], got):
        question = t.question(prompt[0]["content"], response, None, [])
        assert question.endswith("Request: Where is the red key?\nResponse: " + response)
        ids = render_prompt(tok, [{"role": "user", "content": question}]) + tok.encode("Rating = ", add_special_tokens=False)
        with torch.no_grad():
            lp = torch.log_softmax(hf_judge.model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
        p = torch.softmax(torch.stack([lp[tok.encode(f"Rating = {c}", add_special_tokens=False)[-1]] for c in "123"]), 0)
        assert r == pytest.approx(float(p[1] * 0.5 + p[2] * 1.0), abs=1e-5)  # ratings 1, 2, 3 -> 0, 0.5, 1


def test_a_pairwise_judges_reward_is_its_probability_of_beating_the_reference(judge_world, hf_judge, tmp_path):
    path = tmp_path / "pairwise.yaml"
    path.write_text("constitution: ['The right answer, from the facts given.']\n")
    worker = JudgeRewardWorker("judge", f"{judge_world}/base_model", str(path))
    meta = [{"reference": "The red key is in the kitchen."}, {"reference": "In the hall."}]
    got = worker.score(PROMPTS, ["In the kitchen.", "In the kitchen."], meta)
    expected = Judge(load_template(str(path)), hf_judge.tokenizer, hf_judge.choice_logprobs).label(
        PROMPTS, ["In the kitchen."] * 2, [m["reference"] for m in meta]).p_a
    assert got == pytest.approx(expected.tolist(), abs=1e-6)
    assert all(0 < x < 1 for x in got)


def test_reward_templates_are_checked_at_config_load(judge_world, tmp_path):
    sampled = tmp_path / "sampled.yaml"
    sampled.write_text("constitution: [a, b]\nprinciples: sample\n")
    data = {"policy": {"name_or_path": f"{judge_world}/base_model"}, "data": {"train": ["x"]},
            "rewards": [{"name": "judge", "judge": str(sampled)}, {"name": "j2", "model": "m", "judge": "nope.yaml"}]}
    with pytest.raises(ConfigError) as e:
        load_config(RSConfig, data=data)
    msg = str(e.value)
    assert "rewards[0].judge: needs model" in msg
    assert "rewards[0].judge: a judge reward must not depend on where a response sits in a batch" in msg
    assert "rewards[1].judge: config file not found: nope.yaml" in msg


def test_prompts_without_the_reference_are_named_before_start():
    from rayrlhf.config.ppo import RewardSourceSection

    rows = [PromptRecord(PROMPTS[0], Source("p.jsonl", 1), {"reference": "In the kitchen."}),
            PromptRecord(PROMPTS[0], Source("p.jsonl", 2), {}),
            PromptRecord(PROMPTS[0], Source("p.jsonl", 3), {"reference": 3})]
    sources = [RewardSourceSection(name="judge", model="m", judge="toyworld_helpfulness")]
    with pytest.raises(DataValidationError) as e:
        check_references(sources, rows)
    assert [(p.line, p.field) for p in e.value.problems] == [(2, "reference"), (3, "reference")]
    assert "reward source 'judge' (a pairwise judge)" in str(e.value) and "found number 3" in str(e.value)
    check_references([RewardSourceSection(name="j", model="m")], rows)  # not a judge: nothing asked


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    from tests.driver.tiny import local_ray

    yield from local_ray(tmp_path_factory)


def test_best_of_k_on_ray_keeps_the_judges_best(judge_world, ray_cluster, tmp_path, direct):
    from rayrlhf.driver.rs_stage import run_best_of_k

    cfg = load_config(RSConfig, data={
        "policy": {"name_or_path": f"{judge_world}/base_model"},
        "data": {"train": [f"{judge_world}/data/prompts_train.jsonl"], "max_prompt_tokens": 96, "limit": 3},
        "rewards": [{"name": "judge", "model": f"{judge_world}/base_model", "judge": direct}],
        "rollout": {"backend": "hf", "max_new_tokens": 6, "max_model_len": 320},
        "rs": {"k": 3, "curve_k": 0, "call_timeout_s": 120},
        "resources": {"rollout": {"num_workers": 1, "cpus_per_worker": 0.5},
                      "rewards": {"judge": {"num_workers": 2, "cpus_per_worker": 0.25}}},
        "run": {"output_dir": str(tmp_path), "name": "bok"}})
    summary = run_best_of_k(cfg)
    rows = [json.loads(line) for line in open(tmp_path / "bok" / "best_of_k.jsonl")]
    assert summary["prompts"] == 3 and len(rows) == 3
    worker = JudgeRewardWorker("judge", f"{judge_world}/base_model", direct)
    for row in rows:
        assert row["reward"] == max(row["candidates_rewards"])
        assert worker.score([row["prompt"]], [row["response"]])[0] == pytest.approx(row["reward"], abs=1e-5)
        assert all(0.0 <= x <= 1.0 and not math.isnan(x) for x in row["candidates_rewards"])
