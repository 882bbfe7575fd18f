"""Weight broadcast from trainer rank 0 to the rollout workers over a collective group.

On GPU clusters this is a NCCL group (tensors go GPU to GPU, no host copy); on CPU the same
code runs on gloo, which is how it is tested. The group is separate from the trainer's DDP
group: it is built from its own TCPStore, so trainer and rollout processes can belong to both.

Tensors travel in buckets of at most ``bucket_bytes``: each bucket is one flat tensor per
dtype, so a 7B model takes a few hundred collective calls, not thousands. Both sides derive
the same bucket layout from the metadata (names, shapes, dtypes) sent once through Ray.
"""
from __future__ import annotations

import socket
from datetime import timedelta

import torch
import torch.distributed as dist

DEFAULT_BUCKET_BYTES = 256 * 1024 * 1024


def tensor_meta(named_tensors: dict[str, torch.Tensor]) -> list[tuple[str, tuple, str]]:
    """(name, shape, dtype) of each tensor, in a fixed order both sides share."""
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in named_tensors.items()]


def plan_buckets(meta: list[tuple[str, tuple, str]], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> list[list[int]]:
    """Indices into ``meta`` grouped into buckets of one dtype and at most ``bucket_bytes``
    (a single tensor larger than that gets a bucket of its own)."""
    buckets: list[list[int]] = []
    current: list[int] = []
    size, dtype = 0, None
    for i, (_, shape, dt) in enumerate(meta):
        nbytes = _numel(shape) * torch.empty((), dtype=getattr(torch, dt)).element_size()
        if current and (dt != dtype or size + nbytes > bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes
        dtype = dt
    if current:
        buckets.append(current)
    return buckets


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def make_group(backend: str, addr: str, port: int, rank: int, world: int, timeout_s: float = 300.0,
               store: dist.TCPStore | None = None):
    """A process group of its own (not the default one): rank 0 hosts the store, ``store`` when
    given (``host_store``), else one it starts at addr:port."""
    timeout = timedelta(seconds=timeout_s)
    if store is None:
        store = make_store(addr, port, world, rank == 0, timeout)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world)
    return dist.ProcessGroupGloo(store, rank, world, timeout)


def host_store(addr: str, timeout: timedelta) -> dist.TCPStore:
    """Rank 0's TCPStore, listening on ``addr`` only, on a port the OS picks (``store.port``).
    The socket listens before anyone learns the port, so no other process can take the port
    between choosing it and using it; keep the store and pass it to the group (``make_group``,
    ``init_process_group(store=...)``)."""
    return _listening_store(addr, 0, None, timeout)


def make_store(addr: str, port: int, world: int, is_master: bool, timeout: timedelta) -> dist.TCPStore:
    """A TCPStore at addr:port; the master listens on that address only (torch's own server
    would listen on every interface)."""
    if not is_master:
        return dist.TCPStore(addr, port, world, False, timeout=timeout)
    return _listening_store(addr, port, world, timeout)


def _listening_store(addr: str, port: int, world: int | None, timeout: timedelta) -> dist.TCPStore:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(128)
        port = sock.getsockname()[1]
    except BaseException:
        sock.close()
        raise
    # Clients may connect at any time from now on; the group, not the store, waits for them.
    return dist.TCPStore(addr, port, world, True, timeout=timeout, wait_for_workers=False,
                         master_listen_fd=sock.detach())


def send(group, named_tensors: dict[str, torch.Tensor], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> int:
    """Rank 0: broadcast every tensor, bucket by bucket; returns bytes sent."""
    return send_streamed(group, tensor_meta(named_tensors), lambda names: [named_tensors[n] for n in names],
                         bucket_bytes)["bytes"]


def send_streamed(group, meta: list[tuple[str, tuple, str]], fetch, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> dict:
    """Broadcast the tensors ``meta`` describes, fetching each bucket's full tensors only when
    it is sent (``fetch(names) -> tensors``: under FSDP, gathered with ``full_tensor()``), so
    no more than one bucket of full weights exists at a time. ``group`` None: take part in the
    gathers only (the other trainer ranks). Returns bytes sent and the weights' checksum."""
    from rayrlhf.rollout.checksum import combine_digests, tensor_digest

    sent, digests = 0, {}
    for bucket in plan_buckets(meta, bucket_bytes):
        names = [meta[i][0] for i in bucket]
        tensors = fetch(names)
        if group is None:
            continue
        digests.update({n: tensor_digest(n, t) for n, t in zip(names, tensors)})
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        group.broadcast([flat], _root(0)).wait()
        sent += flat.numel() * flat.element_size()
    return {"bytes": sent, "checksum": combine_digests(digests) if group is not None else ""}


def receive(group, meta: list[tuple[str, tuple, str]], bucket_bytes: int = DEFAULT_BUCKET_BYTES,
            device: str | torch.device = "cpu", keep_on: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """Other ranks: receive the buckets ``send`` broadcasts (into ``device``: NCCL needs the
    GPU) and cut them back into tensors, kept on ``keep_on`` (default ``device``) bucket by
    bucket, so a receiver staging into host memory holds one bucket on the GPU at a time."""
    out: dict[str, torch.Tensor] = {}
    for bucket in plan_buckets(meta, bucket_bytes):
        dtype = getattr(torch, meta[bucket[0]][2])
        total = sum(_numel(meta[i][1]) for i in bucket)
        flat = torch.empty(total, dtype=dtype, device=device)
        group.broadcast([flat], _root(0)).wait()
        offset = 0
        for i in bucket:
            name, shape, _ = meta[i]
            n = _numel(shape)
            piece = flat[offset:offset + n].view(shape)
            out[name] = piece.clone() if keep_on is None else piece.to(keep_on, copy=True)
            offset += n
    return out


def _root(rank: int):
    opts = dist.BroadcastOptions()
    opts.rootRank = rank
    return opts
