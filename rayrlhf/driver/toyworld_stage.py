"""`rayrlhf toyworld`: write the bundled task's data, a tokenizer and a tiny base model.

The base model is randomly initialised and saved as an ordinary HF folder; every later stage
loads it with ``from_pretrained`` exactly as it would load a real checkpoint.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from rayrlhf.models.tiny import TinyModelSpec
from rayrlhf.utils.fs import atomic_dir, atomic_write_json


@dataclass
class ToyworldConfig:
    """`rayrlhf toyworld`: the synthetic task's data, tokenizer and tiny base model."""

    out: str = "runs/toyworld"
    """Folder to write (data/, tokenizer/, base_model/, manifest.json)."""
    seed: int = 0
    """Seed of the world, the annotators and the model init."""
    n_sft: int = 3000
    """SFT demonstrations (train + eval)."""
    n_pref: int = 4000
    """Preference pairs per type (helpfulness, safety)."""
    n_prompts: int = 1000
    """Training prompts for rejection sampling and PPO."""
    n_eval_prompts: int = 200
    """Held-out prompts, disjoint from the training prompts."""
    eval_fraction: float = 0.1
    """Share of SFT and preference rows written to the *_eval files."""
    n_judge: int = 0
    """Judge demonstrations: this many helpfulness and this many safety pairs (gold-ordered,
    gold ties left out), each in both orders, rendered with the bundled toyworld_helpfulness and
    toyworld_safety judge templates and the answer, in judge_{helpfulness,safety}_sft_{train,eval}.jsonl
    (fine-tune a judge on them with `rayrlhf sft`); 0 writes none."""
    vocab_size: int = 512
    """Size of the byte-level BPE vocabulary trained on the task's text."""
    model: TinyModelSpec = field(default_factory=TinyModelSpec)
    """The tiny base model."""


def _texts(path: str):
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for key in ("messages", "prompt", "chosen", "rejected"):
                value = row.get(key)
                if isinstance(value, list):
                    for m in value:
                        yield m["content"]
                elif isinstance(value, str):
                    yield value


def write_judge_demonstrations(data_dir: str, files: dict[str, str], n: int, seed: int) -> dict[str, str]:
    """judge_{helpfulness,safety}_sft_{train,eval}.jsonl: the first ``n`` pairs of each
    preference set whose gold scores differ, each in both orders, the better by that set's gold
    score as the answer, in the prompt of the bundled toyworld_<set> judge template. A judge so
    trained stands in for a capable LLM that knows the world's rules (its constitution states
    them), as RLAIF's judges are not trained on the labels they replace; ties teach nothing."""
    from rayrlhf.data.formats import read_records
    from rayrlhf.data.schema import PreferenceRecord
    from rayrlhf.feedback.judge_data import judge_sft_rows
    from rayrlhf.feedback.template import load_template

    out = {}
    for kind in ("helpfulness", "safety"):
        template = load_template(f"toyworld_{kind}")
        for split in ("train", "eval"):
            gold_ordered = []
            for r in read_records(files[f"pref_{kind}_{split}"], "preference").records:
                gc, gr = r.meta["gold_chosen"], r.meta["gold_rejected"]
                if gc != gr:
                    better, worse = (r.chosen, r.rejected) if gc > gr else (r.rejected, r.chosen)
                    gold_ordered.append(PreferenceRecord(r.prompt, better, worse))
            rows = judge_sft_rows(template, gold_ordered[: n if split == "train" else max(1, n // 10)], seed)
            path = os.path.join(data_dir, f"judge_{kind}_sft_{split}.jsonl")
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            out[f"judge_{kind}_sft_{split}"] = path
    return out


def run_toyworld(cfg: ToyworldConfig) -> dict:
    from rayrlhf.models import build_tiny_llama, train_tiny_tokenizer
    from rayrlhf.tasks.toyworld import write_toyworld

    out = os.path.abspath(cfg.out)
    with atomic_dir(out) as tmp:
        files = write_toyworld(os.path.join(tmp, "data"), seed=cfg.seed, n_sft=cfg.n_sft, n_pref=cfg.n_pref,
                               n_prompts=cfg.n_prompts, n_eval_prompts=cfg.n_eval_prompts,
                               eval_fraction=cfg.eval_fraction)
        if cfg.n_judge:
            files.update(write_judge_demonstrations(os.path.join(tmp, "data"), files, cfg.n_judge, cfg.seed))
        corpus = [t for key in ("sft_train", "pref_helpfulness_train", "pref_safety_train")
                  for t in _texts(files[key])]
        if cfg.n_judge:  # the template's words, so that a judge's prompt is not spelled out in bytes
            corpus += [t for key in ("judge_helpfulness_sft_train", "judge_safety_sft_train")
                       for i, t in enumerate(_texts(files[key])) if i < 64]
        tok = train_tiny_tokenizer(corpus, vocab_size=cfg.vocab_size, out_dir=os.path.join(tmp, "tokenizer"))
        model = build_tiny_llama(tok, cfg.model, seed=cfg.seed, out_dir=os.path.join(tmp, "base_model"))
        n_params = sum(p.numel() for p in model.parameters())
        info = {"files": {k: os.path.join(out, os.path.relpath(v, tmp)) for k, v in files.items()},
                "tokenizer": os.path.join(out, "tokenizer"), "base_model": os.path.join(out, "base_model"),
                "base_model_parameters": n_params, "vocab_size": len(tok)}
        atomic_write_json(os.path.join(tmp, "toyworld.json"), info)
    print(f"[toyworld] wrote {out}: {len(info['files'])} data files, vocab {len(tok)}, "
          f"base model {n_params / 1e6:.2f}M parameters", flush=True)
    return info
