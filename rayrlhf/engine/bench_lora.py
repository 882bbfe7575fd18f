"""``rayrlhf bench --only lora``: LoRA against full fine-tuning of the PPO policy, as ratios.

    lora/step_over_full           PPO iteration seconds (sync mode, same world, same settings)
    lora/update_peak_over_full    peak memory an update adds to a policy worker: its process's
                                  peak RSS during ``steps`` updates minus its RSS after loading the
                                  model, the peak reset there (gradients, AdamW state,
                                  activations), one fresh process per mode
    lora/sync_bytes_over_full     bytes a weight sync sends to the rollout workers (merged
                                  weights: the same tensors, so 1.0; serving the adapter itself
                                  to vLLM is what would shrink it)
    lora/trainable_over_full      parameters in the optimizer

``update_memory`` is the measured child: ``python -m rayrlhf.engine.bench_lora MODEL_DIR R``
prints its JSON.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time


def _status_bytes(key: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux reports kB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def _reset_peak() -> int:
    """Reset this process's peak resident memory (VmHWM) to what it holds now (Linux: writing 5
    to /proc/self/clear_refs), so that loading's transient peak is not counted as the update's;
    returns the resident memory now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def _batch(model_dir: str, rows: int = 8, response_tokens: int = 48) -> dict:
    import torch

    from rayrlhf.actors.batch import build_batch
    from rayrlhf.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Where is the red key?"}],
                                     add_generation_prompt=True, tokenize=True, return_dict=False)
    g = torch.Generator().manual_seed(0)
    responses = [torch.randint(3, tok.vocab_size, (response_tokens,), generator=g).tolist() for _ in range(rows)]
    batch = build_batch([prompt] * rows, responses, tok.pad_token_id)
    batch["advantages"] = torch.randn(batch["response_mask"].shape, generator=g) * batch["response_mask"]
    return batch


def update_memory(model_dir: str, lora_r: int, steps: int = 3) -> dict:
    """A policy worker's update on a fixed batch: seconds per update, peak RSS it adds, and
    the parameters in its optimizer."""
    import torch

    from rayrlhf.actors.model_worker import ModelWorker
    from rayrlhf.config.schema import LoraSection
    from rayrlhf.engine import EngineSettings
    from rayrlhf.engine.settings import PolicyLoss

    torch.set_num_threads(1)
    lora = LoraSection(r=lora_r, alpha=2.0 * lora_r) if lora_r else LoraSection()
    w = ModelWorker("policy", model_dir, EngineSettings(role="policy", lr=1e-5, micro_batch_size=8, lora=lora),
                    PolicyLoss(clip_eps=0.2))
    batch = _batch(model_dir)
    n_tok = float(batch["response_mask"].sum())
    part = dict(batch, old_logprobs=w.forward(batch))
    loaded = _reset_peak()
    t0 = time.perf_counter()
    for _ in range(steps):
        w.update([part], [n_tok])
    seconds = (time.perf_counter() - t0) / steps
    trainable = sum(p.numel() for g in w.engine.optimizer.param_groups for p in g["params"])
    return {"update_seconds": seconds, "update_peak_bytes": _status_bytes("VmHWM") - loaded, "trainable": trainable}


def measured_update(model_dir: str, lora_r: int) -> dict:
    """``update_memory`` in a fresh Python process."""
    done = subprocess.run([sys.executable, "-m", "rayrlhf.engine.bench_lora", model_dir, str(lora_r)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def lora_ratios(full: dict, lora: dict) -> dict:
    """Ratios of LoRA's figures to full fine-tuning's (each a dict of ``_ppo_figures`` plus
    ``update_memory``'s keys)."""
    return {"lora/step_over_full": lora["step_seconds"] / full["step_seconds"],
            "lora/update_peak_over_full": lora["update_peak_bytes"] / max(1, full["update_peak_bytes"]),
            "lora/sync_bytes_over_full": lora["sync_bytes"] / max(1.0, full["sync_bytes"]),
            "lora/trainable_over_full": lora["trainable"] / full["trainable"]}


if __name__ == "__main__":
    print(json.dumps(update_memory(sys.argv[1], int(sys.argv[2]))))
