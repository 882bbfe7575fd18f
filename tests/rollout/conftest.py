"""Tiny models for the rollout tests, built once per session through the real loading paths.

``policy_dir``: a Llama (hidden 64, 2 heads of 32, 2 layers) trained for a second on a few
sentences, so its next-token distributions are peaked (greedy decoding is not decided by
float noise, as on a random model) and it ends sentences with EOS.
``tied_dir``: a random model with ``tie_word_embeddings=True``.
"""
from __future__ import annotations

import os

import pytest
import torch

from rayrlhf.models import TinyModelSpec, build_tiny_llama, load_causal_lm, load_tokenizer, train_tiny_tokenizer

# The test machine is shared: two OpenMP threads spinning against other processes made a
# tiny training step 100x slower than one thread.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

SENTENCES = [
    "the cat sat on the mat.",
    "a dog ran in the park.",
    "hello world, how are you?",
    "the quick brown fox jumps over the lazy dog.",
    "water boils at one hundred degrees.",
    "paris is the capital of france.",
]
SPEC = TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=128,
                     max_position_embeddings=256)


def vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


requires_vllm = [pytest.mark.vllm, pytest.mark.skipif(not vllm_importable(), reason="vllm is not installed")]


def _train(model, tok, steps: int = 80):
    seqs = [[tok.bos_token_id] + tok(s)["input_ids"] + [tok.eos_token_id] for s in SENTENCES]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tokenizer"))
    train_tiny_tokenizer(SENTENCES * 4, vocab_size=300, out_dir=out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def policy_dir(tmp_path_factory, tokenizer):
    out = str(tmp_path_factory.mktemp("policy"))
    model = build_tiny_llama(tokenizer, SPEC, seed=0)
    assert _train(model, tokenizer) < 0.5
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tied_dir(tmp_path_factory, tokenizer):
    out = str(tmp_path_factory.mktemp("tied"))
    spec = TinyModelSpec(**{**SPEC.__dict__, "tie_word_embeddings": True})
    build_tiny_llama(tokenizer, spec, seed=0, out_dir=out)
    return out


@pytest.fixture(scope="session")
def prompts(tokenizer):
    """Prompts of different lengths (exercises left padding in the HF backend)."""
    texts = ["the cat", "a dog ran in", "hello", "the quick brown fox"]
    return [[tokenizer.bos_token_id] + tokenizer(t)["input_ids"] for t in texts]


def load_model(path):
    model = load_causal_lm(path)
    model.eval()
    return model


@torch.no_grad()
def reference_logprobs(model, prompt, response, temperature=1.0, top_k=-1):
    """``log_softmax(logits / T)`` of each response token from one plain forward pass; with
    top_k, the distribution restricted to the k largest logits, as the samplers draw from."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # (R, V)
    logits = logits / (temperature or 1.0)
    if top_k > 0:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0].tolist()


@torch.no_grad()
def greedy(model, prompt, max_new_tokens, eos_id):
    """Greedy continuation by repeated full forward passes (no cache, no generate)."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(nxt)
        if nxt == eos_id:
            break
    return ids[len(prompt):]


def perturbed_state_dict(model, seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """New weights a trainer might send: every tensor moved by noise, independent copies."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v.detach().clone() + scale * v.detach().std().clamp_min(1e-3) * torch.randn(v.shape, generator=gen)
            for k, v in model.state_dict().items()}


def weights_that_change_greedy(policy_dir, before, eos_id: int, max_new_tokens: int = 20):
    """(trainer model, its state dict): noise on the policy, the first seed (and scale) whose
    greedy continuations of ``before``'s prompts differ from ``before``'s responses; how far
    noise must move a trained model for that varies with the library's initialisation."""
    for seed in range(1, 20):
        trainer = load_model(policy_dir)
        trainer.load_state_dict(perturbed_state_dict(trainer, seed=seed, scale=0.3 * seed))
        if [greedy(trainer, s.prompt_ids, max_new_tokens, eos_id) for s in before] != [s.response_ids for s in before]:
            return trainer, trainer.state_dict()
    raise AssertionError("no perturbation changed the greedy outputs")
