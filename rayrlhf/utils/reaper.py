"""No process of a local Ray cluster outlives the driver that started it.

A driver that ``ray.init`` starts a local cluster for (``ensure_ray`` without an address) shares
its fate with the cluster's servers: when the driver dies, even by SIGKILL, Ray's own reaper ends
the GCS and the raylet. The raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``)
are not ended with it and stay, renamed and reparented to init, holding the session's log files.
``start_reaper`` starts a small watcher in its own session that waits for the driver or the
raylet to end, then ends every process of that Ray session left behind: SIGTERM, and SIGKILL
for any still there ``grace_s`` later. A session's processes are those whose command line names
its folder or whose environment names its raylet (``RAY_RAYLET_PID``); nothing else is touched.

    python -m rayrlhf.utils.reaper <driver pid> <raylet pid> <session dir>
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5


def _alive(pid: int, created: float | None) -> bool:
    """Whether process ``pid`` is the one created at ``created`` (not a later one given its pid)."""
    import psutil

    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and (created is None or p.create_time() == created)
    except psutil.Error:
        return False


def _created(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _ray_package() -> str:
    import importlib.util

    spec = importlib.util.find_spec("ray")
    return list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else "/ray/"


def _raylet_of(p) -> str | None:
    """``RAY_RAYLET_PID`` in process ``p``'s environment, read from /proc where there is one
    (psutil reads it empty once Ray has renamed the process, ``ray::DashboardAgent``)."""
    try:
        with open(f"/proc/{p.pid}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                if entry.startswith(b"RAY_RAYLET_PID="):
                    return entry.split(b"=", 1)[1].decode()
            return None
    except FileNotFoundError:
        return p.environ().get("RAY_RAYLET_PID")
    except OSError:  # not ours to read
        return None


def session_processes(session_dir: str, raylet_pid: int, exclude: tuple[int, ...] = ()) -> list:
    """The live processes of this user's Ray session in ``session_dir`` (psutil.Process objects):
    Ray's programs whose command line names the folder, and the processes the session's raylet
    started (``RAY_RAYLET_PID`` in their environment). Another program that names the folder (a
    ``tail -f`` of its logs) is not one of them."""
    import psutil

    ray_dir = _ray_package()
    found = []
    for p in psutil.process_iter():
        if p.pid in exclude or p.pid == os.getpid():
            continue
        try:
            if p.uids().real != os.getuid() or p.status() == psutil.STATUS_ZOMBIE:
                continue
            argv = p.cmdline()
            ray_program = any(a.startswith(ray_dir) for a in argv[:3])
            if (ray_program and session_dir in " ".join(argv)) or _raylet_of(p) == str(raylet_pid):
                found.append(p)
        except psutil.Error:  # gone, or not ours to read
            continue
    return found


def end_processes(procs: list, grace_s: float = 10.0) -> list[int]:
    """SIGTERM ``procs``, then SIGKILL those alive ``grace_s`` later; the pids that were ended."""
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


def watch(driver_pid: int, raylet_pid: int, session_dir: str, grace_s: float = 10.0) -> list[int]:
    """Wait until the driver or the raylet has ended, give Ray ``grace_s`` to end its own
    processes, then end what is left of the session; the pids ended."""
    driver, raylet = _created(driver_pid), _created(raylet_pid)
    while _alive(driver_pid, driver) and _alive(raylet_pid, raylet):
        time.sleep(POLL_S)
    deadline = time.monotonic() + grace_s
    left = session_processes(session_dir, raylet_pid, exclude=(driver_pid,))
    while left and time.monotonic() < deadline:  # Ray's own shutdown may still be ending them
        time.sleep(POLL_S)
        left = session_processes(session_dir, raylet_pid, exclude=(driver_pid,))
    return end_processes(left, grace_s) if left else []


def start_reaper(session_dir: str, raylet_pid: int, grace_s: float = 10.0) -> subprocess.Popen:
    """Watch this process's local Ray session from a process of its own session (a signal sent
    to the driver's process group does not reach it); returns it."""
    return subprocess.Popen([sys.executable, "-m", "rayrlhf.utils.reaper", str(os.getpid()), str(raylet_pid),
                             session_dir, str(grace_s)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def start_for_local_cluster() -> subprocess.Popen | None:
    """``start_reaper`` for the local cluster this driver has just started (None when Ray does
    not say where its session or raylet is)."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    try:
        session_dir = node.get_session_dir_path()
        raylet = node.all_processes["raylet"][0].process.pid
    except (AttributeError, KeyError, IndexError):
        return None
    return start_reaper(session_dir, raylet)


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 10.0)
