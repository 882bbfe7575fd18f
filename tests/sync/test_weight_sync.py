"""Bucketed weight broadcast over its own process group (gloo here, NCCL on GPU clusters)."""
import socket

import torch
import torch.multiprocessing as mp

from rayrlhf.rollout.checksum import weights_checksum
from rayrlhf.weight_sync import make_group, plan_buckets, receive, send, tensor_meta


def _weights():
    g = torch.Generator().manual_seed(0)
    return {"embed.weight": torch.randn(50, 8, generator=g), "norm.weight": torch.ones(8),
            "half.weight": torch.randn(4, 4, generator=g).to(torch.bfloat16), "head.weight": torch.randn(50, 8, generator=g)}


def test_buckets_split_by_dtype_and_size():
    meta = tensor_meta(_weights())
    # float32 sizes: embed 1600 B, norm 32 B; bf16 half 32 B; float32 head 1600 B
    assert plan_buckets(meta, bucket_bytes=2000) == [[0, 1], [2], [3]]
    assert plan_buckets(meta, bucket_bytes=100) == [[0], [1], [2], [3]]  # a big tensor gets its own bucket


def _receiver(port, rank, world, queue):
    group = make_group("gloo", "127.0.0.1", port, rank, world, timeout_s=60)
    got = receive(group, tensor_meta(_weights()), bucket_bytes=2000)
    queue.put((rank, weights_checksum(got), got["half.weight"].dtype == torch.bfloat16))


def test_broadcast_reaches_every_receiver_bit_for_bit():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_receiver, args=(port, r, 3, queue)) for r in (1, 2)]
    for p in procs:
        p.start()
    group = make_group("gloo", "127.0.0.1", port, 0, 3, timeout_s=60)
    weights = _weights()
    sent = send(group, weights, bucket_bytes=2000)
    results = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert sent == sum(t.numel() * t.element_size() for t in weights.values())
    assert [r[0] for r in results] == [1, 2]
    assert all(r[1] == weights_checksum(weights) and r[2] for r in results)
