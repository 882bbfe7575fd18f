"""Where a collective group's rank 0 hosts its store: on loopback when every member is on its
node, on a port it holds from the moment it reports it, so groups made back to back never
share one."""
from __future__ import annotations

import errno
import shutil
import socket
import tempfile
from datetime import timedelta

import psutil
import pytest
import ray
import torch
import torch.multiprocessing as mp

from rayrlhf.weight_sync import host_store, make_group

TIMEOUT = timedelta(seconds=60)


def listening(pid: int, port: int) -> list[str]:
    return [c.laddr.ip for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid == pid and c.laddr.port == port]


def test_a_hosted_store_holds_its_port_from_the_start():
    store = host_store("127.0.0.1", TIMEOUT)
    assert listening(psutil.Process().pid, store.port) == ["127.0.0.1"]
    with socket.socket() as s, pytest.raises(OSError) as e:
        s.bind(("127.0.0.1", store.port))  # what another process picking "a free port" would do
    assert e.value.errno == errno.EADDRINUSE


def _join_both(ports, queue):
    opts = torch.distributed.BroadcastOptions()
    opts.rootRank = 0
    got = []
    for port in ports:
        group = make_group("gloo", "127.0.0.1", port, 1, 2, timeout_s=60)
        t = torch.zeros(3)
        group.broadcast([t], opts).wait()
        got.append(t.tolist())
    queue.put(got)


def test_groups_made_back_to_back_get_their_own_ports_and_work():
    first, second = host_store("127.0.0.1", TIMEOUT), host_store("127.0.0.1", TIMEOUT)
    assert first.port != second.port
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_join_both, args=([first.port, second.port], queue))
    proc.start()
    opts = torch.distributed.BroadcastOptions()
    opts.rootRank = 0
    for value, store in ((1.0, first), (2.0, second)):
        group = make_group("gloo", "127.0.0.1", store.port, 0, 2, timeout_s=60, store=store)
        group.broadcast([torch.full((3,), value)], opts).wait()
    assert queue.get(timeout=60) == [[1.0] * 3, [2.0] * 3]
    proc.join(timeout=60)
    assert proc.exitcode == 0


# -- on a one-node Ray cluster (its node IP is the machine's, as on any cluster) ----------------

@pytest.fixture(scope="module")
def cluster():
    tmp = tempfile.mkdtemp(prefix="rz", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=tmp, logging_level="ERROR",
             log_to_driver=False)
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def _pid(actor) -> int:
    import os

    return os.getpid()


def test_a_local_group_is_hosted_on_loopback_and_groups_never_share_a_port(cluster, tiny_model_dir):
    from rayrlhf.actors.model_worker import ModelWorker
    from rayrlhf.engine import EngineSettings
    from rayrlhf.placement.actors import node_id

    worker = ray.remote(num_cpus=0)(ModelWorker).remote("reference", tiny_model_dir, EngineSettings())
    here = ray.get(worker.__ray_call__.remote(node_id))
    pid = ray.get(worker.__ray_call__.remote(_pid))
    train = ray.get(worker.host_group.remote("train", [here, here]))
    bcast = ray.get(worker.host_group.remote("broadcast", [here]))
    by_cluster = ray.get(worker.host_group.remote("broadcast"))  # no member list: a one-node cluster
    assert train[0] == bcast[0] == by_cluster[0] == "127.0.0.1"
    assert len({train[1], bcast[1], by_cluster[1]}) == 3
    # Listening, on loopback only: the kept store, not a port free when it was looked at.
    assert listening(pid, train[1]) == ["127.0.0.1"]
    assert listening(pid, by_cluster[1]) == ["127.0.0.1"]
    ray.kill(worker)


class _Bare:
    pass


def test_a_member_on_another_node_gets_the_nodes_address(cluster):
    from rayrlhf.placement.actors import group_address, node_id

    def address(_actor, elsewhere):
        here = node_id()
        return group_address([here, elsewhere]), ray.util.get_node_ip_address()

    probe = ray.remote(num_cpus=0)(_Bare).remote()
    addr, node_ip = ray.get(probe.__ray_call__.remote(address, "f" * 56))
    assert addr == node_ip
    ray.kill(probe)
