"""Local model paths become absolute when a config loads: Ray workers run in other folders."""
import os

import pytest

from rayrlhf.config import RMConfig, load_config
from rayrlhf.config.ppo import PPOConfig


def test_relative_local_model_paths_become_absolute(tmp_path, monkeypatch):
    (tmp_path / "runs" / "sft" / "export").mkdir(parents=True)
    (tmp_path / "runs" / "rm" / "export").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(RMConfig, data={"model": {"name_or_path": "runs/sft/export"}, "data": {"train": ["x.jsonl"]}})
    assert cfg.model.name_or_path == str(tmp_path / "runs" / "sft" / "export")
    assert cfg.data.train == ["x.jsonl"]  # data is read by the driver, where relative paths hold
    ppo = load_config(PPOConfig, data={
        "policy": {"name_or_path": "./runs/sft/export", "tokenizer": "Qwen/Qwen2.5-0.5B-Instruct"},
        "data": {"train": ["p.jsonl"]},
        "rewards": [{"name": "helpfulness", "model": "runs/rm/export"}, {"name": "hub", "model": "org/missing-rm"}],
        "resources": {"rewards": {"helpfulness": {"cpus_per_worker": 1}, "hub": {"cpus_per_worker": 1}}},
    })
    assert ppo.policy.name_or_path == os.path.join(str(tmp_path), "runs", "sft", "export")
    assert ppo.policy.tokenizer == "Qwen/Qwen2.5-0.5B-Instruct"  # a hub name stays a hub name
    assert [r.model for r in ppo.rewards] == [str(tmp_path / "runs" / "rm" / "export"), "org/missing-rm"]


def test_missing_local_model_folders_are_named_before_anything_starts(tmp_path, monkeypatch):
    from rayrlhf.config.loader import ConfigError, check_model_paths
    from rayrlhf.driver.train_stage import prepare

    (tmp_path / "runs" / "sft" / "export").mkdir(parents=True)  # a folder, but no config.json
    monkeypatch.chdir(tmp_path)
    ppo = load_config(PPOConfig, data={
        "policy": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"},  # a hub name, in the cache (below)
        "data": {"train": ["p.jsonl"]},
        "rewards": [{"name": "helpfulness", "model": "runs/rm_typo/export"}],
        "resources": {"rewards": {"helpfulness": {"cpus_per_worker": 1}}},
    })
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda name, filename: f"/cache/{name}/{filename}" if name.startswith("Qwen/") else None)
    assert check_model_paths(ppo) == [
        "rewards[0].model: runs/rm_typo/export is not a folder (nor a hub name like org/name)"]
    rm = load_config(RMConfig, data={"model": {"name_or_path": "runs/sft/export"}, "data": {"train": ["x.jsonl"]},
                                     "run": {"output_dir": str(tmp_path / "out")}})
    with pytest.raises(ConfigError, match=r"model.name_or_path: .*runs/sft/export has no config.json"):
        prepare("rm", rm, resume=False)


def test_a_hub_name_neither_cached_nor_reachable_is_one_line_before_any_work(monkeypatch):
    """One request with a timeout and no retries: a mistyped name, or a machine without the hub,
    is said at once, with what to do."""
    import time

    from rayrlhf.config.loader import check_model_paths

    cfg = load_config(PPOConfig, data={"policy": {"name_or_path": "rayrlhf-tests/no-such-model"},
                                       "data": {"train": ["p.jsonl"]},
                                       "rewards": [{"name": "rule", "function": "rayrlhf.rules:length_penalty"}]})
    t0 = time.perf_counter()
    problems = check_model_paths(cfg)
    assert time.perf_counter() - t0 < 30
    assert len(problems) == 1 and problems[0].startswith(
        "policy.name_or_path: rayrlhf-tests/no-such-model is neither a local folder nor reachable on the "
        "Hugging Face hub (")
    assert "huggingface-cli download rayrlhf-tests/no-such-model" in problems[0]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert check_model_paths(cfg) == ["policy.name_or_path: rayrlhf-tests/no-such-model is neither a local folder "
                                      "nor in the Hugging Face cache, and HF_HUB_OFFLINE is set"]
