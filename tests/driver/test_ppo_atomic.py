"""A PPO iteration is all or nothing: the driver's train_step with model workers as plain
objects behind stub groups, and one role's update failing part way."""
import collections
from types import SimpleNamespace

import torch

import rayrlhf.driver.common as common
import rayrlhf.driver.ppo as ppo_driver
from rayrlhf.actors.model_worker import ModelWorker
from rayrlhf.algo.kl import make_kl_controller
from rayrlhf.config.ppo import PPOConfig
from rayrlhf.engine.settings import CriticLoss, EngineSettings, PolicyLoss
from rayrlhf.models import load_tokenizer
from rayrlhf.rollout.types import Sample


class Remote:
    """An actor handle whose ``.method.remote(...)`` calls the plain object at once."""

    def __init__(self, obj):
        self.obj = obj

    def __getattr__(self, name):
        return SimpleNamespace(remote=getattr(self.obj, name))


def _group(worker):
    return SimpleNamespace(world_size=1, actors=[Remote(worker)])


def _state(w):
    weights = {k: v.detach().clone() for k, v in w.model.state_dict().items()}
    opt = {id(p): {k: v.clone() for k, v in st.items()} for p, st in w.optimizer.state.items()}
    return weights, opt


def _same(a, b) -> bool:
    (wa, oa), (wb, ob) = a, b
    return (wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa) and oa.keys() == ob.keys()
            and all(oa[p].keys() == ob[p].keys() and all(torch.equal(oa[p][k], ob[p][k]) for k in oa[p])
                    for p in oa))


def _driver(model_dir, monkeypatch):
    monkeypatch.setattr(ppo_driver, "get", lambda refs, timeout, what: refs)
    monkeypatch.setattr(common, "get", lambda refs, timeout, what: refs)  # the forward phases
    cfg = PPOConfig()
    p = cfg.ppo
    p.ppo_epochs, p.global_mini_batch_size = 2, 2  # 4 samples: 4 mini-batches per role
    eng = EngineSettings(lr=1e-2)
    policy = ModelWorker("policy", model_dir, eng, PolicyLoss(temperature=1.0))
    critic = ModelWorker("critic", model_dir, eng, CriticLoss(value_clip=0.2))
    reference = ModelWorker("reference", model_dir, eng)
    tok = load_tokenizer(model_dir)
    questions = ["Where is the red key?", "Who has the old map?"]
    prompts = [SimpleNamespace(prompt=[{"role": "user", "content": q}], meta={}) for q in questions]
    ids = [tok.apply_chat_template(r.prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
           for r in prompts]
    d = ppo_driver.PPODriver.__new__(ppo_driver.PPODriver)
    d.cfg, d.p, d.timeout, d.tokenizer, d.prompts = cfg, p, 60.0, tok, prompts
    d.roles = SimpleNamespace(policy=_group(policy), critic=_group(critic), reference=_group(reference))
    d.version, d.bad_steps, d.pending, d.counters = 0, 0, collections.deque(), {}
    d.kl_ctl = make_kl_controller("fixed", kl_coef=0.05)
    answer = tok("The red key is in the kitchen.", add_special_tokens=False).input_ids

    def next_samples(step):
        out = [Sample(i // 2, i % 2, ids[i // 2], answer[: 3 + i], [-1.0] * (3 + i), "x", "stop", d.version)
               for i in range(4)]
        return out, {}

    d._next_samples = next_samples
    d.score = lambda prompts, texts, meta: (torch.tensor([1.0, -1.0, 0.5, 0.0]), {})
    d.syncs = []
    d._sync = lambda: d.syncs.append(d.version) or {}
    return d, policy, critic


def test_a_failed_critic_mini_batch_undoes_the_whole_iteration(tiny_model_dir, monkeypatch, capfd):
    d, policy, critic = _driver(tiny_model_dir, monkeypatch)
    first = d.train_step(0)
    assert d.version == 1 and d.syncs == [1] and first.get("actor/skipped") == first.get("critic/skipped") == 0
    before = _state(policy), _state(critic)
    # The critic's third mini-batch gives a NaN loss; the policy's four all went through.
    real, calls = critic._loss, []

    def poisoned(model, mb, *norms):
        calls.append(1)
        loss, stats = real(model, mb, *norms)
        return (loss * float("nan"), stats) if len(calls) == 3 else (loss, stats)

    critic._loss = poisoned
    out = d.train_step(1)
    assert d.version == 1 and d.syncs == [1] and d.bad_steps == 1
    assert _same(_state(policy), before[0]) and _same(_state(critic), before[1])  # bitwise, optimizer too
    assert out["train/skipped"] == 1.0 and out["actor/skipped"] == out["critic/skipped"] == 1.0
    said = capfd.readouterr().out
    assert "step 2: skipped the update: non-finite loss or gradient norm (critic mini-batch 3" in said
    # The next iteration goes on from the same state, as if the failed one had not run.
    critic._loss = real
    again = d.train_step(2)
    assert d.version == 2 and d.syncs == [1, 2] and d.bad_steps == 0 and again["actor/skipped"] == 0
