"""`rayrlhf compare`: methods from one starting policy at one sample budget, evaluated by one
evaluator on the gold reward and the KL to the start, with tiny models on a local Ray cluster."""
import json
import os

import pytest

from rayrlhf.config.loader import ConfigError
from rayrlhf.driver.compare import load_compare, run_compare
from tests.driver import faults
from tests.driver.tiny import world_on_local_ray

BUDGET, PROMPTS, EVAL, EVAL_N = 16, 4, 6, 2


def _rs(**rs):
    return {"data": {"train": ["{w}/data/prompts_train.jsonl"], "max_prompt_tokens": 96},
            "rewards": [{"name": "rule", "function": "tests.driver.faults:reward"}],
            "rollout": {"backend": "hf", "max_new_tokens": 8, "max_model_len": 160},
            "rs": {"prompts_per_round": PROMPTS, "epochs": 1, "global_batch_size": 4, "lr": 1e-3, "curve_k": 0,
                   "eval_every": 100, **rs},
            "eval": {"samples_per_prompt": 1},
            "resources": {"trainer": {"num_workers": 1, "cpus_per_worker": 0.25},
                          "reference": {"cpus_per_worker": 0.25},
                          "rollout": {"num_workers": 1, "cpus_per_worker": 0.25}}}


def _config(world: str, out: str, methods=None) -> dict:
    def fill(obj):
        if isinstance(obj, str):
            return obj.replace("{w}", world)
        if isinstance(obj, dict):
            return {k: fill(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [fill(v) for v in obj]
        return obj

    methods = methods or [
        {"name": "rs", "kind": "rs", "config": _rs(), "sweep": {"key": "rs.k", "values": [2, 4]}},
        {"name": "online_dpo", "kind": "rs", "config": _rs(objective="dpo", k=2)},
    ]
    return fill({
        "run": {"output_dir": out, "name": "cmp", "seed": 3},
        "compare": {"start": "{w}/base_model", "budget_samples": BUDGET, "methods": methods,
                    "gold": {"reward": "rayrlhf.tasks.toyworld:gold_reward"},
                    "eval": {"prompts": "{w}/data/prompts_eval.jsonl", "limit": EVAL, "samples_per_prompt": EVAL_N,
                             "max_new_tokens": 8, "bootstrap": 200}},
    })


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from world_on_local_ray(tmp_path_factory, "compare_world")


def test_sweeps_expand_to_runs_at_one_sample_budget(tmp_path):
    world = str(tmp_path / "w")
    _, pipe, _, configs, runs = load_compare(None, data=_config(world, str(tmp_path)))
    assert [s.name for s in pipe.stages] == ["rs@2", "rs@4", "online_dpo"]
    # 16 samples each: 4 prompts x K per round, so 2 rounds at K = 2 and 1 at K = 4.
    assert [(c.rs.k, c.rs.rounds) for c in configs] == [(2, 2), (4, 1), (2, 2)]
    assert all(c.policy.name_or_path == f"{world}/base_model" for c in configs)
    assert configs[2].rs.objective == "dpo" and [v for _, v, _ in runs] == [2, 4, None]
    # `rayrlhf plan` reads a compare config as the pipeline it expands to.
    import yaml

    from rayrlhf.placement.cli import load_stages

    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(_config(world, str(tmp_path))))
    assert [s.label for s in load_stages(str(path), [], None)] == [
        "stage rs@2 (rs)", "stage rs@4 (rs)", "stage online_dpo (rs)"]


def test_a_budget_that_does_not_divide_is_refused_naming_the_run(tmp_path):
    data = _config(str(tmp_path), str(tmp_path))
    data["compare"]["budget_samples"] = 12
    with pytest.raises(ConfigError) as e:
        load_compare(None, data=data)
    assert "methods.rs@4: budget_samples 12 is not a multiple of the 16 samples of one round" in str(e.value)


@pytest.mark.slow
def test_compare_runs_every_method_and_draws_one_frontier(world, tmp_path, capsys):
    faults.reset()
    out = str(tmp_path / "runs")
    frontier = run_compare(None, data=_config(world, out))
    rows = frontier["rows"]
    assert [(r["method"], r["value"]) for r in rows] == [("start", None), ("rs", 2), ("rs", 4), ("online_dpo", None)]
    assert [r["generated"] for r in rows] == [0, BUDGET, BUDGET, BUDGET]
    # rejection sampling trains on one kept sample per prompt and round, online DPO on a pair per
    # prompt without ties: 4 prompts x 2 rounds at K = 2, 4 x 1 at K = 4
    assert rows[1]["trained"] == 8 and rows[2]["trained"] == 4 and 0 < rows[3]["trained"] <= 8
    start = rows[0]
    assert start["kl"] == [0.0, 0.0, 0.0]  # the start is the reference: the same forward pass
    for r in rows:
        g, lo, hi = r["gold_reward"]
        assert lo <= g <= hi and 0.0 <= g <= 1.0
    for r in rows[1:]:
        assert r["kl"][0] != 0.0 and r["seconds"] > 0
        gain = r["gain_gold_reward"]
        assert gain[0] == pytest.approx(r["gold_reward"][0] - start["gold_reward"][0], abs=1e-9)
    folder = os.path.join(out, "cmp", "compare")
    assert json.load(open(os.path.join(folder, "frontier.json")))["rows"] == rows
    page = open(os.path.join(folder, "report.md")).read()
    assert "frontier.png" in page and all(m in page for m in ("rs", "online_dpo", "start"))
    assert os.path.getsize(os.path.join(folder, "frontier.png")) > 1000
    printed = capsys.readouterr().out
    assert "online_dpo" in printed and "KL to start" in printed
    # Run again: every run is finished and skipped; the evaluation gives the same figures.
    again = run_compare(None, data=_config(world, out))
    assert "finished earlier with this config, skipped" in capsys.readouterr().out
    assert [r["gold_reward"] for r in again["rows"]] == [r["gold_reward"] for r in rows]
    assert [r["kl"] for r in again["rows"]] == [r["kl"] for r in rows]
