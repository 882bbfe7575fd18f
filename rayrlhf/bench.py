"""`rayrlhf bench`: throughput ratios measured in one run, printed as JSON.

    rayrlhf bench [--hidden 384 --layers 6] [--steps 6] [--out bench.json]

Everything is built locally (a toyworld with an untrained Llama of about 10M parameters) and
measured against a baseline in the same process tree:
  rollout/vllm_over_hf          vLLM tokens/s / transformers ``generate`` tokens/s
  ppo/async_over_sync           end-to-end samples/s, async (max_staleness 1) / sync
  ppo/sync_share_of_step        weight-sync seconds / step seconds (sync mode)
  ppo/step_over_bound           async step seconds / max(generation, training + sync)
  ppo/balanced/async_over_sync  the same ratio in a setting that shifts time to generation
                                (4 samples per prompt, --balanced-new-tokens responses,
                                max_staleness 2), the median of --repeats runs per mode; its
                                bound is (generation + training) / training, which reaches 2 only
                                when the two take as long (ppo/balanced/generate_over_train says
                                how close a run came: 0.40 on a 2-core CPU at the defaults); with
                                the share of samples by staleness (ppo/balanced/staleness@k)
  rm/kwise_over_pairs           reward-model comparisons/s on ranked lists of 4, each list one
                                example (responses scored once) / every pair its own example
  lora/*_over_full              LoRA (r=8, all linear layers) against full fine-tuning of the PPO
                                policy: step seconds, peak memory an update adds, sync bytes,
                                trainable parameters (rayrlhf.engine.bench_lora)
With ``--memory`` (rayrlhf.engine.bench_memory):
  memory/fsdp2_over_ddp         deepest model whose PPO update fits the per-rank budget under
                                FSDP2 over 2 ranks / the same under DDP
With ``--gpu`` (rayrlhf.engine.bench_gpu): the trainer's tokens/s and MFU on one GPU.
The world and the runs (about 700 MB) go to a temporary folder that is removed at the end,
whether the run succeeded or not; ``--keep DIR`` puts them in DIR and leaves them there.
Warm-up iterations are excluded. Ratios, not absolute times, are what carries across machines.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np


def _rollout_ratio(model_dir: str, prompt_ids, n: int, max_new_tokens: int) -> dict:
    from rayrlhf.rollout.bench import tokens_per_second
    from rayrlhf.rollout.config import RolloutSection
    from rayrlhf.rollout.worker import make_backend, vllm_available

    out = {}
    cfg = dict(max_new_tokens=max_new_tokens, max_model_len=256, temperature=1.0)
    hf = make_backend(model_dir, RolloutSection(backend="hf", **cfg))
    out["rollout/hf_tokens_per_s"] = tokens_per_second(hf, prompt_ids, n=n)
    del hf
    if vllm_available():
        vl = make_backend(model_dir, RolloutSection(backend="vllm", **cfg))
        out["rollout/vllm_tokens_per_s"] = tokens_per_second(vl, prompt_ids, n=n)
        out["rollout/vllm_over_hf"] = out["rollout/vllm_tokens_per_s"] / out["rollout/hf_tokens_per_s"]
        del vl
    return out


def _rm_ranked_ratio(world: str, lists: int = 48, lists_per_batch: int = 8) -> dict:
    """Forward + backward over the same ranked lists' comparisons, K-wise and pair by pair."""
    import time

    from rayrlhf.config import RMConfig, load_config
    from rayrlhf.data.validate import validate_source
    from rayrlhf.trainer.rm import RMTask, encode_pair_records

    source = f"{world}/data/pref_ranked_train.jsonl"
    records = [r for r in validate_source(source, "preference")[0].records if r.source.line <= lists]
    out = {}
    for mode in ("kwise", "pairs"):
        cfg = load_config(RMConfig, data={"model": {"name_or_path": f"{world}/base_model"},
                                          "data": {"train": [source]}, "reward": {"ranked_lists": mode}})
        task = RMTask(cfg)
        model = task.build_model()
        examples, _ = encode_pair_records(records, task.tokenizer, 256, cfg.reward)
        step = len(examples) * lists_per_batch // lists  # the same comparisons per batch in both modes
        batches = [task.collate(examples[i:i + step]) for i in range(0, len(examples), step)]
        task.loss(model, batches[0], float(step))[0].backward()  # warm-up
        t0, pairs = time.perf_counter(), 0.0
        for batch in batches:
            loss, stats = task.loss(model, batch, float(step))
            loss.backward()
            pairs += stats["pairs"]
        out[f"rm/{mode}_comparisons_per_s"] = pairs / (time.perf_counter() - t0)
    out["rm/kwise_over_pairs"] = out["rm/kwise_comparisons_per_s"] / out["rm/pairs_comparisons_per_s"]
    return out


