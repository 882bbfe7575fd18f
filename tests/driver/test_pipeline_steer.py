"""Steering a pipeline from the command line: stages.<name>.<key> overrides, --only, --from."""
import io
import json
import os

import pytest
import yaml

from rayrlhf.cli import main
from rayrlhf.config.loader import ConfigError, apply_overrides
from rayrlhf.driver.pipeline import load_pipeline, plan_stages, run_pipeline

WORLD = {"n_sft": 40, "n_pref": 40, "n_prompts": 8, "n_eval_prompts": 4, "vocab_size": 300,
         "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 1, "intermediate_size": 64}}


def _pipeline(tmp_path, names=("a", "b", "c")):
    """Toyworld stages (no Ray), one per name."""
    cfg = {"run": {"name": "steer", "output_dir": str(tmp_path / "runs")},
           "stages": [{"name": n, "kind": "toyworld", "config": dict(WORLD)} for n in names]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _finish(run_dir, *names):
    """Mark stages finished, as a pipeline leaves them: a folder with DONE.json."""
    for n in names:
        os.makedirs(os.path.join(run_dir, n), exist_ok=True)
        with open(os.path.join(run_dir, n, "DONE.json"), "w") as f:
            json.dump({"kind": "toyworld"}, f)


def _plan(path, **kw):
    cfg, run_dir, configs = load_pipeline(path, [])
    return [(p.name, p.action) for p in plan_stages(cfg, run_dir, configs, **kw)]


# -- stages.<name>.<key> overrides ---------------------------------------------------------------

def test_a_stage_override_by_name_sets_the_key_in_that_stages_config(tmp_path):
    path = _pipeline(tmp_path)
    cfg, _, configs = load_pipeline(path, ["stages.b.n_sft=48", "stages.c.model.hidden_size=64", "run.seed=3"])
    assert [c.n_sft for c in configs] == [40, 48, 40]
    assert configs[2].model.hidden_size == 64 and configs[0].model.hidden_size == 32
    assert cfg.stages[1].config["n_sft"] == 48 and cfg.run.seed == 3


def test_an_unknown_stage_name_is_an_error_listing_the_stages(tmp_path):
    path = _pipeline(tmp_path)
    with pytest.raises(ConfigError, match=r"no stage named 'sft' .*stages: a, b, c"):
        load_pipeline(path, ["stages.sft.train.lr=1e-4"])
    with pytest.raises(ConfigError, match=r"no stage named 'stf'; did you mean 'sft'\? \(stages: toyworld, sft\)"):
        load_pipeline(_pipeline(tmp_path, ("toyworld", "sft")), ["stages.stf.n_sft=1"])
    path = _pipeline(tmp_path)
    with pytest.raises(ConfigError, match=r"name a key of 'b'"):
        load_pipeline(path, ["stages.b=1"])
    # A key the stage's config does not have: the stage's own checks name it.
    with pytest.raises(ConfigError, match=r"stages\[1\] \(b\)\.config\.n_sfx: unknown key; did you mean 'n_sft'"):
        load_pipeline(path, ["stages.b.n_sfx=1"])


def test_the_pipeline_command_reports_a_bad_stage_override(tmp_path, capsys):
    path = _pipeline(tmp_path)
    assert main(["pipeline", "--config", path, "stages.zz.n_sft=1"]) == 2
    assert "no stage named 'zz'" in capsys.readouterr().err


def test_compare_shares_the_stage_overrides():
    from rayrlhf.driver.compare import CompareConfig

    raw = {"stages": [{"name": "sft", "kind": "sft", "config": {"train": {"lr": 1.0}}}]}
    apply_overrides(raw, ["stages.sft.train.lr=1e-4"], CompareConfig.NAMED_LISTS)
    assert raw["stages"][0]["config"]["train"]["lr"] == 1e-4


# -- --only and --from --------------------------------------------------------------------------

def test_from_skips_the_finished_stages_before_it_and_plans_the_rest_as_usual(tmp_path):
    path = _pipeline(tmp_path)
    run_dir = load_pipeline(path, [])[1]
    with pytest.raises(ConfigError, match=r"--from c: stage a has not finished \(not started\)"):
        _plan(path, start="c")
    _finish(run_dir, "a")
    os.makedirs(os.path.join(run_dir, "b"))  # started, not finished
    with pytest.raises(ConfigError, match=r"--from c: stage b has not finished \(started, no DONE.json\).*--from b"):
        _plan(path, start="c")
    assert _plan(path, start="b") == [("a", "skip"), ("b", "resume"), ("c", "run")]
    _finish(run_dir, "b", "c")
    assert _plan(path, start="b") == [("a", "skip"), ("b", "skip"), ("c", "skip")]
    assert _plan(path, start="b", rerun="c") == [("a", "skip"), ("b", "skip"), ("c", "rerun")]
    assert _plan(path, start="b", rerun="b") == [("a", "skip"), ("b", "rerun"), ("c", "rerun")]
    with pytest.raises(ConfigError, match=r"--rerun a is before --from b"):
        _plan(path, start="b", rerun="a")


def test_only_runs_just_that_stage_once_the_earlier_ones_have_finished(tmp_path):
    path = _pipeline(tmp_path)
    run_dir = load_pipeline(path, [])[1]
    assert _plan(path, only="a") == [("a", "run"), ("b", "leave"), ("c", "leave")]
    with pytest.raises(ConfigError, match=r"--only c: stage a has not finished"):
        _plan(path, only="c")
    _finish(run_dir, "a")
    with pytest.raises(ConfigError, match=r"--only c: stage b has not finished"):
        _plan(path, only="c")
    assert _plan(path, only="b") == [("a", "skip"), ("b", "run"), ("c", "leave")]
    _finish(run_dir, "b", "c")
    assert _plan(path, only="b") == [("a", "skip"), ("b", "skip"), ("c", "leave")]
    assert _plan(path, only="b", rerun="b") == [("a", "skip"), ("b", "rerun"), ("c", "leave")]
    with pytest.raises(ConfigError, match=r"--only b with --rerun c"):
        _plan(path, only="b", rerun="c")


def test_only_and_from_name_stages_and_exclude_each_other(tmp_path, capsys):
    path = _pipeline(tmp_path)
    with pytest.raises(ConfigError, match=r"--only x: no such stage \(stages: a, b, c\)"):
        _plan(path, only="x")
    with pytest.raises(ConfigError, match=r"--from x: no such stage \(stages: a, b, c\)"):
        _plan(path, start="x")
    with pytest.raises(ConfigError, match=r"give one of them"):
        _plan(path, only="a", start="b")
    with pytest.raises(SystemExit):
        main(["pipeline", "--config", path, "--only", "a", "--from", "b"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_only_with_rerun_sets_the_later_stages_aside(tmp_path):
    """A run: --only a, then --only b, then --only a --rerun a (c's old folder, built on the old
    a, is kept aside so that the next run builds it anew)."""
    path = _pipeline(tmp_path, ("a", "b"))
    run_dir = tmp_path / "runs" / "steer"
    out = io.StringIO()
    run_pipeline(path, out=out, only="a")
    assert "b: not run (--only a)" in out.getvalue()
    assert (run_dir / "a" / "DONE.json").exists() and not (run_dir / "b").exists()
    out = io.StringIO()
    run_pipeline(path, ["stages.b.n_sft=48"], out=out, only="b")
    assert "a: finished earlier with this config, skipped" in out.getvalue()
    assert json.loads((run_dir / "b" / "STAGE.json").read_text())["config"]["n_sft"] == 48
    out = io.StringIO()
    run_pipeline(path, ["stages.b.n_sft=48"], out=out, only="a")  # b finished: still in the summary
    assert set(json.loads((run_dir / "summary.json").read_text())) == {"a", "b"}
    out = io.StringIO()
    run_pipeline(path, out=out, only="a", rerun="a")
    assert "a: rerun;" in out.getvalue() and "b: not run (--only a); it ran on the old a" in out.getvalue()
    assert (run_dir / "a.replaced-1").exists() and (run_dir / "b.replaced-1").exists() and not (run_dir / "b").exists()


def test_an_override_leaves_the_other_uses_of_a_yaml_anchor_alone():
    raw = yaml.safe_load("""
stages:
  - {name: a, kind: ppo, config: &online {ppo: {kl_coef: 0.1}, run: {seed: 1}}}
  - {name: b, kind: ppo, config: *online}
top: &t {x: 1}
other: *t
""")
    apply_overrides(raw, ["stages.b.ppo.kl_coef=0.5", "top.x=2"], {"stages": "config"})
    assert raw["stages"][0]["config"]["ppo"]["kl_coef"] == 0.1 and raw["stages"][1]["config"]["ppo"]["kl_coef"] == 0.5
    assert raw["stages"][1]["config"]["run"] == {"seed": 1}
    assert raw["top"] == {"x": 2} and raw["other"] == {"x": 1}
