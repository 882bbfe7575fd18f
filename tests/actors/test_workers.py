"""Model and reward actors as plain objects (the same classes Ray runs as actors)."""
import json

import pytest
import torch

from rayrlhf.actors.batch import build_batch
from rayrlhf.actors.model_worker import ModelWorker
from rayrlhf.actors.reward import FunctionReward, RewardModelWorker
from rayrlhf.algo.logprobs import token_logprobs
from rayrlhf.engine.settings import CriticLoss, EngineSettings, PolicyLoss
from rayrlhf.models import export_hf, load_causal_lm, load_scalar_model, load_tokenizer
from rayrlhf.rollout.checksum import weights_checksum

ENG = EngineSettings(lr=1e-2, max_grad_norm=1.0)
PPO = PolicyLoss(clip_eps=0.2, temperature=0.7)


@pytest.fixture()
def batch(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    p = tok.apply_chat_template([{"role": "user", "content": "Where is the red key?"}], add_generation_prompt=True,
                                tokenize=True, return_dict=False)
    r = tok("The red key is in the kitchen.", add_special_tokens=False).input_ids + [tok.eos_token_id]
    return build_batch([p, p[:-2] + p[-1:]], [r, r[:3]], tok.pad_token_id)


def test_policy_logprobs_use_the_sampling_temperature(tiny_model_dir, batch):
    w = ModelWorker("policy", tiny_model_dir, ENG, PPO)
    got = w.forward(batch)
    model = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits / 0.7
    want = token_logprobs(logits, batch["input_ids"]) * batch["response_mask"]
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.all(got[batch["response_mask"] == 0] == 0)


def test_ppo_update_raises_logprobs_of_positive_advantage_tokens(tiny_model_dir, batch):
    w = ModelWorker("policy", tiny_model_dir, ENG, PPO)
    old = w.forward(batch)
    mb = dict(batch, old_logprobs=old, advantages=batch["response_mask"].clone())
    stats = w.update([mb], [float(batch["response_mask"].sum())])
    new = w.forward(batch)
    mask = batch["response_mask"].bool()
    assert (new[mask] - old[mask]).mean() > 0
    assert stats["clipfrac"] == 0.0 and stats["grad_norm"] > 0  # first step starts at ratio 1


def test_sft_objective_is_the_masked_nll_and_lowers_it(tiny_model_dir, batch):
    w = ModelWorker("policy", tiny_model_dir, ENG, PolicyLoss(objective="sft", temperature=0.7))
    n = float(batch["response_mask"].sum())
    # The loss is the NLL of the response tokens at temperature 1 (not the sampling temperature).
    model = load_causal_lm(tiny_model_dir)
    with torch.no_grad():
        lp = token_logprobs(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                            batch["input_ids"])
    want = float(-(lp * batch["response_mask"]).sum() / n)
    first = w.update([batch], [n])
    assert first["nll"] == pytest.approx(want, rel=1e-5)
    later = [w.update([batch], [n])["nll"] for _ in range(3)]
    assert later[-1] < first["nll"]


def test_critic_values_and_update(tiny_model_dir, batch):
    w = ModelWorker("critic", tiny_model_dir, ENG, CriticLoss(value_clip=None))
    v0 = w.forward(batch)
    assert v0.shape == batch["response_mask"].shape
    returns = batch["response_mask"] * 3.0
    mb = dict(batch, values=v0, returns=returns)
    n = float(batch["response_mask"].sum())
    losses = [w.update([mb], [n])["loss"] for _ in range(5)]
    assert losses[-1] < losses[0]


def test_reference_is_frozen_and_save_load_roundtrip(tiny_model_dir, batch, tmp_path):
    ref = ModelWorker("reference", tiny_model_dir, EngineSettings())
    assert not any(p.requires_grad for p in ref.model.parameters())
    w = ModelWorker("policy", tiny_model_dir, ENG, PPO)
    mb = dict(batch, old_logprobs=w.forward(batch), advantages=batch["response_mask"].clone())
    w.update([mb], [float(batch["response_mask"].sum())])
    w.save(str(tmp_path))
    again = ModelWorker("policy", tiny_model_dir, ENG, PPO)
    again.load(str(tmp_path))
    assert torch.equal(again.forward(batch), w.forward(batch))
    weights, checksum = w.named_weights_and_checksum()
    assert checksum == weights_checksum(again.named_weights())
    assert again.optimizer.state_dict()["state"].keys() == w.optimizer.state_dict()["state"].keys()


def test_reward_model_worker_standardises_with_recorded_statistics(tiny_model_dir, tmp_path):
    tok = load_tokenizer(tiny_model_dir)
    rm = load_scalar_model(tiny_model_dir, pad_token_id=tok.pad_token_id)
    export_hf(rm, tok, str(tmp_path / "rm"), extra={"score_mean": 0.5, "score_std": 2.0})
    prompts = [[{"role": "user", "content": "Where is the red key?"}]] * 2
    texts = ["The red key is in the kitchen.", "I can't help with that."]
    raw = RewardModelWorker("h", str(tmp_path / "rm"), normalize=False).score(prompts, texts)
    std = RewardModelWorker("h", str(tmp_path / "rm")).score(prompts, texts)
    assert std == pytest.approx([(x - 0.5) / 2.0 for x in raw], abs=1e-5)
    assert json.load(open(tmp_path / "rm" / "rayrlhf.json"))["score_std"] == 2.0


def test_function_reward_gets_the_last_user_message():
    f = FunctionReward("gold", "rayrlhf.tasks.toyworld:gold_helpfulness")
    prompt = [{"role": "user", "content": "The red key is in the kitchen. Where is the red key?"}]
    right, wrong = f.score([prompt, prompt], ["The red key is in the kitchen.", "The red key is in the garden."])
    assert right > wrong


def test_dropout_is_off_in_rl_so_the_first_ratio_is_one(tiny_tokenizer_dir, tmp_path, batch):
    """A checkpoint with dropout (GPT-2 and many others ship some): old logprobs are taken in
    eval mode, so the update must compute the same numbers or the ratio is not 1 at step 0."""
    from tests.conftest import build_model_dir

    path = build_model_dir(tmp_path / "drop", tiny_tokenizer_dir)
    cfg_path = tmp_path / "drop" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["attention_dropout"] = 0.5
    cfg_path.write_text(json.dumps(cfg))
    w = ModelWorker("policy", path, EngineSettings(lr=1e-6), PPO)
    mb = dict(batch, old_logprobs=w.forward(batch), advantages=batch["response_mask"].clone())
    stats = w.update([mb], [float(batch["response_mask"].sum())])
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and stats["clipfrac"] == 0.0
    assert w.model.config.attention_dropout == 0.0


def _state(w):
    """Weights and AdamW state, copied."""
    weights = {k: v.detach().clone() for k, v in w.model.state_dict().items()}
    opt = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
           for p, st in w.optimizer.state.items()}
    return weights, opt


