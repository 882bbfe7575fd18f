"""The local cluster ``ensure_ray`` starts listens on loopback only: every TCP listener of this
process and its descendants (the driver, GCS, raylet, dashboard and its agents, workers, and
rayrlhf's own collective groups) is bound to 127.0.0.1 or ::1, none to 0.0.0.0 or ::."""
from __future__ import annotations

import ipaddress
import os
import socket

import psutil
import pytest

from rayrlhf.utils.ray_init import SINGLE_NODE_ENV, bind_to_loopback, ensure_ray


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


def listeners_of_this_process_tree() -> list[tuple[str, int, str]]:
    """(ip, port, process) of every listening TCP socket of this process and its descendants."""
    me = psutil.Process()
    procs = {p.pid: p for p in [me, *me.children(recursive=True)]}
    out = []
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in procs:
            try:
                what = " ".join(procs[c.pid].cmdline())[:100] or procs[c.pid].name()
            except psutil.Error:
                what = "(exited)"
            out.append((c.laddr.ip, c.laddr.port, what))
    return out


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")


def test_a_users_choice_is_kept(monkeypatch):
    from ray._private import ray_constants

    monkeypatch.setenv(SINGLE_NODE_ENV, "1")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    bind_to_loopback()
    assert ray_constants.ENABLE_RAY_CLUSTER is True


@pytest.fixture(scope="module")
def local_cluster():
    import ray
    from ray._private import ray_constants

    with pytest.MonkeyPatch.context() as mp:
        # Undone after the module: ensure_ray's loopback switch holds for the whole process.
        mp.delenv(SINGLE_NODE_ENV, raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", ray_constants.ENABLE_RAY_CLUSTER)
        from rayrlhf.utils.ray_init import token_file

        if os.path.exists(token_file()):
            os.chmod(token_file(), 0o644)  # as Ray writes it: ensure_ray must tighten it
        ensure_ray(num_cpus=1)
        try:
            yield
        finally:
            ray.shutdown()


class Pinger:
    def ping(self) -> int:
        return os.getpid()


def test_every_listener_is_on_loopback(local_cluster):
    import ray

    from rayrlhf.weight_sync import make_group

    actor = ray.remote(num_cpus=0)(Pinger).remote()  # a worker process with its own gRPC server
    actor_pid = ray.get(actor.ping.remote())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    group = make_group("gloo", ray.util.get_node_ip_address(), port, 0, 1, timeout_s=30)  # rayrlhf's own store

    found = listeners_of_this_process_tree()
    processes = " ".join(what for _, _, what in found)
    assert "gcs_server" in processes and "raylet" in processes and "dashboard" in processes, found
    assert actor_pid in {c.pid for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    assert port in {p for _, p, _ in found}
    wide = [f"{ip}:{p} {what}" for ip, p, what in found if not is_loopback(ip)]
    assert not wide, "listening beyond loopback:\n" + "\n".join(wide)
    del group


def test_the_token_file_of_a_local_cluster_is_private(local_cluster):
    """The cluster ensure_ray started uses token auth; Ray wrote its token file readable by
    every local user, and ensure_ray made it the owner's only."""
    from rayrlhf.utils.ray_init import token_file

    if not os.path.exists(token_file()):
        pytest.skip("this Ray wrote no token file (token auth is off here)")
    assert os.stat(token_file()).st_mode & 0o777 == 0o600


def test_a_readable_token_file_is_made_private_and_said(tmp_path, capsys):
    from rayrlhf.utils.ray_init import make_token_private

    path = tmp_path / "auth_token"
    path.write_text("x" * 64)
    os.chmod(path, 0o644)
    assert make_token_private(str(path))
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert "readable by other users (mode 644); made it private to its owner (600)" in capsys.readouterr().out
    assert not make_token_private(str(path))  # already private: nothing to say
    assert not make_token_private(str(tmp_path / "absent"))