def _ppo_cfg(world: str, run_dir: str, mode: str, steps: int, backend: str, n_samples: int = 2,
             max_new_tokens: int = 32, prompts_per_step: int = 16, max_staleness: int = 1, advantage: str = "gae",
             lora_r: int = 0):
    from rayrlhf.config import load_config
    from rayrlhf.config.ppo import PPOConfig

    return load_config(PPOConfig, data={
        "policy": {"name_or_path": f"{world}/base_model", "lora": {"r": lora_r, "alpha": 2.0 * max(1, lora_r)}},
        "data": {"train": [f"{world}/data/prompts_train.jsonl"], "max_prompt_tokens": 96},
        "rewards": [{"name": "gold", "function": "rayrlhf.tasks.toyworld:gold_reward"}],
        "rollout": {"backend": backend, "n_samples": n_samples, "max_new_tokens": max_new_tokens,
                    "max_model_len": 96 + max_new_tokens},
        "ppo": {"total_steps": steps, "prompts_per_step": prompts_per_step,
                "global_mini_batch_size": prompts_per_step * n_samples, "ppo_epochs": 1,
                "rollout_mode": mode, "max_staleness": max_staleness, "eval_every": 10_000,
                "checkpoint_every": 10_000, "actor_lr": 1e-5, "critic_lr": 1e-5, "advantage": advantage},
        # Generation and training each get one core: the overlap async mode is for.
        "resources": {"trainer": {"cpus_per_worker": 1.0}, "critic": {"cpus_per_worker": 0.01},
                      "reference": {"cpus_per_worker": 0.01, "colocate_with": "trainer"},
                      "rollout": {"cpus_per_worker": 0.9}},
        "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir)},
    })


def _ppo_figures(run_dir: str, warmup: int) -> dict:
    from rayrlhf.metrics import read_metrics

    rows = [r for r in read_metrics(run_dir) if "timing/step" in r][warmup:]
    step = float(np.mean([r["timing/step"] for r in rows]))
    samples = float(np.mean([r["rollout/samples"] for r in rows]))
    gen = float(np.mean([r["timing/generate"] for r in rows]))
    train = float(np.mean([sum(r.get(f"timing/{k}", 0.0) for k in
                                ("reward", "forwards", "advantages", "update", "sync"))
                           for r in rows]))
    sync = float(np.mean([r.get("timing/sync", 0.0) for r in rows]))
    sync_bytes = float(np.mean([r.get("sync/bytes", 0.0) for r in rows]))
    # Share of the measured samples made k versions before the weights they trained.
    counts: dict[int, float] = {}
    for r in rows:
        for key, share in r.items():
            if key.startswith("async/staleness@"):
                k = int(key.split("@", 1)[1])
                counts[k] = counts.get(k, 0.0) + share * r["rollout/samples"]
    total = sum(counts.values()) or 1.0
    return {"step_seconds": step, "samples_per_s": samples / step, "sync_seconds": sync, "sync_bytes": sync_bytes,
            "generate_seconds": gen, "train_plus_sync_seconds": train,
            **{f"staleness@{k}": counts[k] / total for k in sorted(counts)}}


def _balanced_ratio(world: str, tmp: str, backend: str, steps: int, warmup: int, repeats: int,
                    max_new_tokens: int, advantage: str = "gae", prompts_per_step: int = 8) -> dict:
    """async/sync with more of each step in generation (4 samples per prompt, ``max_new_tokens``
    per response, max_staleness 2): the median of ``repeats`` runs per mode, alternating modes so
    that drift in the machine hits both, and how balanced the setting was (generate_over_train)."""
    runs: dict[str, list[dict]] = {"sync": [], "async": []}
    from rayrlhf.driver.ppo_stage import run_ppo

    for i in range(repeats):
        for mode in ("sync", "async"):
            run_dir = os.path.join(tmp, f"balanced_{mode}_{i}")
            run_ppo(_ppo_cfg(world, run_dir, mode, steps + warmup, backend, n_samples=4,
                             max_new_tokens=max_new_tokens, prompts_per_step=prompts_per_step, max_staleness=2,
                             advantage=advantage))
            runs[mode].append(_ppo_figures(run_dir, warmup))
    med = {m: {k: float(np.median([f.get(k, 0.0) for f in fs])) for k in fs[0]} for m, fs in runs.items()}
    out = {f"ppo/balanced/{m}/{k}": v for m, f in med.items() for k, v in f.items()
           if not k.startswith("staleness@")}
    out["ppo/balanced/async_over_sync"] = med["async"]["samples_per_s"] / med["sync"]["samples_per_s"]
    out["ppo/balanced/async_over_sync_runs"] = [a["samples_per_s"] / s["samples_per_s"]
                                                for s, a in zip(runs["sync"], runs["async"])]
    out["ppo/balanced/generate_over_train"] = (med["sync"]["generate_seconds"]
                                               / med["sync"]["train_plus_sync_seconds"])
    keys = sorted({k for f in runs["async"] for k in f if k.startswith("staleness@")})
    out.update({f"ppo/balanced/{k}": float(np.mean([f.get(k, 0.0) for f in runs["async"]])) for k in keys})
    out.update({"ppo/balanced/repeats": repeats, "ppo/balanced/advantage": advantage, "ppo/balanced/backend": backend,
                "ppo/balanced/prompts_per_step": prompts_per_step, "ppo/balanced/max_new_tokens": max_new_tokens})
    return out


