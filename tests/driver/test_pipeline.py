"""The real CLI end to end on tiny models: `rayrlhf pipeline`, `rayrlhf sft` on bad data."""
import json
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rayrlhf.cli import main

TINY_WORLD = {"n_sft": 320, "n_pref": 320, "n_prompts": 20, "n_eval_prompts": 10, "vocab_size": 300,
              "model": {"hidden_size": 64, "num_layers": 1, "num_heads": 2, "intermediate_size": 128}}
TRAIN = {"epochs": 1, "lr": 3.0e-3, "global_batch_size": 16, "per_worker_micro_batch_size": 8, "log_every": 5}
# A 300-token vocabulary splits words finely: toyworld replies reach about 85 tokens.
DATA_LIMITS = {"max_prompt_tokens": 96, "max_response_tokens": 96}
# What the rejection-sampling and PPO stages share: prompts, the safety RM, tiny rollouts.
POLICY_STAGE = {
    "data": {"train": ["{toyworld}/data/prompts_train.jsonl"], "eval": ["{toyworld}/data/prompts_eval.jsonl"],
             "max_prompt_tokens": 96, "eval_limit": 4},
    "rewards": [{"name": "safety", "model": "{rm_safety}/export"}],
    "gold": {"reward": "rayrlhf.tasks.toyworld:gold_reward"},
    "rollout": {"backend": "hf", "max_new_tokens": 8, "n_samples": 2, "max_model_len": 160},
    "resources": {"trainer": {"cpus_per_worker": 0.25}, "critic": {"cpus_per_worker": 0.25},
                  "reference": {"cpus_per_worker": 0.25}, "rollout": {"cpus_per_worker": 0.25},
                  "rewards": {"safety": {"cpus_per_worker": 0.25}}},
}