def _same_state(a, b):
    (wa, oa), (wb, ob) = a, b
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert oa.keys() == ob.keys()
    for p in oa:
        assert oa[p].keys() == ob[p].keys()
        assert all(torch.equal(oa[p][k], ob[p][k]) if torch.is_tensor(oa[p][k]) else oa[p][k] == ob[p][k]
                   for k in oa[p])


def test_a_non_finite_mini_batch_undoes_the_whole_update(tiny_model_dir, batch):
    """All or nothing: mini-batch 1 is fine, mini-batch 2 has a NaN advantage; the update
    puts back the weights and optimizer state it started from, bitwise, and says where."""
    w = ModelWorker("policy", tiny_model_dir, ENG, PPO)
    n = float(batch["response_mask"].sum())
    good = dict(batch, old_logprobs=w.forward(batch), advantages=batch["response_mask"].clone())
    bad = dict(good, advantages=good["advantages"].clone())
    bad["advantages"][0, -1] = float("nan")
    # From a fresh optimizer (no state yet) and from one with state.
    for _ in range(2):
        before = _state(w)
        stats = w.update([good, bad], [n, n])
        assert stats["skipped"] == 1.0 and stats["skipped_at"] == 2.0
        _same_state(_state(w), before)
        assert w.update([good], [n])["skipped"] == 0.0
    # A later rollback (the critic's update of the same iteration failed) undoes a good update too.
    before = _state(w)
    assert w.update([good, good], [n, n])["skipped"] == 0.0
    moved = _state(w)[0]
    assert any(not torch.equal(moved[k], before[0][k]) for k in moved)
    w.rollback()
    _same_state(_state(w), before)
