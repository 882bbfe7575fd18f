"""A small arithmetic task with ground-truth answers in its prompt rows, and a tiny policy for it.

Prompts are ``{"prompt": "What is a + b?", "answer": "<a + b>"}`` for single-digit sums. The
policy is a tiny Llama built by the real loading code, then fine-tuned in-process towards
answering one digit and EOS, the right sum with probability ``correct`` and any other digit
evenly: right more often than chance, never surely, so reinforcement with a ``numeric_match``
reward has something to sharpen.
"""
import json
import os
import random

import torch

PAIRS = [(a, b) for a in range(10) for b in range(10) if a + b <= 9]  # 55 single-digit sums


def question(a: int, b: int) -> str:
    return f"What is {a} + {b}?"


def write_prompts(path: str, pairs, extra: dict | None = None) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for a, b in pairs:
            f.write(json.dumps({"prompt": question(a, b), "answer": str(a + b), **(extra or {})}) + "\n")
    return path


def arith_world(out: str, seed: int = 0, n_eval: int = 15, correct: float = 0.4, sft_steps: int = 250,
                lr: float = 2e-3) -> str:
    """Tokenizer, SFT'd policy (``out/policy``) and prompt files (``out/data/{train,eval}.jsonl``)."""
    from rayrlhf.data.tokenize import render_prompt
    from rayrlhf.models import TinyModelSpec, build_tiny_llama, load_causal_lm, load_tokenizer, train_tiny_tokenizer
    from rayrlhf.models.load import export_hf

    rng = random.Random(seed)
    pairs = list(PAIRS)
    rng.shuffle(pairs)
    os.makedirs(f"{out}/data", exist_ok=True)
    write_prompts(f"{out}/data/train.jsonl", pairs[n_eval:])
    write_prompts(f"{out}/data/eval.jsonl", pairs[:n_eval])
    texts = [question(a, b) + f" The answer is {a + b}." for a, b in PAIRS] * 4
    train_tiny_tokenizer(texts + [str(d) for d in range(10)], vocab_size=300, out_dir=f"{out}/tokenizer")
    tok = load_tokenizer(f"{out}/tokenizer")
    spec = TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    build_tiny_llama(tok, spec, seed=seed, out_dir=f"{out}/base")
    model = load_causal_lm(f"{out}/base")
    # Fine-tuned towards a fixed answer distribution over every pair (RL then trains on the
    # train split only): the right digit with probability ``correct``, each other digit evenly,
    # then EOS after any digit.
    digits = [tok(str(d), add_special_tokens=False).input_ids[0] for d in range(10)]
    prompts = [render_prompt(tok, [{"role": "user", "content": question(a, b)}]) for a, b in PAIRS]
    width = max(len(p) for p in prompts) + 1
    target = torch.full((len(PAIRS), 10), (1 - correct) / 9)
    for i, (a, b) in enumerate(PAIRS):
        target[i, a + b] = correct
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(sft_steps):
        ids = torch.full((len(PAIRS), width), tok.pad_token_id)
        mask = torch.zeros((len(PAIRS), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = torch.tensor(p)
            ids[i, len(p)] = digits[rng.randrange(10)]
            mask[i, :len(p) + 1] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
        at = torch.tensor([len(p) for p in prompts])
        rows = torch.arange(len(PAIRS))
        first = logits[rows, at - 1][:, digits]
        loss = -(target * first).sum(-1).mean() - logits[rows, at, tok.eos_token_id].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    export_hf(model, tok, f"{out}/policy")
    return out


def answer_probabilities(model_dir: str, pairs) -> list[float]:
    """The policy's probability of the right sum's first token, per pair (a quick diagnostic)."""
    from rayrlhf.data.tokenize import render_prompt
    from rayrlhf.models import load_causal_lm, load_tokenizer

    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir)
    out = []
    with torch.no_grad():
        for a, b in pairs:
            ids = torch.tensor([render_prompt(tok, [{"role": "user", "content": question(a, b)}])])
            probs = model(input_ids=ids).logits[0, -1].softmax(-1)
            out.append(float(probs[tok(str(a + b), add_special_tokens=False).input_ids[0]]))
    return out
