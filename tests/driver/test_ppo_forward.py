"""The driver's forward phases, with model workers as plain objects behind a stub group."""
from types import SimpleNamespace

import torch

import rayrlhf.driver.common as common
import rayrlhf.driver.ppo as ppo_driver
from rayrlhf.actors.model_worker import ModelWorker
from rayrlhf.config.ppo import PPOConfig
from rayrlhf.engine.settings import EngineSettings, PolicyLoss
from tests.engine.test_engine import make_batch


def _group(worker):
    return SimpleNamespace(world_size=1, actors=[SimpleNamespace(
        forward=SimpleNamespace(remote=lambda *a, **k: worker.forward(*a, **k)))])


def test_reference_logprobs_use_the_rollout_temperature(tiny_model_dir, monkeypatch):
    """At step 0 the reference is the policy: with T != 1 their logprobs (and so the KL) must
    still agree, which needs both under softmax(logits / T)."""
    monkeypatch.setattr(common, "get", lambda refs, timeout, what: refs)
    cfg = PPOConfig()
    cfg.rollout.temperature = 0.7
    policy = ModelWorker("policy", tiny_model_dir, EngineSettings(), PolicyLoss(temperature=0.7))
    reference = ModelWorker("reference", tiny_model_dir, EngineSettings())
    driver = SimpleNamespace(cfg=cfg, p=cfg.ppo, timeout=60.0,
                             roles=SimpleNamespace(policy=_group(policy), reference=_group(reference)))
    batch = make_batch(tiny_model_dir)
    lp = ppo_driver.PPODriver._forward(driver, _group(policy), batch, "policy")
    ref = ppo_driver.PPODriver._reference(driver, batch)
    assert torch.allclose(lp, ref, atol=1e-6)
    assert not torch.allclose(ref, reference.forward(batch, temperature=1.0), atol=1e-3)
