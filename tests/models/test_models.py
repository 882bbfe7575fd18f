import json
import os

import pytest
import torch

from rayrlhf.models import (
    TinyModelSpec,
    build_tiny_llama,
    export_hf,
    load_causal_lm,
    load_scalar_model,
    load_tokenizer,
)
from rayrlhf.models.tokenizer import DEFAULT_CHAT_TEMPLATE
from tests.conftest import build_model_dir, vllm_available

PROMPT = [{"role": "user", "content": "Where is the red key?"}]


def _prompt_ids(tok):
    return tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False)


def test_tiny_spec_refuses_heads_vllm_cpu_cannot_serve(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    with pytest.raises(ValueError, match="head_dim 16 < 32"):
        build_tiny_llama(tok, TinyModelSpec(hidden_size=64, num_heads=4, num_kv_heads=4))


def test_tokenizer_chat_template_and_special_tokens(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    ids = _prompt_ids(tok)
    assert tok.decode(ids) == "<|bos|><|user|>Where is the red key?<|end|><|assistant|>"
    assert ids[0] == tok.bos_token_id and tok.pad_token_id != tok.eos_token_id


def test_tokenizer_without_template_gets_the_transcript_default(tiny_tokenizer_dir, tmp_path):
    tok = load_tokenizer(tiny_tokenizer_dir)
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    for f in tmp_path.glob("chat_template*"):
        f.unlink()
    again = load_tokenizer(str(tmp_path))
    assert again.chat_template == DEFAULT_CHAT_TEMPLATE
    text = again.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert text == "\n\nHuman: Where is the red key?\n\nAssistant:"


@pytest.mark.parametrize("tie", [False, True])
def test_export_is_a_plain_hf_folder(tiny_tokenizer_dir, tmp_path, tie):
    src = build_model_dir(tmp_path / "src", tiny_tokenizer_dir, seed=3, tie=tie)
    model, tok = load_causal_lm(src), load_tokenizer(src)
    out = export_hf(model, tok, str(tmp_path / "export"), extra={"stage": "sft"})
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "rayrlhf.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert json.load(open(os.path.join(out, "rayrlhf.json")))["stage"] == "sft"
    again = load_causal_lm(out)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    ids = torch.tensor([_prompt_ids(tok)])
    g1 = model.generate(ids, max_new_tokens=6, do_sample=False)
    g2 = again.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(g1, g2)


def test_scalar_model_from_causal_checkpoint_reads_last_real_token(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    rm = load_scalar_model(tiny_model_dir, pad_token_id=tok.pad_token_id).eval()
    ids = _prompt_ids(tok)
    alone = rm(torch.tensor([ids])).logits
    padded = rm(torch.tensor([ids + [tok.pad_token_id] * 3]), attention_mask=torch.tensor([[1] * len(ids) + [0] * 3])).logits
    assert alone.shape == (1, 1)
    assert torch.allclose(alone, padded, atol=1e-5)


@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")
def test_export_loads_in_vllm_and_matches_transformers_greedy(tiny_tokenizer_dir, tmp_path):
    """Tied embeddings are the known trap: save_pretrained omits lm_head.weight."""
    from vllm import LLM, SamplingParams

    out = build_model_dir(tmp_path / "tied", tiny_tokenizer_dir, seed=5, tie=True)
    exported = export_hf(load_causal_lm(out), load_tokenizer(out), str(tmp_path / "export"))
    tok = load_tokenizer(exported)
    ids = _prompt_ids(tok)
    hf = load_causal_lm(exported).generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None)
    llm = LLM(model=exported, dtype="float32", enforce_eager=True, max_model_len=128, seed=0)
    res = llm.generate([{"prompt_token_ids": ids}], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True),
                       use_tqdm=False)
    assert list(res[0].outputs[0].token_ids) == hf[0, len(ids):].tolist()
