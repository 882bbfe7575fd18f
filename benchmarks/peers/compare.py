"""rayrlhf against TRL on the same work, alternated in one run; JSON, a table and a plot.

    python benchmarks/peers/compare.py --trl-python PEERS/trl112/bin/python \
        --trl-grpo-python PEERS/trl116/bin/python --out benchmarks/peers/results

Run by run.sh, in rayrlhf's virtualenv. PPO settings (small, large) run against TRL 1.12's PPO
(the last release with it), the GRPO setting against TRL 1.16's GRPOTrainer. Both sides load
the same tiny Llama folder (a toyworld base model built here), take the same prompts (token ids;
TRL's GRPO takes text, decoded from them), samples per prompt, response length, epochs and
mini-batches, the same rule reward (reward.py), learning rate and KL coefficient, and the same
cores. Each side runs as its own process tree; the tree's PSS is sampled every 5 s (the peak
is reported) and start-up is the time from launch until its first step ended. Medians are over
the measured steps (after --warmup) of each run, then over runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

SETTINGS = {
    "small": dict(algo="ppo", prompts_per_step=8, n_samples=1, max_new_tokens=32, ppo_epochs=4, mini_batch_size=8),
    "large": dict(algo="ppo", prompts_per_step=16, n_samples=2, max_new_tokens=32, ppo_epochs=4, mini_batch_size=16),
    # GRPO as TRL runs it by default: one pass over each generation (num_iterations 1), one
    # optimizer step per iteration, the KL to the reference as a k3 loss term.
    "grpo": dict(algo="grpo", prompts_per_step=8, n_samples=4, max_new_tokens=32, ppo_epochs=1, mini_batch_size=32),
}
TRL = {"ppo": ("trl_ppo.py", "TRL 1.12"), "grpo": ("trl_grpo.py", "TRL 1.16")}


def tree_pss_kib(root: int) -> int:
    """PSS of ``root`` and every descendant, from /proc (KiB)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


PSS_EVERY = 5.0
"""Seconds between PSS samples. Reading smaps_rollup walks each process's page tables: for
rayrlhf's ~20 processes (vLLM's maps ~11 GB) one sample costs ~0.15 s of CPU, so sampling each
0.2 s took most of a core from the side measured, and each second still 14% of one. Memory is
flat after the first step, so a 5 s period finds the same peak; each run reports what the
sampling cost it (``sampler_cpu_share``, of one core)."""


def run_measured(cmd: list[str], env: dict, log: str, first_step) -> dict:
    """Run ``cmd``; sample its tree's PSS every PSS_EVERY s; note when ``first_step()`` first
    holds (checked every 0.1 s, a cheap file read)."""
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
        peak, first, sampled, pss_cpu = 0, None, -PSS_EVERY, 0.0
        while proc.poll() is None:
            now = time.perf_counter()
            if now - sampled >= PSS_EVERY:
                c0 = time.process_time()
                peak = max(peak, tree_pss_kib(proc.pid))
                pss_cpu += time.process_time() - c0
                sampled = now
            if first is None and first_step():
                first = time.perf_counter() - t0
            time.sleep(0.1)  # the polling period, not a wait for a condition
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} exited {proc.returncode}; its output is in {log}")
    wall = time.perf_counter() - t0
    return {"wall_seconds": wall, "peak_pss_mib": peak / 1024, "first_step_seconds": first,
            "sampler_cpu_share": pss_cpu / wall}


