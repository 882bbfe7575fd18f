"""No process of a local Ray cluster outlives the driver that started it (``rayrlhf.utils.reaper``)."""
import os
import signal
import subprocess
import sys
import textwrap

import psutil

from rayrlhf.utils.reaper import session_processes
from tests.waiting import wait_for

SLEEPER = "import time; time.sleep(300)"


def _sleeper(*extra, env=None):
    return subprocess.Popen([sys.executable, "-c", SLEEPER, *extra], env=env, start_new_session=True)


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_reaper_ends_the_sessions_processes_once_the_driver_is_killed(tmp_path):
    session = str(tmp_path / "session_test")
    driver, raylet = _sleeper(), _sleeper()
    agent = _sleeper(env={**os.environ, "RAY_RAYLET_PID": str(raylet.pid)})  # what the raylet starts
    other = _sleeper(env={**os.environ, "RAY_RAYLET_PID": "1"})  # another session's
    bystander = _sleeper(session)  # names the folder but is not Ray's
    reaper = subprocess.Popen([sys.executable, "-m", "rayrlhf.utils.reaper", str(driver.pid), str(raylet.pid),
                               session, "1"])
    try:
        assert [p.pid for p in session_processes(session, raylet.pid)] == [agent.pid]
        assert reaper.poll() is None and not _gone(agent.pid)  # nothing is ended while the driver lives
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert reaper.wait(timeout=60) == 0
        agent.wait(timeout=10)
        assert agent.returncode == -signal.SIGTERM
        assert other.poll() is None and bystander.poll() is None and raylet.poll() is None
    finally:
        for p in (driver, raylet, agent, other, bystander, reaper):
            if p.poll() is None:
                p.kill()
                p.wait()


def _line(driver):
    line = driver.stdout.readline()
    if not line:
        raise AssertionError(f"the driver ended ({driver.wait()}) before its cluster started")
    return line if line.startswith("SESSION ") else None


DRIVER = textwrap.dedent("""
    import sys, time
    from rayrlhf.utils.ray_init import ensure_ray
    ensure_ray(num_cpus=1)
    from ray._private import worker
    node = worker._global_node
    print("SESSION", node.get_session_dir_path(), node.all_processes["raylet"][0].process.pid, flush=True)
    time.sleep(600)
""")


def test_no_process_of_a_local_cluster_outlives_its_killed_driver(tmp_path):
    """SIGKILL a driver that started a local cluster: Ray ends its GCS and raylet, the raylet's
    agents (DashboardAgent, RuntimeEnvAgent) would stay; nothing of the session does."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local cluster of its own
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True, env=env,
                              cwd=str(tmp_path), start_new_session=True)
    try:
        line = wait_for(lambda: _line(driver), 120, "the driver's cluster")
        session, raylet = line.split()[1:]
        agents = wait_for(lambda: [p for p in session_processes(session, int(raylet))
                                   if "Agent" in " ".join(p.cmdline())] or None, 60, "the raylet's agents")
        assert agents
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        wait_for(lambda: not session_processes(session, int(raylet)), 90, "the session's processes to end")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
