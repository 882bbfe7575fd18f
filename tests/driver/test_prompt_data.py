"""Prompt sources of PPO and rejection sampling: checked before any actor starts, long prompts
either stop the run (listed by file and line) or are left out and counted."""
import json
import os

import pytest

from rayrlhf.config import load_config
from rayrlhf.config.ppo import PPOConfig
from rayrlhf.data.validate import DataValidationError
from rayrlhf.driver.ppo_stage import prepare_run
from tests.driver.tiny import tiny_world

LONG = "The red key is in the hall. " * 40 + "Where is the red key?"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("prompt_data"))


def _prompts_with_long_rows(world, tmp_path) -> tuple[str, int]:
    rows = [json.loads(line) for line in open(f"{world}/data/prompts_train.jsonl")]
    rows.insert(2, {"prompt": [{"role": "user", "content": LONG}]})
    rows.insert(5, {"prompt": [{"role": "user", "content": LONG}]})
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), len(rows)


def _cfg(world, tmp_path, train, **data):
    return load_config(PPOConfig, data={
        "policy": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [train], "eval": [f"{world}/data/prompts_eval.jsonl"], "max_prompt_tokens": 96, **data},
        "rewards": [{"name": "rule", "function": "tests.driver.faults:reward"}],
        "run": {"output_dir": str(tmp_path), "name": "run"},
    })


def test_long_prompts_stop_the_run_with_file_and_line(world, tmp_path):
    train, _ = _prompts_with_long_rows(world, tmp_path)
    with pytest.raises(DataValidationError) as err:
        prepare_run(_cfg(world, tmp_path, train), resume=False, default_name="ppo")
    lines = sorted(p.line for p in err.value.problems)
    assert lines == [3, 6]  # 1-based lines of the two inserted rows
    assert all(p.file == train and p.field == "prompt" and "max_prompt_tokens=96" in p.reason for p in err.value.problems)
    assert not os.path.exists(tmp_path / "run" / "config.yaml")  # nothing written before the data is good


def test_long_prompts_dropped_are_counted_and_listed(world, tmp_path, capsys):
    train, n_rows = _prompts_with_long_rows(world, tmp_path)
    run_dir, _, prompts, evals = prepare_run(_cfg(world, tmp_path, train, too_long="drop"), resume=False,
                                             default_name="ppo")
    assert len(prompts) == n_rows - 2
    assert all(LONG not in json.dumps(p.prompt) for p in prompts)
    report = json.load(open(os.path.join(run_dir, "data_report.json")))["sources"][train]
    assert report["rows"] == n_rows and report["records"] == n_rows - 2
    assert report["dropped"]["too_long"] == 2 and len(report["too_long"]) == 2
    assert "left out 2 rows over the token limits" in capsys.readouterr().out


def test_limit_reads_the_first_rows_of_each_source(world, tmp_path):
    _, _, prompts, evals = prepare_run(
        _cfg(world, tmp_path, f"{world}/data/prompts_train.jsonl", limit=5), resume=False, default_name="ppo")
    first = [json.loads(line)["prompt"] for line in open(f"{world}/data/prompts_train.jsonl")][:5]
    assert [p.prompt for p in prompts] == first
    assert len(evals) == 5