def rayrlhf_side(world: str, setting: dict, steps: int, lr: float, kl: float, run_dir: str, log: str) -> dict:
    """``rayrlhf ppo`` with its defaults (async rollouts, vLLM where it imports) and the shared
    settings, laid out as `rayrlhf bench` lays out 2 cores."""
    import yaml

    cfg = {
        "policy": {"name_or_path": f"{world}/base_model"},
        "data": {"train": [f"{world}/data/prompts_train.jsonl"], "max_prompt_tokens": 96},
        "rewards": [{"name": "rule", "function": "benchmarks.peers.reward:reward"}],
        "rollout": {"n_samples": setting["n_samples"], "max_new_tokens": setting["max_new_tokens"],
                    "max_model_len": 96 + setting["max_new_tokens"], "temperature": 1.0},
        "ppo": {"total_steps": steps, "prompts_per_step": setting["prompts_per_step"],
                "global_mini_batch_size": setting["mini_batch_size"], "ppo_epochs": setting["ppo_epochs"],
                "actor_lr": lr, "critic_lr": lr, "kl_coef": kl, "eval_every": 10_000, "checkpoint_every": 10_000,
                **({"advantage": "grpo", "kl_in": "loss"} if setting["algo"] == "grpo" else {})},
        # The layout rayrlhf bench uses on a 2-core machine: the trainer one core, generation the
        # other; critic and reference ride along with the trainer.
        "resources": {"trainer": {"cpus_per_worker": 1.0}, "critic": {"cpus_per_worker": 0.01},
                      "reference": {"cpus_per_worker": 0.01, "colocate_with": "trainer"},
                      "rollout": {"cpus_per_worker": 0.9}},
        "run": {"output_dir": os.path.dirname(run_dir), "name": os.path.basename(run_dir)},
    }
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    path = run_dir + ".yaml"
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f)
    # A local cluster of its own (no RAY_ADDRESS); the rule reward imports from the repository.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = ROOT
    metrics = os.path.join(run_dir, "metrics.jsonl")

    def first_step() -> bool:
        try:
            with open(metrics, encoding="utf-8") as f:
                return any('"timing/step"' in line for line in f)
        except OSError:
            return False

    rayrlhf = os.path.join(os.path.dirname(sys.executable), "rayrlhf")
    figures = run_measured([rayrlhf, "ppo", "--config", path], env, log, first_step)
    with open(metrics, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if '"timing/step"' in line]
    phases = ("generate", "reward", "forwards", "advantages", "update", "sync")
    return {**figures, "side": "rayrlhf", "step_seconds": [r["timing/step"] for r in rows],
            "samples_per_step": setting["prompts_per_step"] * setting["n_samples"],
            "phases": {p: [r.get(f"timing/{p}", 0.0) for r in rows] for p in phases},
            "rollout_backend": rows[0].get("rollout/backend") if rows else None}


def trl_side(trl_python: str, world: str, setting: dict, prompt_ids: list, steps: int, lr: float, kl: float,
             run_dir: str, log: str, threads: int, seed: int) -> dict:
    os.makedirs(run_dir, exist_ok=True)
    work = {"model": f"{world}/base_model", "prompt_ids": prompt_ids, "steps": steps, "lr": lr, "kl_coef": kl,
            "threads": threads, "seed": seed, "out_dir": run_dir, **setting}
    work_path, out_path = os.path.join(run_dir, "work.json"), os.path.join(run_dir, "result.json")
    with open(work_path, "w", encoding="utf-8") as f:
        json.dump(work, f)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    script = os.path.join(HERE, TRL[setting["algo"]][0])
    figures = run_measured([trl_python, script, "--work", work_path, "--out", out_path],
                           env, log, lambda: os.path.exists(os.path.join(run_dir, "first_step")))
    with open(out_path, encoding="utf-8") as f:
        return {**figures, **json.load(f)}


def summarise(run: dict, warmup: int) -> dict:
    steps = run["step_seconds"][warmup:]
    s = statistics.median(steps)
    return {"seconds_per_step": s, "samples_per_s": run["samples_per_step"] / s,
            "startup_seconds": run["first_step_seconds"], "peak_pss_mib": run["peak_pss_mib"],
            "measured_steps": len(steps)}


