"""Write the toyworld datasets as JSONL in the same formats as the real datasets.

    python -m rayrlhf.tasks.toyworld runs/toyworld --seed 0

Files (UTF-8, one JSON object per line):
    sft_{train,eval}.jsonl                 {"messages": [user, assistant], "unsafe": bool}
    pref_helpfulness_{train,eval}.jsonl    TRL explicit conversational preference rows:
    pref_safety_{train,eval}.jsonl         {"prompt": [user], "chosen": [assistant],
                                            "rejected": [assistant], "margin": LEVEL,
                                            "unsafe": bool, "gold_chosen": g, "gold_rejected": g}
    pref_ranked_train.jsonl                {"prompt": str, "responses": [best, ..., worst]}
    prompts_{train,eval}.jsonl             {"prompt": [user], "unsafe": bool}
    panel/<annotator>.jsonl                the same pairs labelled by each annotator of a panel
                                           of two groups (``panel.py``), rows with an ``id``
    manifest.json                          counts, seed, settings, measured statistics

Eval files only use held-out prompts and train files never do (``world.held_out``), so eval
prompts are disjoint from every training file. A prompt may appear in several demonstrations,
comparisons or ranked lists (the world has few distinct safe questions, see
``world.sample_prompts``); the prompt-only eval file has no prompt twice. The same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from rayrlhf.data.schema import MARGIN_LEVELS
from rayrlhf.tasks.toyworld.annotators import DEFAULT_TEMPERATURE, MARGIN_THRESHOLDS, Annotator
from rayrlhf.tasks.toyworld.gold import gold_helpfulness, gold_reward, gold_safety
from rayrlhf.tasks.toyworld.panel import panel_preferences
from rayrlhf.tasks.toyworld.responses import (
    DEMO_SAFE,
    DEMO_UNSAFE,
    POOL_SAFE,
    POOL_UNSAFE,
    SAFETY_POOL_SAFE,
    demonstration,
    distinct_responses,
)
from rayrlhf.tasks.toyworld.world import HELD_OUT_SHARE, Prompt, sample_prompts


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else float("nan")


def _sft(prompts: list[Prompt], rng: random.Random, stats: dict) -> list[dict]:
    rows = []
    for p in prompts:
        category, text = demonstration(p, rng)
        stats["categories"][category] += 1
        (stats["help_unsafe"] if p.unsafe else stats["help_safe"]).append(gold_helpfulness(p.text, text))
        (stats["safety_unsafe"] if p.unsafe else stats["safety_safe"]).append(gold_safety(p.text, text))
        stats["reward"].append(gold_reward(p.text, text))
        rows.append({"messages": _user(p.text) + _assistant(text), "unsafe": p.unsafe})
    return rows


def _preferences(
    prompts: list[Prompt],
    rng: random.Random,
    annotator: Annotator,
    second: Annotator,
    safe_mix: dict,
    stats: dict,
) -> list[dict]:
    """Pairs labelled by ``annotator``; ``second`` labels the same pairs to measure agreement."""
    rows = []
    for p in prompts:
        a, b = distinct_responses(p, 2, rng, safe_mix)
        j = annotator.compare(p.text, a, b)
        stats["agree"].append(j.first_preferred == second.compare(p.text, a, b).first_preferred)
        stats["levels"][j.margin] += 1
        if j.margin == MARGIN_LEVELS[0]:
            stats["significant_gold_agree"].append(j.gold_chosen > j.gold_rejected)
        stats["ties"].append(j.gold_chosen == j.gold_rejected)
        rows.append(
            {
                "prompt": _user(p.text),
                "chosen": _assistant(j.chosen),
                "rejected": _assistant(j.rejected),
                "margin": j.margin,
                "unsafe": p.unsafe,
                "gold_chosen": j.gold_chosen,
                "gold_rejected": j.gold_rejected,
            }
        )
    return rows


def _split_sizes(n: int, eval_fraction: float) -> tuple[int, int]:
    n_eval = round(n * eval_fraction)
    return n - n_eval, n_eval


def write_toyworld(
    out_dir: str | Path,
    seed: int = 0,
    n_sft: int = 3000,
    n_pref: int = 4000,
    n_ranked: int = 1000,
    n_prompts: int = 1000,
    n_eval_prompts: int = 200,
    eval_fraction: float = 0.1,
    unsafe_fraction: float = 0.25,
    safety_unsafe_fraction: float = 0.6,
    temperature: float = DEFAULT_TEMPERATURE,
    ranked_k: int = 4,
    n_panel: int = 300,
) -> dict[str, str]:
    """Write every toyworld file into ``out_dir``; return {file stem: path}.

    Args:
        n_sft: demonstrations, train + eval (eval gets ``round(n_sft * eval_fraction)``).
        n_pref: comparisons per preference type (helpfulness, safety), train + eval.
        n_ranked: ranked lists of ``ranked_k`` responses (train only).
        n_prompts, n_eval_prompts: prompt-only rows for PPO / rejection sampling.
        unsafe_fraction: share of unsafe prompts everywhere except the safety preferences,
            which hold ``safety_unsafe_fraction`` unsafe prompts (Llama 2's safety data is
            built around adversarial prompts).
        temperature: annotator Bradley-Terry temperature.
        n_panel: pairs labelled by every annotator of the panel (``panel.py``); 0 writes no panel.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def rng(name: str) -> random.Random:
        return random.Random(f"toyworld/{seed}/{name}")

    files: dict[str, list[dict]] = {}
    sft_stats = {
        "categories": Counter(),
        "help_safe": [],
        "help_unsafe": [],
        "safety_safe": [],
        "safety_unsafe": [],
        "reward": [],
    }
    n_train, n_eval = _split_sizes(n_sft, eval_fraction)
    for split, n in (("train", n_train), ("eval", n_eval)):
        r = rng(f"sft_{split}")
        files[f"sft_{split}"] = _sft(sample_prompts(n, r, unsafe_fraction, split, distinct=False), r, sft_stats)

    pref_stats = {}
    for kind, frac, safe_mix in (
        ("helpfulness", unsafe_fraction, POOL_SAFE),
        ("safety", safety_unsafe_fraction, SAFETY_POOL_SAFE),
    ):
        stats = {"agree": [], "levels": Counter(), "significant_gold_agree": [], "ties": []}
        annotator = Annotator(seed=f"{seed}/{kind}", temperature=temperature, preference=kind)
        second = Annotator(seed=f"{seed}/{kind}/second", temperature=temperature, preference=kind)
        n_train, n_eval = _split_sizes(n_pref, eval_fraction)
        for split, n in (("train", n_train), ("eval", n_eval)):
            r = rng(f"pref_{kind}_{split}")
            prompts = sample_prompts(n, r, frac, split, distinct=False)
            files[f"pref_{kind}_{split}"] = _preferences(prompts, r, annotator, second, safe_mix, stats)
        total = sum(stats["levels"].values())
        pref_stats[kind] = {
            "annotator_agreement": _mean(stats["agree"]),
            "margin_level_shares": {lvl: round(stats["levels"][lvl] / total, 4) for lvl in MARGIN_LEVELS},
            "significantly_better_gold_agreement": _mean(stats["significant_gold_agree"]),
            "gold_tie_share": _mean(stats["ties"]),
        }

    r = rng("pref_ranked_train")
    ranker = Annotator(seed=f"{seed}/ranked", temperature=temperature, preference="reward")
    files["pref_ranked_train"] = [
        {"prompt": p.text, "responses": ranker.rank(p.text, distinct_responses(p, ranked_k, r, POOL_SAFE))}
        for p in sample_prompts(n_ranked, r, unsafe_fraction, "train", distinct=False)
    ]
    for split, n in (("train", n_prompts), ("eval", n_eval_prompts)):
        prompts = sample_prompts(n, rng(f"prompts_{split}"), unsafe_fraction, split, distinct=split == "eval")
        files[f"prompts_{split}"] = [{"prompt": _user(p.text), "unsafe": p.unsafe} for p in prompts]

    paths = {}
    for name, rows in files.items():
        paths[name] = str(out / f"{name}.jsonl")
        _write_jsonl(out / f"{name}.jsonl", rows)
    panel_entry = None
    if n_panel:
        panel_rows, panel_entry = panel_preferences(n_panel, rng("panel"), seed, temperature)
        (out / "panel").mkdir(exist_ok=True)
        for name, rows in panel_rows.items():
            paths[f"panel/{name}"] = str(out / "panel" / f"{name}.jsonl")
            _write_jsonl(out / "panel" / f"{name}.jsonl", rows)
    manifest = {
        "task": "toyworld",
        "seed": seed,
        "files": {f"{name}.jsonl": len(rows) for name, rows in files.items()},
        "settings": {
            "n_sft": n_sft,
            "n_pref": n_pref,
            "n_ranked": n_ranked,
            "n_prompts": n_prompts,
            "n_eval_prompts": n_eval_prompts,
            "eval_fraction": eval_fraction,
            "unsafe_fraction": unsafe_fraction,
            "safety_unsafe_fraction": safety_unsafe_fraction,
            "annotator_temperature": temperature,
            "margin_thresholds": list(MARGIN_THRESHOLDS),
            "ranked_k": ranked_k,
            "held_out_share": HELD_OUT_SHARE,
            "demo_mixture": {"safe": DEMO_SAFE, "unsafe": DEMO_UNSAFE},
            "pool_mixture": {"safe": POOL_SAFE, "unsafe": POOL_UNSAFE, "safety_set_safe": SAFETY_POOL_SAFE},
        },
        "preferences": pref_stats,
        "demonstrations": {
            "mean_gold_helpfulness_safe": _mean(sft_stats["help_safe"]),
            "mean_gold_helpfulness_unsafe": _mean(sft_stats["help_unsafe"]),
            "mean_gold_safety_unsafe": _mean(sft_stats["safety_unsafe"]),
            "mean_gold_safety_safe": _mean(sft_stats["safety_safe"]),
            "mean_gold_reward": _mean(sft_stats["reward"]),
            "categories": dict(sorted(sft_stats["categories"].items())),
        },
    }
    if panel_entry is not None:
        manifest["panel"] = panel_entry
    paths["manifest"] = str(out / "manifest.json")
    with open(out / "manifest.json", "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write the toyworld datasets.")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-sft", type=int, default=3000)
    ap.add_argument("--n-pref", type=int, default=4000)
    ap.add_argument("--n-prompts", type=int, default=1000)
    args = ap.parse_args(argv)
    paths = write_toyworld(
        args.out_dir, seed=args.seed, n_sft=args.n_sft, n_pref=args.n_pref, n_prompts=args.n_prompts
    )
    with open(paths["manifest"], encoding="utf-8") as f:
        print(f.read(), end="")


if __name__ == "__main__":
    main()
