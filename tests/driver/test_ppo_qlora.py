"""PPO on a 4-bit NF4 policy base (QLoRA) on Ray with tiny models: the reference is the
quantised base with the adapters off, rollout workers sample from the dequantised merged
weights (the sync probe agrees), and the export is a plain folder."""
import os

import pytest

from rayrlhf.driver.ppo_stage import run_ppo
from rayrlhf.metrics import read_metrics
from rayrlhf.models import load_causal_lm
from tests.driver import faults
from tests.driver.test_ppo_lora import _cfg
from tests.driver.tiny import world_on_local_ray

pytestmark = pytest.mark.slow
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from world_on_local_ray(tmp_path_factory, "ppo_qlora_world")


def test_qlora_ppo_samples_from_the_dequantized_merged_weights(world, tmp_path):
    from dataclasses import replace

    run_dir = str(tmp_path / "qlora")
    faults.reset()
    cfg = _cfg(world, run_dir, 8)
    cfg = replace(cfg, policy=replace(cfg.policy, quantization="4bit"))
    assert cfg.reference_from_policy
    run_ppo(cfg)
    rows = [r for r in read_metrics(run_dir) if "kl/per_token" in r]
    assert rows[0]["kl/per_token"] == 0.0
    assert any(r["kl/per_token"] != 0.0 for r in rows[1:])
    assert all(r["rollout/mismatch_kl"] < 1e-5 for r in rows)
    probes = [r["sync/probe_max_diff"] for r in read_metrics(run_dir) if "sync/probe_max_diff" in r]
    assert probes and max(probes) < 1e-3
    merged = load_causal_lm(os.path.join(run_dir, "export"))
    assert not any("lora" in k or "base_layer" in k or "absmax" in k for k in merged.state_dict())
