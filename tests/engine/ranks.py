"""Run a function on N gloo ranks in spawned processes (no Ray): how FSDP2 and DDP are tested on CPU."""
from __future__ import annotations

import gc
import os
import socket
import sys
import traceback

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args, out_dir: str, init: bool) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        if init and world > 1:
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        with open(os.path.join(out_dir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        if dist.is_initialized():
            dist.destroy_process_group()
        raise
    # A clean end: no rank leaves while a peer is still in a collective, the sharded model and
    # its groups are freed while the interpreter is whole, and the process ends without the
    # interpreter's own teardown, where gloo's threads can still hold tensors and abort (SIGABRT,
    # "terminate called without an active exception"). The result is already on disk.
    del result
    gc.collect()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_ranks(world: int, fn, *args, tmp_dir: str, init: bool = True) -> list:
    """``fn(rank, world, *args)`` on every rank; returns the results by rank (``fn`` must be a
    module-level function; results are tensors, numbers and dicts of them). ``init=False``:
    ``fn`` joins a group itself (``free_port()`` gives it a port)."""
    os.makedirs(tmp_dir, exist_ok=True)
    try:
        mp.start_processes(_entry, args=(world, free_port(), fn, args, tmp_dir, init), nprocs=world, join=True,
                           start_method="spawn")
    except mp.ProcessRaisedException as e:
        errs = [open(os.path.join(tmp_dir, f)).read() for f in sorted(os.listdir(tmp_dir)) if f.endswith(".err")]
        raise AssertionError("\n".join(errs) or str(e)) from None
    return [torch.load(os.path.join(tmp_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]