def tiny_pipeline(tmp_path, name="tiny") -> str:
    """The pipeline, with a weight-0 rule source that kills the run the first time the file
    ``<tmp_path>/kill-after-round-1`` names (the first round's checkpoint) exists."""
    run = tmp_path / "runs" / name
    trip = {"name": "trip", "function": "tests.driver.faults:kill_once_when_exists",
            "args": {"path": str(run / "rs" / "checkpoints" / "step-00000001" / "state.json")
                     if (tmp_path / "kill-after-round-1").exists() else "",
                     "tripped": str(tmp_path / "tripped")}}
    rs_stage = dict(POLICY_STAGE, rewards=POLICY_STAGE["rewards"] + [trip],
                    combine={"weights": {"safety": 1.0, "trip": 0.0}})
    cfg = {
        "run": {"output_dir": str(tmp_path / "runs"), "name": name, "seed": 1},
        "ray": {"num_cpus": 2},
        "stages": [
            {"name": "toyworld", "kind": "toyworld", "config": TINY_WORLD},
            {"name": "sft", "kind": "sft", "config": {
                "model": {"name_or_path": "{toyworld}/base_model"},
                "data": {"train": ["{toyworld}/data/sft_train.jsonl"], "eval": ["{toyworld}/data/sft_eval.jsonl"], **DATA_LIMITS},
                "train": TRAIN, "scaling": {"num_workers": 2}}},
            {"name": "rm_safety", "kind": "rm", "config": {
                "model": {"name_or_path": "{sft}/export"},
                "data": {"train": ["{toyworld}/data/pref_safety_train.jsonl"],
                         "eval": ["{toyworld}/data/pref_safety_eval.jsonl"], **DATA_LIMITS},
                "train": TRAIN, "reward": {"name": "safety"}, "scaling": {"num_workers": 2}}},
            {"name": "rs", "kind": "rs", "config": {
                "policy": {"name_or_path": "{sft}/export"}, **rs_stage,
                "rs": {"rounds": 3, "k": 2, "prompts_per_round": 4, "global_batch_size": 4, "lr": 1e-3,
                       "curve_k": 2, "curve_prompts": 4}}},
            {"name": "ppo", "kind": "ppo", "config": {
                "policy": {"name_or_path": "{rs}/export"}, **POLICY_STAGE,
                "ppo": {"total_steps": 2, "prompts_per_step": 2, "global_mini_batch_size": 4, "actor_lr": 1e-3,
                        "critic_lr": 1e-3, "rollout_mode": "sync", "eval_every": 2, "checkpoint_every": 2}}},
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rayrlhf", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900)


def test_bad_data_is_reported_before_any_actor_starts(tmp_path, tiny_model_dir, capsys):
    import ray

    bad = tmp_path / "sft.jsonl"
    bad.write_text("\n".join([
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
        '{"messages": [broken',
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}),
        json.dumps({"prompt": "hi", "completion": ""}),
    ]) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name_or_path": tiny_model_dir}, "data": {"train": [str(bad)]},
                                   "run": {"output_dir": str(tmp_path / "runs")}}))
    assert main(["sft", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: <row>:" in err
    assert f"{bad}:3: messages[1].role:" in err
    assert f"{bad}:4: messages: missing" in err  # the format is detected from the first row
    assert "3 problems" in err
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    path = tiny_pipeline(tmp)
    first = _cli("pipeline", "--config", path)
    assert first.returncode == 0, first.stderr[-3000:]
    return tmp, path, first


@pytest.mark.slow
def test_pipeline_end_to_end_then_rerun_skips_finished_stages(full_run):
    tmp_path, path, first = full_run
    run = tmp_path / "runs" / "tiny"
    summary = json.load(open(run / "summary.json"))
    assert summary["sft"]["eval/ppl"] < 60  # from about 300 (the vocabulary) at random init
    assert "eval/accuracy" in summary["rm_safety"] and "eval/gold_accuracy" in summary["rm_safety"]
    assert summary["rm_safety"]["eval/length_baseline_accuracy"] > 0
    assert summary["rs"]["rounds"] == 3 and len(summary["rs"]["rounds_history"]["rs/kept_reward"]) == 3
    assert summary["ppo"]["steps"] == 2
    for stage in ("rs", "ppo"):  # held-out gold figures and gains with their intervals
        for key in ("before/gold_reward", "eval/gold_reward", "gain/gold_reward"):
            s = summary[stage]
            assert s[key + "_ci_low"] <= s[key] <= s[key + "_ci_high"], (stage, key)
    for stage in ("sft", "rm_safety", "rs", "ppo"):
        assert (run / stage / "DONE.json").exists()
        assert (run / stage / "export" / "model.safetensors").exists()
        assert (run / stage / "config.yaml").exists()
        rows = [json.loads(x) for x in open(run / stage / "metrics.jsonl")]
        assert rows and all("step" in r for r in rows)
    assert "held-out perplexity" in first.stdout and "held-out accuracy" in first.stdout
    assert "rounds of best-of-2" in first.stdout
    report = run / "report" / "index.html"
    assert report.exists() and (run / "report" / "rs_best_of_k.png").exists()
    assert f"[pipeline] report: {report}" in first.stdout
    page = report.read_text()
    assert "<th>comparison</th>" in page and "<td>after ppo against after rs</td>" in page

    again = _cli("pipeline", "--config", path)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("toyworld", "sft", "rm_safety", "rs", "ppo"):
        assert f"[pipeline] {stage}: finished earlier with this config, skipped" in again.stdout


@pytest.mark.slow
def test_killed_during_rejection_sampling_then_rerun_matches_an_uninterrupted_run(full_run, tmp_path):
    """SIGKILL the whole pipeline (driver and its local Ray cluster) in the second round; the
    same command again skips the finished stages, resumes rejection sampling from the first
    round's checkpoint, and ends with the uninterrupted run's results."""
    full_tmp, _, _ = full_run
    full = full_tmp / "runs" / "tiny"
    (tmp_path / "kill-after-round-1").touch()
    path = tiny_pipeline(tmp_path)
    run = tmp_path / "runs" / "tiny"
    for stage in ("toyworld", "sft", "rm_safety"):  # finished earlier: the same folders, markers included
        shutil.copytree(full / stage, run / stage)
    # The driver kills itself and its Ray cluster (the rule source) in round 2, once round 1's
    # checkpoint exists; the subprocess runs in its own session so the kill spares this one.
    proc = subprocess.run([sys.executable, "-m", "rayrlhf", "pipeline", "--config", path], capture_output=True,
                          text=True, start_new_session=True, timeout=900)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (tmp_path / "tripped").exists()
    assert not (run / "rs" / "DONE.json").exists()

    again = _cli("pipeline", "--config", path)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("toyworld", "sft", "rm_safety"):
        assert f"[pipeline] {stage}: finished earlier with this config, skipped" in again.stdout
    assert "resumed from" in again.stdout and "after round" in again.stdout
    for stage in ("rs", "ppo"):
        assert _comparable(run / stage) == _comparable(full / stage), stage
        a = load_file(run / stage / "export" / "model.safetensors")
        b = load_file(full / stage / "export" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage


def _comparable(stage_dir):
    rows = [json.loads(x) for x in open(stage_dir / "metrics.jsonl")]
    return [{k: v for k, v in r.items() if not (k.startswith("timing/") or "seconds" in k or k == "sync/share_of_step")}
            for r in rows]