def table(results: dict) -> str:
    lines = ["| setting | side | s/step | samples/s | start-up s | peak PSS MiB | samples/s ratio |",
             "|---|---|---|---|---|---|---|"]
    for name, sides in results["settings"].items():
        algo = sides["setting"]["algo"].upper()
        for side in ("rayrlhf", "trl"):
            m = sides[side]["median"]
            ratio = sides["ratio"]["samples_per_s"] if side == "rayrlhf" else 1.0
            who = f"rayrlhf {algo}" if side == "rayrlhf" else f"TRL {sides['trl']['runs'][0]['version']} {algo}"
            lines.append(f"| {name} | {who} | {m['seconds_per_step']:.2f} | {m['samples_per_s']:.2f} | "
                         f"{m['startup_seconds']:.1f} | {m['peak_pss_mib']:.0f} | {ratio:.2f} |")
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    """A bar chart of samples/s per setting and side, as SVG (no plotting library needed)."""
    bars = [(f"{n} {s}", v[s]["median"]["samples_per_s"]) for n, v in results["settings"].items()
            for s in ("rayrlhf", "trl")]
    top = max(b for _, b in bars) or 1.0
    w, h, bw = 120 * len(bars), 260, 70
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 40}">',
             f'<text x="10" y="16" font-size="13">samples/s ({results["machine"]})</text>']
    for i, (label, v) in enumerate(bars):
        bh = (h - 60) * v / top
        x = 20 + i * 120
        colour = "#3b6ea8" if "rayrlhf" in label else "#b0b0b0"
        parts.append(f'<rect x="{x}" y="{h - bh}" width="{bw}" height="{bh}" fill="{colour}"/>')
        parts.append(f'<text x="{x}" y="{h - bh - 4}" font-size="12">{v:.2f}</text>')
        parts.append(f'<text x="{x}" y="{h + 16}" font-size="12">{label}</text>')
    parts.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trl-python", required=True, help="python of the virtualenv with TRL 1.12 (PPO)")
    p.add_argument("--trl-grpo-python", default=None, help="python of the virtualenv with TRL 1.16 (GRPO)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--settings", default="small,large,grpo", help=f"of {','.join(SETTINGS)}")
    p.add_argument("--steps", type=int, default=12, help="iterations per run, warm-up included")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=2, help="runs per side and setting, alternated")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    from rayrlhf.data.tokenize import render_prompt
    from rayrlhf.driver.toyworld_stage import ToyworldConfig, run_toyworld
    from rayrlhf.models import load_tokenizer
    from rayrlhf.models.tiny import TinyModelSpec

    os.makedirs(a.out, exist_ok=True)
    work_dir = os.path.join(a.out, "work")
    world = os.path.join(work_dir, "world")
    if not os.path.exists(os.path.join(world, "base_model")):
        run_toyworld(ToyworldConfig(out=world, n_sft=50, n_pref=50, n_prompts=400, n_eval_prompts=10,
                                    model=TinyModelSpec(hidden_size=384, num_layers=6, num_heads=6,
                                                        intermediate_size=1152)))
    tok = load_tokenizer(f"{world}/base_model")
    with open(f"{world}/data/prompts_train.jsonl", encoding="utf-8") as f:
        prompt_ids = [list(render_prompt(tok, json.loads(line)["prompt"])) for line in f]
    lr, kl = 1e-5, 0.05
    results = {"machine": f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}", "steps": a.steps,
               "warmup": a.warmup, "runs": a.runs, "threads": a.threads, "settings": {}}
    for name in a.settings.split(","):
        setting = SETTINGS[name]
        runs: dict[str, list] = {"rayrlhf": [], "trl": []}
        for i in range(a.runs):
            order = ("rayrlhf", "trl") if i % 2 == 0 else ("trl", "rayrlhf")
            for side in order:
                run_dir = os.path.join(work_dir, f"{name}_{side}_{i}")
                shutil.rmtree(run_dir, ignore_errors=True)  # an earlier invocation's run of this slot
                log = run_dir + ".log"
                print(f"[peers] {name}: {side}, run {i + 1} of {a.runs}", flush=True)
                if side == "rayrlhf":
                    r = rayrlhf_side(world, setting, a.steps, lr, kl, run_dir, log)
                else:
                    python = a.trl_grpo_python if setting["algo"] == "grpo" else a.trl_python
                    if not python:
                        raise SystemExit(f"setting {name}: --trl-grpo-python is needed (TRL 1.16's GRPO)")
                    r = trl_side(python, world, setting, prompt_ids, a.steps, lr, kl, run_dir, log, a.threads, a.seed)
                r["summary"] = summarise(r, a.warmup)
                runs[side].append(r)
        entry = {"setting": setting}
        for side, rs in runs.items():
            keys = rs[0]["summary"].keys()
            entry[side] = {"runs": rs, "median": {k: statistics.median(r["summary"][k] for r in rs) for k in keys}}
        ours, theirs = entry["rayrlhf"]["median"], entry["trl"]["median"]
        entry["ratio"] = {"samples_per_s": ours["samples_per_s"] / theirs["samples_per_s"],
                          "startup": ours["startup_seconds"] / theirs["startup_seconds"],
                          "peak_pss": ours["peak_pss_mib"] / theirs["peak_pss_mib"]}
        phases = entry["rayrlhf"]["runs"][0]["phases"]
        entry["rayrlhf"]["median_phases"] = {
            k: statistics.median(x for r in entry["rayrlhf"]["runs"] for x in r["phases"][k][a.warmup:])
            for k in phases}
        results["settings"][name] = entry
    with open(os.path.join(a.out, "peers.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    plot(results, os.path.join(a.out, "peers.svg"))
    text = table(results)
    with open(os.path.join(a.out, "peers.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)
    for name, e in results["settings"].items():
        print(f"{name}: rayrlhf/TRL samples/s {e['ratio']['samples_per_s']:.2f}, start-up "
              f"{e['ratio']['startup']:.2f}, peak PSS {e['ratio']['peak_pss']:.2f}; rayrlhf phases (median s): "
              + ", ".join(f"{k} {v:.2f}" for k, v in e["rayrlhf"]["median_phases"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
