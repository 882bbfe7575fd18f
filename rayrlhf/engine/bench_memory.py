"""``rayrlhf bench --memory``: the deepest tiny Llama whose PPO policy update fits a memory
budget per worker, with ddp and with fsdp over 2 ranks, as a ratio (on CPU; CPU offload moves
GPU state to the host, so it has no CPU measurement and the output says so).

Each trial is real: 2 gloo ranks (spawned processes) build the model at a depth, take one
update (forward, clipped PPO loss, backward, AdamW step) and report whether it ran within
the budget, enforced by ``RLIMIT_DATA`` (heap and anonymous mappings) set to each rank's own
usage after start-up plus the budget. The depth is found by doubling, then bisection. The update uses gradient
checkpointing, as the GPU recipes do.
"""
from __future__ import annotations

import os
import resource
import socket
from datetime import timedelta

import torch


def _vm_data() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmData in /proc/self/status")


def _trial(rank: int, world: int, port: int, depth: int, hidden: int, strategy: str, offload: bool,
           budget: int, seq: int, rows: int, q) -> None:
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from rayrlhf.algo.logprobs import token_logprobs
    from rayrlhf.algo.losses import ppo_policy_loss
    from rayrlhf.engine import Engine, EngineSettings

    torch.set_num_threads(1)
    ok = True
    try:
        # A short timeout: a rank whose peer ran out of memory must not wait for it for long.
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=60))
        hard = resource.getrlimit(resource.RLIMIT_DATA)
        resource.setrlimit(resource.RLIMIT_DATA, (_vm_data() + budget, hard[1]))  # the soft limit only
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=2048, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                          num_hidden_layers=depth, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64)
        model = LlamaForCausalLM(cfg)
        # Gradient checkpointing, as the GPU recipes train: activations stay small next to the
        # model state, which is what sharding divides (activations are per rank either way).
        engine = Engine(model, EngineSettings(strategy=strategy, cpu_offload=offload, micro_batch_size=rows,
                                              gradient_checkpointing=True), rank=rank, world=world)
        g = torch.Generator().manual_seed(rank)
        ids = torch.randint(0, 2048, (rows, seq), generator=g)
        mask = torch.ones(rows, seq - 1)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "response_mask": mask,
                 "advantages": torch.randn(rows, seq - 1, generator=g)}

        def loss_fn(m, mb):
            lp = token_logprobs(m(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits.float(),
                                mb["input_ids"])
            loss, _ = ppo_policy_loss(lp, lp.detach(), mb["advantages"], mb["response_mask"],
                                      num_tokens=float(rows * world * (seq - 1)))
            return loss, {}

        engine.step(batch, loss_fn)
    except (MemoryError, RuntimeError) as e:
        ok = False
        if "memory" not in str(e).lower() and "alloc" not in str(e).lower() and not isinstance(e, MemoryError):
            ok = f"error: {e}"
    # Reporting needs a thread (its stack is a mapping the limit counts): lift the limit first.
    resource.setrlimit(resource.RLIMIT_DATA, resource.getrlimit(resource.RLIMIT_DATA)[1:] * 2)
    q.put((rank, ok))


def fits(depth: int, hidden: int, strategy: str, offload: bool, budget: int, seq: int, rows: int,
         world: int = 2) -> bool:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    # glibc keeps freed large blocks in its heap once its mmap threshold has grown, so a rank's
    # footprint would count every transient buffer it ever had; a fixed threshold returns them.
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    q = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_trial, args=(r, world, port, depth, hidden, strategy, offload, budget, seq, rows, q))
             for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    for p in procs:
        p.join(timeout=600)
    while not q.empty():
        rank, ok = q.get()
        results[rank] = ok
    for p in procs:
        if p.is_alive():
            p.kill()
    # Out of memory on a rank, or a rank killed outright by a failed allocation: it did not fit
    # (its peer then reports a closed connection or a timeout, which says nothing more).
    if len(results) < world or any(v is False for v in results.values()):
        return False
    errors = [v for v in results.values() if isinstance(v, str)]
    if errors:
        raise RuntimeError(errors[0])
    return True


def deepest(hidden: int, strategy: str, offload: bool, budget: int, seq: int, rows: int, cap: int = 256) -> int:
    lo, hi = 0, 1
    while hi <= cap and fits(hi, hidden, strategy, offload, budget, seq, rows):
        lo, hi = hi, hi * 2
    hi = min(hi, cap + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid, hidden, strategy, offload, budget, seq, rows) else (lo, mid)
    return lo


def run(hidden: int = 256, budget_mib: int = 384, seq: int = 128, rows: int = 2) -> dict:
    budget = budget_mib << 20
    out = {"memory/budget_mib_per_rank": budget_mib, "memory/hidden": hidden, "memory/ranks": 2}
    # The ranks compute on CPU (host memory is what RLIMIT_DATA bounds), where offloading to
    # the host has nothing to move: the offload variant is a GPU measurement.
    variants = [("ddp", "ddp", False), ("fsdp2", "fsdp", False)]
    out["memory/fsdp2_offload"] = "not measured: on CPU the parameters already live in CPU memory"
    for name, strategy, offload in variants:
        out[f"memory/depth_{name}"] = deepest(hidden, strategy, offload, budget, seq, rows)
    base = max(1, out["memory/depth_ddp"])
    for name, _, _ in variants[1:]:
        out[f"memory/{name}_over_ddp"] = out[f"memory/depth_{name}"] / base
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
    os._exit(0)
