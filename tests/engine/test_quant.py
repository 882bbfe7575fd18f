"""Quantised frozen base weights (bitsandbytes 8-bit and 4-bit NF4) on CPU: LoRA trains on
them, the reference is the quantised base, rollout workers get dequantised merged weights, the
memory model's byte counts are bitsandbytes' own, and configs that cannot run are refused."""
import math

import pytest
import torch

from rayrlhf.actors.batch import select_rows
from rayrlhf.actors.model_worker import ModelWorker
from rayrlhf.config.schema import LoraSection, ModelSection
from rayrlhf.engine import EngineSettings
from rayrlhf.engine.memory_model import quantized_linear_bytes
from rayrlhf.engine.settings import CriticLoss, PolicyLoss
from rayrlhf.models import load_causal_lm
from tests.engine.test_engine import B, make_batch

pytest.importorskip("peft")
bnb = pytest.importorskip("bitsandbytes")

LORA = LoraSection(r=4, alpha=8.0)


def _worker(kind, model_dir, quantization, lora=LORA):
    settings = EngineSettings(role=kind, lr=1e-2, micro_batch_size=8, lora=lora, quantization=quantization)
    loss = {"policy": PolicyLoss(clip_eps=0.2), "critic": CriticLoss(value_clip=0.2)}.get(kind)
    return ModelWorker(kind, model_dir, settings, loss, seed=0)


