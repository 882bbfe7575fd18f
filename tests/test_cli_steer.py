"""`rayrlhf config show`, `--version`, `submit --command` and `plan` for every command (no Ray)."""
import pytest
import yaml

from rayrlhf import jobs
from rayrlhf.cli import main
from rayrlhf.config.commands import COMMANDS, config_class
from rayrlhf.config.show import config_keys, field_docstrings
from rayrlhf.placement.cli import plan_main


def _yaml(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_every_command_with_a_config_is_known_everywhere():
    assert set(COMMANDS) == {"sft", "rm", "dpo", "rrhf", "ppo", "rs", "best-of-k", "label", "revise", "pipeline",
                             "compare", "toyworld"}
    assert jobs.COMMANDS == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_config_show_prints_every_key_with_its_default_and_docstring(command, capsys):
    assert main(["config", "show", "--command", command]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"# rayrlhf {command}: {config_class(command).__name__}, defaults")
    rows = config_keys(config_class(command))
    assert len(lines) == len(rows) + 1 and len(rows) > 5
    # (nearly) every key has its docstring
    assert sum(1 for _, _, doc in rows if doc) >= 0.9 * len(rows)


def test_config_show_reads_the_docstring_under_each_field_and_the_files_values(tmp_path, capsys):
    from rayrlhf.config.schema import TrainSection

    assert field_docstrings(TrainSection)["lr"] == "Peak learning rate (AdamW)."
    main(["config", "show", "--command", "sft"])
    assert "train.lr = 1.0e-05" in capsys.readouterr().out
    path = _yaml(tmp_path, "sft.yaml", {"model": {"name_or_path": "m"}, "train": {"lr": 3.0e-4},
                                         "data": {"train": ["d.jsonl"]}})
    assert main(["config", "show", "--command", "sft", "--config", path, "scaling.num_workers=3"]) == 0
    out = capsys.readouterr().out
    assert f"values of {path}" in out
    (lr,) = [line for line in out.splitlines() if line.startswith("train.lr =")]
    assert "0.0003" in lr and "# Peak learning rate (AdamW)." in lr
    assert any(line.startswith("scaling.num_workers = 3 ") for line in out.splitlines())
    assert any(line.startswith("model.name_or_path = m ") for line in out.splitlines())
    assert main(["config", "show", "--command", "sft", "--config", path, "train.lx=1"]) == 2
    assert "train.lx: unknown key" in capsys.readouterr().err


def test_config_show_of_a_pipeline_lists_each_stages_keys_as_overrides_spell_them(tmp_path, capsys):
    world = {"n_sft": 40, "vocab_size": 300}
    path = _yaml(tmp_path, "p.yaml", {"run": {"name": "p", "output_dir": str(tmp_path)},
                                      "stages": [{"name": "w", "kind": "toyworld", "config": world}]})
    assert main(["config", "show", "--command", "pipeline", "--config", path, "stages.w.n_sft=48"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("stages.w.n_sft = 48 ") and "SFT demonstrations" in line for line in lines)
    assert any(line.startswith("stages[0].kind = toyworld") for line in lines)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    import rayrlhf

    assert capsys.readouterr().out.strip() == f"rayrlhf {rayrlhf.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_submit_accepts_every_command(command):
    args = jobs.build_parser().parse_args(["submit", "--command", command, "--config", "x.yaml"])
    assert args.command == command


def test_submit_checks_an_rs_config_and_refuses_resume_where_there_is_none(tmp_path, capsys):
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jobs", "toyworld_rs.yaml")
    try:
        out_dir = jobs.check_config("rs", path, ["run.output_dir=/shared/runs"])
    except jobs.JobsError as e:  # the rs config's own checks, not a refused command
        pytest.fail(str(e))
    assert out_dir == "/shared/runs"
    assert jobs.check_config("toyworld", _yaml(tmp_path, "t.yaml", {"out": "/shared/tw"}), []) == "/shared/tw"
    assert jobs.main(["submit", "--command", "compare", "--config", path, "--resume"]) == 2
    assert "resumes by itself" in capsys.readouterr().err
    assert jobs.main(["submit", "--command", "toyworld", "--config", path, "--resume"]) == 2
    assert "toyworld has no --resume" in capsys.readouterr().err


def test_plan_prints_the_ray_train_workers_of_a_supervised_config(tmp_path, capsys):
    for command, extra in (("sft", {}), ("rm", {"reward": {}}), ("dpo", {"dpo": {}}), ("rrhf", {"rrhf": {}})):
        path = _yaml(tmp_path, f"{command}.yaml", {"model": {"name_or_path": str(tmp_path / "none")},
                                                   "data": {"train": ["d.jsonl"]},
                                                   "scaling": {"num_workers": 3, "cpus_per_worker": 2}, **extra})
        assert plan_main(["--no-cluster", "--config", path]) == 0, capsys.readouterr()
        out = capsys.readouterr().out
        assert "Ray Train workers: 3 x {CPU 2} (scaling.num_workers, scaling.use_gpu, scaling.cpus_per_worker)" in out
        assert f"memory plan ({command};" in out
    # A config with scaling and no model section is read as an sft config (its own problem is
    # said), not as a resources-only one.
    path = _yaml(tmp_path, "bare.yaml", {"scaling": {"num_workers": 2, "use_gpu": True},
                                         "data": {"train": ["d.jsonl"]}})
    assert plan_main(["--no-cluster", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "model.name_or_path: required" in err and "resources" not in err
    assert plan_main(["--no-cluster", "--config", path, "model.name_or_path=Qwen/Qwen2.5-0.5B"]) == 0
    assert "Ray Train workers: 2 x {CPU 1, GPU 1}" in capsys.readouterr().out


def test_plan_names_the_rollout_fleets_of_label_and_revise(tmp_path, capsys):
    path = _yaml(tmp_path, "label.yaml", {"judge": {"name_or_path": "j"}, "data": {"pairs": ["p.jsonl"]},
                                          "label": {"template": "toyworld_helpfulness"},
                                          "resources": {"rollout": {"num_workers": 3, "gpus_per_worker": 1}}})
    assert plan_main(["--no-cluster", "--config", path]) == 0
    out = capsys.readouterr().out
    assert "label: judge j: rollout fleet of 3 x {CPU 1, GPU 1} (resources.rollout.num_workers" in out
    assert "memory: not planned for label" in out and "resources-only" not in out
    path = _yaml(tmp_path, "revise.yaml", {"policy": {"name_or_path": "p"}, "judge": {"name_or_path": "j"},
                                           "data": {"sft": ["s.jsonl"]}, "revise": {},
                                           "judge_resources": {"num_workers": 2}})
    assert plan_main(["--no-cluster", "--config", path]) == 0
    out = capsys.readouterr().out
    assert "revise: policy p: rollout fleet of 1 x {CPU 1}" in out
    assert "revise: judge j: rollout fleet of 2 x {CPU 1} (judge_resources.num_workers" in out
