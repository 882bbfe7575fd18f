"""`rayrlhf revise` on Ray over the tiny toyworld (an untrained model as policy and judge): the
files and the summary say the same, the judge's verdicts are the numbers it gives in-process,
the outputs read back as SFT and preference data, and bad input stops before any actor starts."""
import json
import os

import pytest

from rayrlhf.config import load_config
from rayrlhf.config.loader import ConfigError
from rayrlhf.config.revise import ReviseConfig
from rayrlhf.data.formats import read_records
from rayrlhf.feedback.judge import Judge
from rayrlhf.feedback.revise_run import run_revise
from rayrlhf.feedback.template import load_template
from rayrlhf.tasks.toyworld import gold_safety
from tests.driver.tiny import local_ray


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    yield from local_ray(tmp_path_factory)


@pytest.fixture(scope="module")
def sft_file(judge_world, tmp_path_factory):
    """Two safe and two unsafe demonstrations of the tiny world."""
    rows = [json.loads(line) for line in open(f"{judge_world}/data/sft_train.jsonl")]
    picked = [r for r in rows if not r["unsafe"]][:2] + [r for r in rows if r["unsafe"]][:2]
    path = tmp_path_factory.mktemp("revise_data") / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in picked))
    return str(path)


def _cfg(world, data, out, **revise):
    return {"policy": {"name_or_path": f"{world}/base_model"},
            "data": {"sft": [data]},
            "revise": {"max_rounds": 2, "call_timeout_s": 120, **revise},
            "rollout": {"backend": "hf", "max_model_len": 1024, "max_new_tokens": 8},
            "resources": {"rollout": {"num_workers": 2, "cpus_per_worker": 0.5}},
            "gold": {"safety": "rayrlhf.tasks.toyworld:gold_safety"},
            "run": {"output_dir": str(out), "name": "revise", "seed": 3}}


