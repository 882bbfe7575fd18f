"""``rayrlhf bench --gpu``: the trainer's tokens/s and model FLOPs utilisation on one GPU, on a
Qwen2.5-1.5B-shaped model with random weights (no download), through the engine as every
trained role uses it (bf16 compute, float32 master weights and AdamW, gradient checkpointing).

MFU follows PaLM (Chowdhery et al. 2022, appendix B): model FLOPs per token 6·N + 12·L·h·s
(N the non-embedding parameters, the second term attention), over the device's dense bf16
peak; recomputation by checkpointing is not credited.
"""
from __future__ import annotations

import time

import torch

SHAPES = {
    # Qwen/Qwen2.5-1.5B's config.json
    "qwen2.5-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                         num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                         tie_word_embeddings=True, max_position_embeddings=32768),
    # A smoke-test size that runs anywhere.
    "tiny": dict(model_type="qwen2", vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True, max_position_embeddings=512),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}
"""Dense bf16 tensor-core peak FLOP/s by device name."""


def peak_flops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def run(shape: str = "qwen2.5-1.5b", seq: int = 2048, micro: int = 4, steps: int = 8, warmup: int = 2,
        strategy: str = "fsdp", checkpointing: bool = True, peak: float | None = None) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    from rayrlhf.algo.losses import sft_loss
    from rayrlhf.engine import Engine, EngineSettings

    cuda = torch.cuda.is_available()
    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    settings = EngineSettings(role="bench", dtype="bfloat16", strategy=strategy, gradient_checkpointing=checkpointing,
                              micro_batch_size=micro, lr=1e-5, wants_gpu=cuda)
    engine = Engine(model, settings)
    n_all = sum(p.numel() for p in model.parameters())
    # Parameters that multiply per token: all but the embedding lookup, plus the LM head's
    # matmul (which a tied model counts under the embedding's weight).
    embed = config.vocab_size * config.hidden_size
    n = n_all - embed + (embed if config.tie_word_embeddings else 0)
    flops_per_token = 6 * n + 12 * config.num_hidden_layers * config.hidden_size * seq
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, config.vocab_size, (micro, seq), generator=g)}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["loss_mask"] = torch.ones(micro, seq)

    def loss_fn(m, mb):
        logits = m(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits
        loss, _ = sft_loss(logits.float(), mb["input_ids"], mb["loss_mask"], num_tokens=float(micro * (seq - 1)))
        return loss, {}

    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        engine.step(batch, loss_fn)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = sorted(times)[len(times) // 2]
    tokens_per_s = micro * seq / step
    out = {"gpu/shape": shape, "gpu/params": n_all, "gpu/seq": seq, "gpu/micro_batch": micro,
           "gpu/strategy": strategy, "gpu/checkpointing": checkpointing, "gpu/step_seconds_median": step,
           "gpu/tokens_per_s": tokens_per_s, "gpu/model_flops_per_token": flops_per_token,
           "gpu/device": torch.cuda.get_device_name() if cuda else "cpu"}
    p = peak_flops(engine.device, peak)
    if p:
        out["gpu/mfu"] = tokens_per_s * flops_per_token / p
    if cuda:
        out["gpu/peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out