def _step(w, batch):
    part = select_rows(batch, list(range(B)))
    part["old_logprobs" if w.kind == "policy" else "values"] = w.forward(part)
    return w.update([part], [float(batch["response_mask"].sum())])["loss"]


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_lora_trains_on_a_quantized_base_and_syncs_dequantized_weights(tiny_model_dir, mode):
    w = _worker("policy", tiny_model_dir, mode)
    kinds = {type(m).__name__ for m in w.model.modules()}
    assert {"Linear8bitLt"} <= kinds if mode == "8bit" else {"Linear4bit"} <= kinds
    train = {n for n, p in w.model.named_parameters() if p.requires_grad}
    assert train and all(".lora_" in n for n in train)
    # B = 0 at the start: the synced weights are the dequantised base, in the plain names.
    plain = load_causal_lm(tiny_model_dir).state_dict()
    start = w.named_weights()
    assert start.keys() == plain.keys()
    q = start["model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == plain["model.layers.0.self_attn.q_proj.weight"].shape and q.dtype == torch.float32
    # NF4 keeps about 3 significant bits, int8 rows about 7: the values are the base's, roughly.
    rel = (q - plain["model.layers.0.self_attn.q_proj.weight"]).norm() / plain["model.layers.0.self_attn.q_proj.weight"].norm()
    assert rel < (0.02 if mode == "8bit" else 0.15), float(rel)
    batch = make_batch(tiny_model_dir)
    losses = [_step(w, batch) for _ in range(3)]
    assert all(math.isfinite(x) for x in losses)
    after = w.named_weights()
    assert not torch.equal(after["model.layers.0.self_attn.q_proj.weight"], q)  # the adapters moved
    assert torch.equal(after["model.embed_tokens.weight"], start["model.embed_tokens.weight"])


def test_reference_from_disabled_adapters_is_the_quantized_base(tiny_model_dir):
    w = _worker("policy", tiny_model_dir, "4bit")
    batch = make_batch(tiny_model_dir)
    before = w.reference_forward(batch)
    for _ in range(2):
        _step(w, batch)
    assert torch.equal(w.reference_forward(batch), before)
    assert not torch.equal(w.forward(batch), before)


def test_frozen_reference_and_critic_on_a_quantized_base(tiny_model_dir):
    ref = _worker("reference", tiny_model_dir, "8bit", lora=LoraSection())
    assert any(type(m).__name__ == "Linear8bitLt" for m in ref.model.modules())
    full = _worker("reference", tiny_model_dir, "none", lora=LoraSection())
    batch = make_batch(tiny_model_dir)
    got, expected = ref.forward(batch), full.forward(batch)
    assert got.shape == expected.shape and (got - expected).abs().max() < 0.1
    critic = _worker("critic", tiny_model_dir, "4bit")
    assert math.isfinite(_step(critic, batch))


def test_a_missing_bitsandbytes_is_said_before_start_naming_the_key(monkeypatch):
    import importlib.util

    from rayrlhf.config.loader import check_quantization
    from rayrlhf.config.schema import SFTConfig

    cfg = SFTConfig(model=ModelSection(name_or_path="m", quantization="4bit", lora=LoraSection(r=8)))
    assert check_quantization(cfg) == []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    assert check_quantization(cfg) == ['model.quantization: 4bit needs bitsandbytes, which is not installed: '
                                       'pip install -e ".[quant]"']


def test_a_trained_quantized_model_without_lora_is_refused():
    problems = ModelSection(name_or_path="m", quantization="4bit").validate()
    assert any(p.startswith("quantization: 4bit base weights cannot be fine-tuned whole") for p in problems)
    problems = ModelSection(name_or_path="m", quantization="8bit", strategy="fsdp",
                            lora=LoraSection(r=8)).validate()
    assert problems == ["quantization: 8bit needs strategy: ddp (FSDP2 does not shard bitsandbytes weights; "
                        "a quantised base is small enough to replicate)"]
    assert ModelSection(name_or_path="m", quantization="4bit", lora=LoraSection(r=8)).validate() == []


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_quantized_bytes_are_what_bitsandbytes_holds(mode):
    from rayrlhf.engine.quant import quantize_linears

    lin = torch.nn.Sequential(torch.nn.Linear(256, 384, bias=False))
    quantize_linears(lin, mode, "float32", torch.device("cpu"))
    w = lin[0].weight
    if mode == "8bit":
        held = w.numel() * w.element_size() + w.SCB.numel() * w.SCB.element_size()
    else:
        s = w.quant_state
        tensors = [w.data, s.absmax, s.code, s.state2.absmax, s.state2.code, s.offset.reshape(1)]
        held = sum(t.numel() * t.element_size() for t in tensors)
    # 256 x 384 = 98,304 weights. 8-bit: 1 byte each + a float32 scale per output row (384).
    # 4-bit: half a byte each + 1,536 blocks of 64 with a uint8 absmax each, a float32 absmax
    # per 256 of those (6), the 256-entry float32 code of that second level, its offset, and
    # the 16 NF4 levels: 49,152 + 1,536 + 24 + 1,024 + 4 + 64.
    expected = {"8bit": 98_304 + 4 * 384, "4bit": 49_152 + 1_536 + 24 + 1_024 + 4 + 64}[mode]
    assert held == expected == quantized_linear_bytes(256, 384, mode)


def test_export_of_a_qlora_policy_is_a_plain_dequantized_folder(tiny_model_dir, tmp_path):
    import json
    import os

    w = _worker("policy", tiny_model_dir, "4bit")
    batch = make_batch(tiny_model_dir)
    for _ in range(2):
        _step(w, batch)
    out = str(tmp_path / "export")
    w.export(out, {"stage": "test"})
    assert "quantization_config" not in json.load(open(os.path.join(out, "config.json")))
    merged = load_causal_lm(out)
    names = merged.state_dict().keys()
    assert not any("lora" in k or "base_layer" in k or "absmax" in k or "quant" in k for k in names)
    synced = w.named_weights()
    assert all(torch.equal(merged.state_dict()[k], synced[k]) for k in synced)
    # The export computes what the trainer computes, up to the trainer's 4-bit matmul and its
    # float32 norms: same greedy text.
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        assert torch.equal(merged.generate(ids, max_new_tokens=8, do_sample=False),
                           w.model.generate(ids, max_new_tokens=8, do_sample=False))


def _train_ranks(rank, world, port, model_dir, steps):
    """``steps`` updates of a 4-bit QLoRA policy on this rank's rows (ddp over gloo)."""
    from rayrlhf.actors.batch import split_rows

    settings = EngineSettings(role="policy", lr=1e-2, micro_batch_size=8, lora=LORA, quantization="4bit")
    w = ModelWorker("policy", model_dir, settings, PolicyLoss(clip_eps=0.2), rank=rank, world=world, seed=0)
    if world > 1:
        w.setup_group("127.0.0.1", port)
    batch = make_batch(model_dir)
    part = select_rows(batch, split_rows(B, world)[rank])
    part["old_logprobs"] = w.forward(part)
    n_tok = float(batch["response_mask"].sum())
    losses = [w.update([part], [n_tok])["loss"] for _ in range(steps)]
    return {"losses": losses, "weights": w.named_weights()}


def test_qlora_under_ddp_over_two_ranks_equals_one_worker(tiny_model_dir, tmp_path):
    from tests.engine.ranks import free_port, run_ranks
    from tests.engine.test_engine import _close, _global

    one = run_ranks(1, _train_ranks, 0, tiny_model_dir, 2, tmp_dir=str(tmp_path / "one"))
    two = run_ranks(2, _train_ranks, free_port(), tiny_model_dir, 2, tmp_dir=str(tmp_path / "two"), init=False)
    assert _global(two) == pytest.approx(_global(one), abs=1e-5)
    _close(two[0]["weights"], one[0]["weights"], atol=1e-5)


def test_a_quantized_reward_model_scores_close_to_the_full_one(tiny_model_dir, tmp_path):
    from rayrlhf.actors.reward import RewardModelWorker
    from rayrlhf.models import export_hf, load_scalar_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    out = export_hf(load_scalar_model(tiny_model_dir, pad_token_id=tok.pad_token_id), tok, str(tmp_path / "rm"))
    prompts = [[{"role": "user", "content": "Where is the red key?"}]] * 2
    responses = ["In the kitchen.", "I do not know."]
    scores = {mode: torch.tensor(RewardModelWorker("helpfulness", out, normalize=False, quantization=mode)
                                 .score(prompts, responses)) for mode in ("none", "8bit", "4bit")}
    assert (scores["8bit"] - scores["none"]).abs().max() < 0.05
    assert (scores["4bit"] - scores["none"]).abs().max() < 0.5