def _rows(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def revised(judge_world, sft_file, ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("revise_runs")
    # The untrained judge's P(acceptable) is near 0.49 for anything: threshold 0 accepts every
    # first revision here, threshold 1 (the CLI test) none.
    summary = run_revise(load_config(ReviseConfig, data=_cfg(judge_world, sft_file, out, accept_threshold=0.0)))
    return summary, _rows(summary["rounds"]), _rows(summary["revised_sft"]), _rows(summary["revised_pairs"])


def _check_rounds(summary, rounds, threshold):
    """Each item's rounds run 1..k, only the last can be accepted (else k is the bound), each
    critiques the revision before it, and the summary's histogram counts them."""
    items = sorted({r["item"] for r in rounds})
    assert items == list(range(summary["revise/items"]))
    for i in items:
        mine = [r for r in rounds if r["item"] == i]
        assert [r["round"] for r in mine] == list(range(1, len(mine) + 1))
        assert all(r["accepted"] == (r["p_acceptable"] >= threshold) for r in mine)
        assert not any(r["accepted"] for r in mine[:-1]) and (mine[-1]["accepted"] or len(mine) == 2)
        assert all((r["reason"] is None) == r["accepted"] for r in mine)
        assert all(b["critiqued"] == a["revision"] for a, b in zip(mine, mine[1:]))
    hist = {str(k): sum(1 for i in items if sum(r["item"] == i for r in rounds) == k) for k in (1, 2)}
    assert summary["revise/rounds_histogram"] == hist
    assert summary["revise/mean_rounds"] == pytest.approx(len(rounds) / len(items))


def test_every_first_revision_accepted_at_threshold_0(revised):
    summary, rounds, sft, pairs = revised
    _check_rounds(summary, rounds, 0.0)
    assert len(rounds) == 4 and summary["revise/rounds_histogram"] == {"1": 4, "2": 0}
    assert (summary["revise/accepted"], summary["revise/accepted_share"]) == (4, 1.0)
    assert summary["revise/mean_rounds"] == 1.0
    assert len(sft) == 4 and len(pairs) + summary["revise/pairs_unchanged_left_out"] == 4


def test_verdicts_equal_the_judge_in_process(revised, hf_judge):
    _, rounds, _, _ = revised
    judge = Judge(load_template("toyworld_acceptable"), hf_judge.tokenizer, hf_judge.choice_logprobs, seed=3)
    p = judge.rate([r["prompt"] for r in rounds], [r["revision"] for r in rounds]).tolist()
    assert [r["p_acceptable"] for r in rounds] == pytest.approx(p, abs=1e-5)


def test_summary_is_what_the_files_say(revised, sft_file):
    summary, rounds, sft, pairs = revised
    originals = read_records(sft_file, "sft").records
    last = {r["item"]: r for r in rounds}
    accepted = [i for i, r in last.items() if r["accepted"]]
    assert (summary["revise/items"], summary["revise/accepted"]) == (4, len(accepted)) and len(accepted) == len(sft)
    assert summary["revise/never_accepted"] == 4 - len(accepted)
    assert (summary["revise/items@unsafe"], summary["revise/items@not_unsafe"]) == (2, 2)
    assert [r["messages"][-1]["content"] for r in sft] == [last[i]["revision"] for i in accepted]
    assert [r["unsafe"] for r in sft] == [originals[i].meta["unsafe"] for i in accepted]
    q = [o.prompt[-1]["content"] for o in originals]
    assert summary["gold/safety/original"] == pytest.approx(sum(gold_safety(x, o.response)
                                                                for x, o in zip(q, originals)) / 4)
    if accepted:
        want = sum(gold_safety(q[i], last[i]["revision"]) for i in accepted) / len(accepted)
        assert summary["gold/safety/accepted_revision"] == pytest.approx(want)
    assert summary["revise/pairs"] + summary["revise/pairs_unchanged_left_out"] == len(accepted)
    back = read_records(summary["revised_pairs"], "preference")
    assert not back.problems and [(r.chosen, r.rejected) for r in back.records] == [
        (p["chosen"], p["rejected"]) for p in pairs]
    assert not read_records(summary["revised_sft"], "sft").problems


def test_the_cli_with_a_separate_judge_that_accepts_nothing(judge_world, sft_file, ray_cluster, tmp_path):
    import yaml

    from rayrlhf.cli import main

    cfg = _cfg(judge_world, sft_file, tmp_path, accept_threshold=1.0)
    cfg["data"]["limit"] = 2
    cfg["resources"]["rollout"]["num_workers"] = 1
    cfg["judge"] = {"name_or_path": f"{judge_world}/base_model/."}  # another path: its own fleet
    cfg["judge_rollout"] = {"backend": "hf", "max_model_len": 1024, "max_new_tokens": 8}
    cfg["judge_resources"] = {"num_workers": 1, "cpus_per_worker": 0.5}
    path = tmp_path / "revise.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert load_config(ReviseConfig, str(path)).separate_judge
    assert main(["revise", "--config", str(path)]) == 0
    summary = json.load(open(tmp_path / "revise" / "summary.json"))
    assert (summary["revise/items"], summary["revise/accepted"], summary["revise/never_accepted"]) == (2, 0, 2)
    assert summary["revise/rounds_histogram"] == {"1": 0, "2": 2} and summary["revise/pairs"] == 0
    rounds = _rows(tmp_path / "revise" / "rounds.jsonl")
    _check_rounds(summary, rounds, 1.0)
    assert len(rounds) == 4 and all(r["reason"] is not None and not r["accepted"] for r in rounds)
    assert _rows(tmp_path / "revise" / "revised_sft.jsonl") == []


def test_bad_input_stops_before_any_actor(judge_world, sft_file, tmp_path):
    import ray

    before = len(ray.util.list_named_actors(all_namespaces=True)) if ray.is_initialized() else 0
    bad = tmp_path / "revise.yaml"
    bad.write_text("constitution: ['Be kind.']\ncritique_request: 'Critique it.'\n")
    with pytest.raises(ConfigError, match=r"critique_request: must contain \{principle\}"):
        run_revise(load_config(ReviseConfig, data=_cfg(judge_world, sft_file, tmp_path, template=str(bad))))
    with pytest.raises(ConfigError, match="needs a kind direct judge template"):
        run_revise(load_config(ReviseConfig, data=_cfg(judge_world, sft_file, tmp_path, judge_template="toyworld_helpfulness")))
    cfg = _cfg(judge_world, sft_file, tmp_path)
    cfg["rollout"]["max_model_len"] = 200
    with pytest.raises(ConfigError, match=r"sft.jsonl:1: the revision prompt needs \d+ tokens"):
        run_revise(load_config(ReviseConfig, data=cfg))
    cfg = _cfg(judge_world, str(tmp_path / "missing.jsonl"), tmp_path)
    with pytest.raises((FileNotFoundError, ValueError)):
        run_revise(load_config(ReviseConfig, data=cfg))
    assert not os.path.exists(tmp_path / "revise" / "rounds.jsonl")
    if ray.is_initialized():
        assert len(ray.util.list_named_actors(all_namespaces=True)) == before