PARTS = ("rollout", "rm", "ppo", "balanced", "lora")


def run_bench(hidden: int, layers: int, steps: int, warmup: int = 2, repeats: int = 2,
              balanced_new_tokens: int = 96, balanced_advantage: str = "gae", balanced_prompts: int = 8,
              balanced_backend: str = "auto", parts: tuple[str, ...] = PARTS, keep: str | None = None) -> dict:
    """The figures; the world and the runs go to a temporary folder that is removed at the end
    (success or not), or to ``keep``, which is left in place."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"--only: unknown part(s) {unknown}; parts are {list(PARTS)}")
    if keep:
        os.makedirs(keep, exist_ok=True)
    tmp = keep or tempfile.mkdtemp(prefix="rayrlhf-bench-")
    try:
        return _bench_in(tmp, hidden, layers, steps, warmup, repeats, balanced_new_tokens, balanced_advantage,
                         balanced_prompts, balanced_backend, parts)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _bench_in(tmp: str, hidden: int, layers: int, steps: int, warmup: int, repeats: int, balanced_new_tokens: int,
              balanced_advantage: str, balanced_prompts: int, balanced_backend: str, parts: tuple[str, ...]) -> dict:
    from rayrlhf.data.tokenize import render_prompt
    from rayrlhf.driver.ppo_stage import run_ppo
    from rayrlhf.driver.toyworld_stage import ToyworldConfig, run_toyworld
    from rayrlhf.models.tiny import TinyModelSpec
    from rayrlhf.models import load_tokenizer
    from rayrlhf.rollout.worker import vllm_available
    from rayrlhf.utils.ray_init import ensure_ray

    world = os.path.join(tmp, "world")
    info = run_toyworld(ToyworldConfig(out=world, n_sft=200, n_pref=200, n_prompts=400, n_eval_prompts=10,
                                       model=TinyModelSpec(hidden_size=hidden, num_layers=layers,
                                                              num_heads=max(1, hidden // 64),
                                                              intermediate_size=hidden * 3)))
    out = {"model/parameters": info["base_model_parameters"], "machine/cpus": os.cpu_count()}
    goals = {}
    if "rollout" in parts:
        tok = load_tokenizer(f"{world}/base_model")
        with open(f"{world}/data/prompts_train.jsonl", encoding="utf-8") as f:
            prompts = [json.loads(line)["prompt"] for line in f][:16]
        ids = [render_prompt(tok, p) for p in prompts]
        out.update(_rollout_ratio(f"{world}/base_model", ids, n=4, max_new_tokens=32))
        goals["rollout/vllm_over_hf >= 1.5"] = out.get("rollout/vllm_over_hf", 0.0) >= 1.5
    if "rm" in parts:
        out.update(_rm_ranked_ratio(world))
        goals["rm/kwise_over_pairs >= 2"] = out["rm/kwise_over_pairs"] >= 2
    ensure_ray()
    backend = "vllm" if vllm_available() else "hf"
    if "ppo" in parts:
        figures = {}
        for mode in ("sync", "async"):
            run_dir = os.path.join(tmp, f"ppo_{mode}")
            run_ppo(_ppo_cfg(world, run_dir, mode, steps + warmup, backend))
            figures[mode] = _ppo_figures(run_dir, warmup)
        s, a = figures["sync"], figures["async"]
        out.update({f"ppo/{mode}/{k}": v for mode, f in figures.items() for k, v in f.items()})
        out["ppo/async_over_sync"] = a["samples_per_s"] / s["samples_per_s"]
        out["ppo/sync_share_of_step"] = s["sync_seconds"] / s["step_seconds"]
        bound = max(s["generate_seconds"], s["train_plus_sync_seconds"])
        out["ppo/bound_seconds"] = bound
        out["ppo/step_over_bound"] = a["step_seconds"] / bound
        goals["ppo/async_over_sync >= 1.3"] = out["ppo/async_over_sync"] >= 1.3
        goals["ppo/sync_share_of_step < 0.05"] = out["ppo/sync_share_of_step"] < 0.05
    if "balanced" in parts:
        out.update(_balanced_ratio(world, tmp, backend if balanced_backend == "auto" else balanced_backend, steps,
                                   warmup, repeats, balanced_new_tokens, balanced_advantage, balanced_prompts))
        goals["ppo/balanced/async_over_sync >= 1.6"] = out["ppo/balanced/async_over_sync"] >= 1.6
    if "lora" in parts:
        out.update(_lora_ratio(world, tmp, backend, steps, warmup))
    out["goals"] = goals
    return out


def _lora_ratio(world: str, tmp: str, backend: str, steps: int, warmup: int) -> dict:
    """PPO (sync mode) with LoRA r=8 adapters on the policy and with the whole policy trained,
    in the same world; each mode's update measured in a fresh process (rayrlhf.engine.bench_lora)."""
    from rayrlhf.driver.ppo_stage import run_ppo
    from rayrlhf.engine.bench_lora import lora_ratios, measured_update

    figures = {}
    for name, r in (("full", 0), ("lora", 8)):
        run_dir = os.path.join(tmp, f"lora_{name}")
        run_ppo(_ppo_cfg(world, run_dir, "sync", steps + warmup, backend, lora_r=r))
        figures[name] = {**_ppo_figures(run_dir, warmup), **measured_update(f"{world}/base_model", r)}
    out = {f"lora/{name}/{k}": v for name, f in figures.items() for k, v in f.items() if not k.startswith("staleness@")}
    out.update(lora_ratios(figures["full"], figures["lora"]))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="rayrlhf bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=384, help="model width (head_dim 64)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--steps", type=int, default=6, help="measured PPO iterations per mode")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode of the balanced async "
                        "setting; the median is reported")
    parser.add_argument("--balanced-new-tokens", type=int, default=96, help="response length of the "
                        "balanced setting (longer responses shift time to generation)")
    parser.add_argument("--balanced-advantage", default="gae", choices=["gae", "grpo", "rloo", "reinforce++"],
                        help="advantage estimator of the balanced setting (the critic-free ones train no critic, "
                        "which shifts time to generation)")
    parser.add_argument("--balanced-prompts", type=int, default=8, help="prompts per iteration of the balanced "
                        "setting (4 samples each)")
    parser.add_argument("--balanced-backend", default="auto", choices=["auto", "vllm", "hf"],
                        help="rollout engine of the balanced setting (auto: vLLM when it imports, as elsewhere)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run, of {','.join(PARTS)}")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--keep", default=None, help="put the world and the runs in this folder and keep it "
                        "(by default they go to a temporary folder that is removed at the end)")
    parser.add_argument("--memory", action="store_true", help="instead: the deepest tiny Llama whose PPO "
                        "update fits a per-rank memory budget with ddp and fsdp(2), as a ratio")
    parser.add_argument("--budget-mib", type=int, default=384, help="--memory: memory budget per rank")
    parser.add_argument("--gpu", action="store_true", help="instead: trainer tokens/s and MFU on one GPU, "
                        "Qwen2.5-1.5B-shaped, random weights (rayrlhf.engine.bench_gpu)")
    parser.add_argument("--shape", default="qwen2.5-1.5b", help="--gpu: qwen2.5-1.5b or tiny")
    args = parser.parse_args(argv)
    if args.gpu:
        from rayrlhf.engine.bench_gpu import run as run_gpu

        result = run_gpu(args.shape, steps=args.steps)
    elif args.memory:
        from rayrlhf.engine.bench_memory import run as run_memory

        result = run_memory(budget_mib=args.budget_mib)
    else:
        result = run_bench(args.hidden, args.layers, args.steps, repeats=args.repeats,
                           balanced_new_tokens=args.balanced_new_tokens, balanced_advantage=args.balanced_advantage,
                           balanced_prompts=args.balanced_prompts, balanced_backend=args.balanced_backend,
                           parts=tuple(p.strip() for p in args.only.split(",") if p.strip()), keep=args.keep)
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
