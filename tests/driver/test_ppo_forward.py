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
    lp = ppo_driver.PPODriver._forward(driver, _group(policy), batch, "policy").result()
    ref = ppo_driver.PPODriver._reference(driver, batch).result()
    assert torch.allclose(lp, ref, atol=1e-6)
    assert not torch.allclose(ref, reference.forward(batch, temperature=1.0), atol=1e-3)


def test_forwards_of_several_groups_are_all_sent_before_any_is_waited_for(monkeypatch):
    """The driver's forward phase sends the reference, policy and critic passes at once: each
    ``PendingRows`` sends on creation and waits only in ``result``, and it assembles each
    worker's (trimmed) rows into the full (B, T-1) layout."""
    events = []

    def group(name, world):
        def remote(batch, micro, temperature, name=name):
            events.append(f"send {name}")
            return torch.full((batch["input_ids"].shape[0], batch["attention_mask"].sum(1).max() - 1), 1.0)
        return SimpleNamespace(world_size=world, actors=[SimpleNamespace(forward=SimpleNamespace(remote=remote))
                                                         for _ in range(world)])

    def get(refs, timeout, what):
        events.append(f"wait {what.split()[0]}")
        return refs

    monkeypatch.setattr(common, "get", get)
    ids = torch.tensor([[5, 6, 7, 0], [5, 6, 0, 0], [5, 6, 7, 8]])
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long(), "response_mask": torch.ones(3, 3)}
    pending = [common.PendingRows(group("reference", 1), batch, "reference", 1.0, 8, 1.0),
               common.PendingRows(group("critic", 2), batch, "critic", 1.0, 8, 1.0)]
    outs = [p.result() for p in pending]
    assert events == ["send reference", "send critic", "send critic", "wait reference", "wait critic"]
    assert torch.equal(outs[0], torch.ones(3, 3))
    # Rank 0 got rows 0-1 (width 3, so 2 columns back), rank 1 row 2 (3 columns): zeros elsewhere.
    assert torch.equal(outs[1], torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]))
