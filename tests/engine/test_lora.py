"""LoRA adapters through the engine on CPU: only adapters train, checkpoints hold only them,
rollout workers and exports get merged weights, the reference comes from the base weights."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from rayrlhf.actors.batch import select_rows, split_rows
from rayrlhf.actors.model_worker import ModelWorker
from rayrlhf.config.schema import LoraSection
from rayrlhf.engine import EngineSettings
from rayrlhf.engine.settings import CriticLoss, PolicyLoss
from rayrlhf.models import load_causal_lm, load_tokenizer
from tests.engine.ranks import free_port, run_ranks
from tests.engine.test_engine import B, _close, _global, make_batch

pytest.importorskip("peft")

LORA = LoraSection(r=4, alpha=8.0)


def _worker(kind, model_dir, rank=0, world=1, port=0, strategy="ddp", lora=LORA):
    settings = EngineSettings(role=kind, lr=1e-2, strategy=strategy, micro_batch_size=8, lora=lora)
    loss = PolicyLoss(clip_eps=0.2) if kind == "policy" else CriticLoss(value_clip=0.2)
    w = ModelWorker(kind, model_dir, settings, loss, rank=rank, world=world, seed=0)
    if world > 1:
        w.setup_group("127.0.0.1", port)
    return w


def _step(w, batch, rows, n_tok):
    part = select_rows(batch, rows)
    part["old_logprobs" if w.kind == "policy" else "values"] = w.forward(part)
    return w.update([part], [n_tok])["loss"]


def _train(rank, world, port, model_dir, strategy, steps, save_dir=None, load_dir=None, lora=LORA):
    w = _worker("policy", model_dir, rank, world, port, strategy, lora)
    if load_dir:
        w.load(load_dir)
    batch = make_batch(model_dir)
    rows, n_tok = split_rows(B, world)[rank], float(batch["response_mask"].sum())
    losses = []
    for step in range(steps):
        losses.append(_step(w, batch, rows, n_tok))
        if save_dir and step == 0:
            w.save(save_dir)
    return {"losses": losses, "weights": w.named_weights()}


def test_only_adapters_train_and_the_base_never_changes(tiny_model_dir):
    w = _worker("policy", tiny_model_dir)
    full = load_causal_lm(tiny_model_dir)
    base = {k: v.clone() for k, v in full.state_dict().items()}
    # Before any step B = 0: the merged weights are the base weights, exactly.
    start = w.named_weights()
    assert start.keys() == base.keys()
    assert all(torch.equal(start[k], base[k]) for k in start)
    trainable = sum(p.numel() for p in w.model.parameters() if p.requires_grad)
    # Rank 4 on every linear layer of 2 layers: 4 x (in + out) per layer (q,k,v,o: 64+64; gate,
    # up: 64+128; down: 128+64).
    assert trainable == 2 * 4 * (4 * 128 + 3 * 192)
    assert all(p.dtype == torch.float32 for p in w.model.parameters() if p.requires_grad)
    batch = make_batch(tiny_model_dir)
    for _ in range(3):
        _step(w, batch, list(range(B)), float(batch["response_mask"].sum()))
    opt_numel = sum(t.numel() for st in w.optimizer.state.values() for k, t in st.items() if k != "step")
    assert opt_numel == 2 * trainable  # AdamW's two moments, of the adapters only
    frozen = {n: p for n, p in w.model.named_parameters() if not p.requires_grad}
    assert all(torch.equal(p, base[n.replace("base_layer.", "")]) for n, p in frozen.items())
    after = w.named_weights()
    moved = max(float((after[k] - start[k]).abs().max()) for k in after)
    assert moved > 1e-4  # the merged weights carry the adapters' update
    # The merge is W + (alpha / r) B A, checked by hand for one layer.
    layer = w.model.model.layers[0].self_attn.q_proj
    hand = layer.base_layer.weight + 2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert torch.allclose(after["model.layers.0.self_attn.q_proj.weight"], hand, atol=1e-6)


def test_scalar_head_trains_whole_beside_the_adapters(tiny_model_dir):
    w = _worker("critic", tiny_model_dir)
    train = {n for n, p in w.model.named_parameters() if p.requires_grad}
    assert {"score.weight"} <= train and all(".lora_" in n or n.startswith("score.") for n in train)
    assert not any(n.startswith("score.") and ".lora_" in n for n in train)


def test_reference_from_disabled_adapters_equals_a_reference_worker(tiny_model_dir):
    w = _worker("policy", tiny_model_dir)
    batch = make_batch(tiny_model_dir)
    for _ in range(2):
        _step(w, batch, list(range(B)), float(batch["response_mask"].sum()))
    ref = ModelWorker("reference", tiny_model_dir, EngineSettings(role="reference"), seed=0)
    expected = ref.forward(batch)
    got = w.reference_forward(batch)
    assert torch.equal(got, expected)
    assert not torch.equal(w.forward(batch), expected)  # with adapters on, the policy has moved


def test_fsdp_lora_over_two_ranks_equals_one_worker(tiny_model_dir, tmp_path):
    one = run_ranks(1, _train, 0, tiny_model_dir, "ddp", 3, tmp_dir=str(tmp_path / "one"))
    two = run_ranks(2, _train, free_port(), tiny_model_dir, "fsdp", 3, tmp_dir=str(tmp_path / "two"), init=False)
    assert _global(two) == pytest.approx(_global(one), abs=1e-5)
    _close(two[0]["weights"], one[0]["weights"], atol=1e-5)


def test_checkpoint_holds_only_adapters_and_resumes_exactly(tiny_model_dir, tmp_path):
    lora_dir, full_dir = str(tmp_path / "lora"), str(tmp_path / "full")
    straight = run_ranks(1, _train, 0, tiny_model_dir, "ddp", 3, lora_dir, tmp_dir=str(tmp_path / "a"))
    run_ranks(1, _train, 0, tiny_model_dir, "ddp", 1, full_dir, None, LoraSection(), tmp_dir=str(tmp_path / "f"))
    saved = load_file(os.path.join(lora_dir, "policy.safetensors"))
    assert saved and all(".lora_" in k for k in saved)

    def size(d):
        return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))

    ratio = size(full_dir) / size(lora_dir)
    print(f"checkpoint: full {size(full_dir)} bytes, LoRA r=4 {size(lora_dir)} bytes: {ratio:.1f}x smaller")
    assert ratio >= 10
    resumed = run_ranks(1, _train, 0, tiny_model_dir, "ddp", 2, None, lora_dir, tmp_dir=str(tmp_path / "b"))
    a, b = straight[0]["weights"], resumed[0]["weights"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_export_is_merged_and_carries_the_adapter_in_peft_format(tiny_model_dir, tmp_path):
    from peft import PeftModel

    w = _worker("policy", tiny_model_dir)
    batch = make_batch(tiny_model_dir)
    for _ in range(2):
        _step(w, batch, list(range(B)), float(batch["response_mask"].sum()))
    out = str(tmp_path / "export")
    w.export(out, {"stage": "test"})
    merged = load_causal_lm(out)
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    _close({k: v for k, v in merged.state_dict().items() if k in w.named_weights()}, w.named_weights(), atol=0)
    tok = load_tokenizer(out)
    ids = torch.tensor([tok("Where is the red key?").input_ids])
    with torch.no_grad():
        trainer_logits = w.model(input_ids=ids).logits
        assert torch.allclose(merged(input_ids=ids).logits, trainer_logits, atol=1e-5)
        assert torch.equal(merged.generate(ids, max_new_tokens=8, do_sample=False),
                           w.model.generate(ids, max_new_tokens=8, do_sample=False))
        config = json.load(open(os.path.join(out, "adapter", "adapter_config.json")))
        assert config["r"] == 4 and config["peft_type"] == "LORA"
        peft_model = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), os.path.join(out, "adapter"))
        assert torch.allclose(peft_model(input_ids=ids).logits, trainer_logits, atol=1e-5)
