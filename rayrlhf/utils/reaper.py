"""No process of a local Ray cluster outlives the driver that started it.

A driver that ``ray.init`` starts a local cluster for (``ensure_ray`` without an address) shares
its fate with the cluster's servers: when the driver dies, even by SIGKILL, Ray's own reaper ends
the GCS and the raylet. The raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``)
are not ended with it: they stay, renamed and reparented to init, holding the session's ports
and log files. ``start_reaper`` starts a small watcher in a session of its own (a signal to the
driver's process group does not reach it). While the driver and the raylet live it keeps the list
of the raylet's descendants (each known by its pid and creation time, so a later process given a
freed pid is never touched); once either has ended it gives Ray ``grace_s`` to end its own
processes, then SIGTERMs what is left of the raylet and that list, and SIGKILLs any still there
``grace_s`` later. Nothing outside the raylet's process tree is touched: not the driver, not
the other processes it started.

    python -m rayrlhf.utils.reaper <driver pid> <raylet pid> [grace seconds]
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5


def _process(pid: int, created: float | None = None):
    """psutil's process ``pid`` if it is alive and (with ``created``) the one created then."""
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE or (created is not None and p.create_time() != created):
            return None
        return p
    except psutil.Error:
        return None


def _created(pid: int) -> dict[int, float]:
    p = _process(pid)
    return {} if p is None else {pid: p.create_time()}


class Tree:
    """A root process and its descendants, remembered after the root ends (pid -> creation
    time, kept up to date by ``refresh`` while it lives), watched while ``lives`` (other
    processes whose end also ends the watch) are alive."""

    def __init__(self, root: int, lives: list[int] = ()):
        self.root = _created(root)
        self.lives = {pid: t for other in lives for pid, t in _created(other).items()}
        self.known: dict[int, float] = {}

    def alive(self) -> bool:
        everyone = {**self.lives, **self.root}
        return len(everyone) == 1 + len(self.lives) and all(_process(pid, t) for pid, t in everyone.items())

    def refresh(self) -> None:
        import psutil

        for pid, t in self.root.items():
            root = _process(pid, t)
            try:
                for child in root.children(recursive=True) if root is not None else []:
                    self.known.setdefault(child.pid, child.create_time())
            except psutil.Error:  # a child ended while being listed
                pass
        self.known = {pid: t for pid, t in self.known.items() if _process(pid, t) is not None}

    def left(self) -> list:
        """The root and remembered descendants still alive, as psutil processes."""
        everyone = {**self.root, **self.known}
        return [p for pid, t in everyone.items() if (p := _process(pid, t)) is not None]


def end_processes(procs: list, grace_s: float = 10.0) -> list[int]:
    """SIGTERM ``procs``, then SIGKILL those alive ``grace_s`` later; the pids that were signalled."""
    import psutil

    ended = []
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
            ended.append(p.pid)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=grace_s)
    return ended


def watch(driver_pid: int, raylet_pid: int, grace_s: float = 10.0, ready=None) -> list[int]:
    """Follow the raylet's process tree until the driver or the raylet has ended, give Ray
    ``grace_s`` to end its own processes, then end what is left of that tree; the pids
    signalled. ``ready()`` is called once the tree has been read the first time."""
    tree = Tree(raylet_pid, lives=[driver_pid])
    tree.refresh()
    if ready is not None:
        ready()
    while tree.alive():
        time.sleep(POLL_S)
        tree.refresh()
    tree.refresh()  # a raylet still alive: its children of now
    deadline = time.monotonic() + grace_s
    left = tree.left()
    while left and time.monotonic() < deadline:  # Ray's own shutdown may still be ending them
        time.sleep(POLL_S)
        left = tree.left()
    return end_processes(left, grace_s) if left else []


def start_reaper(raylet_pid: int, grace_s: float = 10.0) -> subprocess.Popen:
    """Watch this driver and its local cluster's raylet from a process of its own session;
    returns once the watcher has read the raylet's tree (so no kill, however early, escapes it)."""
    proc = subprocess.Popen([sys.executable, "-m", "rayrlhf.utils.reaper", str(os.getpid()), str(raylet_pid),
                             str(grace_s)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)
    proc.stdout.readline()  # "ready", or "" if it could not start
    proc.stdout.close()
    return proc


def _say_ready() -> None:
    os.write(1, b"ready\n")
    os.close(1)


def start_for_local_cluster() -> subprocess.Popen | None:
    """``start_reaper`` for the local cluster this driver has just started (None when Ray does
    not say which process its raylet is)."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    try:
        raylet = node.all_processes["raylet"][0].process.pid
    except (AttributeError, KeyError, IndexError):
        return None
    return start_reaper(raylet)


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 10.0, _say_ready)
