"""`rayrlhf label` on Ray: two judge workers label toyworld pairs; the labels are the same
numbers the judge gives in-process, the output rows follow the judge's winner, the summary is
what the rows say, and bad input stops before any actor starts."""
import json
import os

import pytest
import torch

from rayrlhf.config import load_config
from rayrlhf.config.label import LabelConfig
from rayrlhf.config.loader import ConfigError
from rayrlhf.data.formats import read_records
from rayrlhf.feedback.judge import Judge
from rayrlhf.feedback.label import label_all, run_label
from rayrlhf.feedback.template import load_template
from tests.driver.tiny import local_ray

N = 10


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    yield from local_ray(tmp_path_factory)


def _cfg(world, out, **label):
    return {"judge": {"name_or_path": f"{world}/base_model"},
            "data": {"pairs": [f"{world}/data/pref_helpfulness_train.jsonl"], "limit": N},
            "label": {"template": "toyworld_helpfulness", "pairs_per_call": 4, "call_timeout_s": 120, **label},
            "rollout": {"backend": "hf", "max_model_len": 512},
            "resources": {"rollout": {"num_workers": 2, "cpus_per_worker": 0.5}},
            "run": {"output_dir": str(out), "name": "label", "seed": 3}}


def _counting_head_ids(mp):
    import rayrlhf.feedback.judge as judge_module

    calls, head_ids = [], judge_module.head_ids
    mp.setattr(judge_module, "head_ids", lambda *a: calls.append(1) or head_ids(*a))
    return calls


