"""A pipeline notices edits: a stage's resolved config is hashed when it starts, and a rerun
with another config stops before any work, naming the changed keys and the ways on."""
import io
import json
import os

import pytest
import yaml

from rayrlhf.config.loader import ConfigError
from rayrlhf.driver.pipeline import (NOT_RESULTS, changed_keys, fingerprint_hash, load_pipeline, plan_stages,
                                     run_pipeline)

WORLD = {"n_sft": 40, "n_pref": 40, "n_prompts": 8, "n_eval_prompts": 4, "vocab_size": 300,
         "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 1, "intermediate_size": 64}}


def _pipeline(tmp_path, first=None, second=None, name="edits"):
    """Two toyworld stages (no Ray): ``a`` and ``b``, each with its own overrides."""
    cfg = {"run": {"name": name, "output_dir": str(tmp_path / "runs")},
           "stages": [{"name": "a", "kind": "toyworld", "config": {**WORLD, **(first or {})}},
                      {"name": "b", "kind": "toyworld", "config": {**WORLD, **(second or {})}}]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _run(path, rerun=None):
    out = io.StringIO()
    run_pipeline(path, out=out, rerun=rerun)
    return out.getvalue()


def test_a_finished_stage_with_an_edited_config_stops_the_pipeline_before_any_work(tmp_path):
    path = _pipeline(tmp_path)
    first = _run(path)
    run_dir = tmp_path / "runs" / "edits"
    stage = json.loads((run_dir / "a" / "STAGE.json").read_text())
    assert stage["kind"] == "toyworld" and stage["config"]["n_sft"] == 40
    assert stage["config_hash"] == fingerprint_hash(stage["config"])
    assert "a (toyworld)" in first and "b (toyworld)" in first

    # Same config: both skipped.
    again = _run(path)
    assert again.count("finished earlier with this config, skipped") == 2

    # An edit to b: stops before anything runs, naming the key with old and new values.
    path = _pipeline(tmp_path, second={"n_sft": 48})
    before = (run_dir / "a" / "DONE.json").stat().st_mtime_ns, (run_dir / "b" / "DONE.json").stat().st_mtime_ns
    with pytest.raises(ConfigError) as e:
        _run(path)
    problems = e.value.problems
    assert problems[0] == "stages.b: finished with another config; changed: n_sft: 40 -> 48"
    assert "--rerun b" in problems[1] and "run.name" in problems[1]
    after = (run_dir / "a" / "DONE.json").stat().st_mtime_ns, (run_dir / "b" / "DONE.json").stat().st_mtime_ns
    assert after == before
    assert not (run_dir / "b.replaced-1").exists()


def test_rerun_runs_the_stage_and_every_later_one_and_keeps_the_old_folders(tmp_path):
    path = _pipeline(tmp_path)
    _run(path)
    run_dir = tmp_path / "runs" / "edits"
    old_b = (run_dir / "b" / "DONE.json").read_text()
    path = _pipeline(tmp_path, first={"n_prompts": 10})
    with pytest.raises(ConfigError) as e:
        _run(path)
    assert e.value.problems[0] == "stages.a: finished with another config; changed: n_prompts: 8 -> 10"
    out = _run(path, rerun="a")
    assert "a: rerun; the earlier folder is now" in out and "b: rerun;" in out
    assert (run_dir / "a.replaced-1" / "DONE.json").exists()
    assert (run_dir / "b.replaced-1" / "DONE.json").read_text() == old_b
    assert json.loads((run_dir / "a" / "STAGE.json").read_text())["config"]["n_prompts"] == 10
    prompts = [json.loads(x) for x in open(run_dir / "a" / "data" / "prompts_train.jsonl")]
    old = [json.loads(x) for x in open(run_dir / "a.replaced-1" / "data" / "prompts_train.jsonl")]
    assert len(prompts) > len(old)
    # The new config is now the recorded one: a plain rerun skips both.
    assert _run(path).count("skipped") == 2


def test_rerun_of_a_later_stage_leaves_the_earlier_ones(tmp_path):
    path = _pipeline(tmp_path)
    _run(path)
    out = _run(path, rerun="b")
    assert "a: finished earlier with this config, skipped" in out and "b: rerun;" in out
    assert not (tmp_path / "runs" / "edits" / "a.replaced-1").exists()
    with pytest.raises(ConfigError, match=r"--rerun c: no such stage \(stages: a, b\)"):
        _run(path, rerun="c")


def test_an_unfinished_stage_with_an_edited_config_is_not_resumed(tmp_path):
    path = _pipeline(tmp_path)
    cfg, run_dir, configs = load_pipeline(path, [])
    plans = plan_stages(cfg, run_dir, configs)
    assert [p.action for p in plans] == ["run", "run"]
    # a started (STAGE.json) and did not finish.
    os.makedirs(os.path.join(run_dir, "a"))
    with open(os.path.join(run_dir, "a", "STAGE.json"), "w") as f:
        json.dump({"kind": "toyworld", "config": plans[0].fingerprint,
                   "config_hash": fingerprint_hash(plans[0].fingerprint)}, f)
    assert [p.action for p in plan_stages(cfg, run_dir, configs)] == ["resume", "run"]
    cfg2, _, configs2 = load_pipeline(_pipeline(tmp_path, first={"seed": 5}), [])
    with pytest.raises(ConfigError) as e:
        plan_stages(cfg2, run_dir, configs2)
    assert e.value.problems[0] == "stages.a: started with another config; changed: seed: 0 -> 5"


def test_keys_that_cannot_change_a_result_are_left_out_of_the_hash():
    assert {"run.wandb_project", "train.log_every", "ppo.call_timeout_s"} <= NOT_RESULTS
    from rayrlhf.config import SFTConfig, load_config
    from rayrlhf.driver.pipeline import stage_fingerprint

    base = {"model": {"name_or_path": "m"}, "data": {"train": ["x.jsonl"]}}
    a = stage_fingerprint(load_config(SFTConfig, data=base))
    b = stage_fingerprint(load_config(SFTConfig, data={**base, "train": {"log_every": 3}}))
    c = stage_fingerprint(load_config(SFTConfig, data={**base, "train": {"lr": 1e-3}}))
    assert fingerprint_hash(a) == fingerprint_hash(b)
    assert changed_keys(a, c) == [f"train.lr: {a['train.lr']!r} -> 0.001"]


def test_a_run_folder_copied_elsewhere_keeps_its_finished_stages(tmp_path):
    """Paths inside the run folder are hashed relative to it: a copy of the run under another
    output_dir skips both stages, while a path outside it still counts as an edit."""
    import shutil

    for d in ("one", "two"):
        (tmp_path / d).mkdir()
    path = _pipeline(tmp_path / "one")
    _run(path)
    stage = json.loads((tmp_path / "one" / "runs" / "edits" / "a" / "STAGE.json").read_text())
    assert stage["config"]["out"] == "{run}/a"
    shutil.copytree(tmp_path / "one" / "runs", tmp_path / "two" / "runs")
    moved = _pipeline(tmp_path / "two")
    assert _run(moved).count("finished earlier with this config, skipped") == 2

    from rayrlhf.driver.pipeline import stage_fingerprint
    from rayrlhf.config import SFTConfig, load_config

    inside = load_config(SFTConfig, data={"model": {"name_or_path": str(tmp_path / "r" / "sft" / "export")},
                                          "data": {"train": [str(tmp_path / "d.jsonl")]}})
    fp = stage_fingerprint(inside, str(tmp_path / "r"))
    assert fp["model.name_or_path"] == "{run}/sft/export"
    assert fp["data.train"] == [str(tmp_path / "d.jsonl")]
    assert stage_fingerprint(inside, str(tmp_path / "r2"))["model.name_or_path"] == str(tmp_path / "r" / "sft" / "export")


def test_a_key_added_by_a_newer_version_at_its_default_does_not_look_like_an_edit(tmp_path):
    """A stage recorded before a key existed (simulated: the key taken out of its STAGE.json) is
    still finished when the new key is at its default, the behaviour from before it existed;
    a recorded config missing a key that is not at its default is an edit."""
    from rayrlhf.driver.toyworld_stage import ToyworldConfig
    from rayrlhf.driver.pipeline import stage_fingerprint

    path = _pipeline(tmp_path)
    _run(path)
    stage_file = tmp_path / "runs" / "edits" / "a" / "STAGE.json"
    recorded = json.loads(stage_file.read_text())
    defaults = stage_fingerprint(ToyworldConfig())
    at_default = next(k for k, v in recorded["config"].items() if defaults.get(k) == v)
    assert recorded["config"]["n_sft"] == 40 != defaults["n_sft"]

    def record_without(key):
        config = {k: v for k, v in recorded["config"].items() if k != key}
        stage_file.write_text(json.dumps(dict(recorded, config=config, config_hash=fingerprint_hash(config))))

    record_without(at_default)
    assert _run(path).count("finished earlier with this config, skipped") == 2
    record_without("n_sft")
    with pytest.raises(ConfigError) as e:
        _run(path)
    assert e.value.problems[0] == "stages.a: finished with another config; changed: n_sft: '(unset)' -> 40"