@pytest.fixture(scope="module")
def labelled_run(judge_world, ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("label_runs")
    with pytest.MonkeyPatch.context() as mp:
        prompts_built = _counting_head_ids(mp)
        summary = run_label(load_config(LabelConfig, data=_cfg(judge_world, out)))
    rows = [json.loads(line) for line in open(os.path.join(out, "label", "labels.jsonl"))]
    return summary, rows, len(prompts_built)


@pytest.fixture(scope="module")
def labelled(labelled_run):
    return labelled_run[:2]


def test_each_judge_prompt_is_built_once(labelled_run):
    # the pre-start length check builds both orders of every pair; labelling scores those
    assert labelled_run[2] == 2 * N


def test_labelling_the_checked_sequences_is_labelling_afresh(judge_world, hf_judge, monkeypatch):
    records = read_records(f"{judge_world}/data/pref_helpfulness_train.jsonl", "preference", limit=N).records
    judge = Judge(load_template("toyworld_helpfulness"), hf_judge.tokenizer, hf_judge.choice_logprobs, seed=3)
    fresh = label_all(judge, records, True, 3, report=lambda _: None)
    prepared = judge.prepare([r.prompt for r in records], [r.chosen for r in records], [r.rejected for r in records],
                             [f"{r.source.file}:{r.source.line}" for r in records], 0, True)
    built = _counting_head_ids(monkeypatch)
    reused = label_all(judge, records, True, 3, report=lambda _: None, prepared=prepared)
    assert not built
    for k in ("p_a", "p_ab", "p_ba", "mass"):
        assert torch.allclose(getattr(reused, k), getattr(fresh, k), atol=1e-6)
    assert reused.principles == fresh.principles and reused.rationales == fresh.rationales


def test_labels_equal_the_judge_in_process(judge_world, hf_judge, labelled):
    summary, rows = labelled
    records = read_records(f"{judge_world}/data/pref_helpfulness_train.jsonl", "preference", limit=N).records
    labels = Judge(load_template("toyworld_helpfulness"), hf_judge.tokenizer, hf_judge.choice_logprobs, seed=3).label(
        [r.prompt for r in records], [r.chosen for r in records], [r.rejected for r in records])
    assert len(rows) == N == summary["label/pairs"]
    for r, row, p_a in zip(records, rows, labels.p_a.tolist()):
        assert row["p_chosen"] == pytest.approx(max(p_a, 1 - p_a), abs=1e-5)
        assert row["confidence"] == pytest.approx(abs(2 * p_a - 1), abs=1e-5)
        assert row["input_agrees"] == (p_a >= 0.5)
        winner, loser = (r.chosen, r.rejected) if p_a >= 0.5 else (r.rejected, r.chosen)
        assert (row["chosen"], row["rejected"]) == (winner, loser)
        gold = (r.meta["gold_chosen"], r.meta["gold_rejected"])
        assert (row["gold_chosen"], row["gold_rejected"]) == (gold if p_a >= 0.5 else gold[::-1])
        assert row["input_margin"] == r.margin_label and row["source"].endswith(f":{r.source.line}")
        assert row["judge"]["principles"][0] in load_template("toyworld_helpfulness").constitution


def test_summary_is_what_the_rows_say(labelled):
    summary, rows = labelled
    agree = [1.0 if r["p_chosen"] > 0.5 and r["input_agrees"] else 0.0 if r["p_chosen"] > 0.5 else 0.5 for r in rows]
    assert summary["label/agreement_input"] == pytest.approx(sum(agree) / len(rows))
    decided = [r for r in rows if r["gold_chosen"] != r["gold_rejected"]]
    gold = [0.5 if r["p_chosen"] == 0.5 else 1.0 if r["gold_chosen"] > r["gold_rejected"] else 0.0 for r in decided]
    assert decided and summary["label/agreement_gold"] == pytest.approx(sum(gold) / len(decided))
    assert summary["label/gold_ties_left_out"] == len(rows) - len(decided)
    p_first = [r["judge"]["p_chosen_shown_first"] for r in rows]
    p_second = [r["judge"]["p_chosen_shown_second"] for r in rows]
    # P(first) in each order: P(c | c first) and 1 - P(c | c second) = P(first | c second)
    bias = sum(0.5 * (a + (1 - b)) - 0.5 for a, b in zip(p_first, p_second)) / len(rows)
    assert summary["label/position_bias"] == pytest.approx(bias, abs=1e-6)


def test_the_soft_labels_read_back_as_preference_records(labelled):
    summary, rows = labelled
    records = read_records(summary["labels"], "preference").records
    assert [r.p_chosen for r in records] == pytest.approx([r["p_chosen"] for r in rows])
    assert records[0].meta["judge"] == rows[0]["judge"]


def test_the_cli_with_one_order(judge_world, ray_cluster, tmp_path):
    import yaml

    from rayrlhf.cli import main

    cfg = _cfg(judge_world, tmp_path, orders="first")
    cfg["data"]["limit"] = 4
    path = tmp_path / "label.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["label", "--config", str(path)]) == 0
    summary = json.load(open(tmp_path / "label" / "summary.json"))
    assert summary["label/pairs"] == 4 and "label/position_bias" not in summary
    rows = [json.loads(line) for line in open(tmp_path / "label" / "labels.jsonl")]
    assert all(r["judge"]["p_chosen_shown_first"] is None or r["judge"]["p_chosen_shown_second"] is None for r in rows)


def test_bad_input_stops_before_any_actor(judge_world, tmp_path, capsys):
    import ray

    before = len(ray.util.list_named_actors(all_namespaces=True)) if ray.is_initialized() else 0
    bad = tmp_path / "judge.yaml"
    bad.write_text("sample: 'Q: {prompt}'\n")
    with pytest.raises(ConfigError, match="sample: must contain"):
        run_label(load_config(LabelConfig, data=_cfg(judge_world, tmp_path, template=str(bad))))
    cfg = _cfg(judge_world, tmp_path)
    cfg["rollout"].update(max_model_len=48, max_new_tokens=8)
    with pytest.raises(ConfigError, match=r"pref_helpfulness_train.jsonl:1: the judge's prompt needs \d+ tokens"):
        run_label(load_config(LabelConfig, data=cfg))
    assert not (tmp_path / "label" / "labels.jsonl").exists()
    if ray.is_initialized():
        assert len(ray.util.list_named_actors(all_namespaces=True)) == before
