"""No process of a local Ray cluster outlives the driver that started it (``rayrlhf.utils.reaper``)."""
import os
import signal
import subprocess
import sys
import textwrap

import psutil

from rayrlhf.utils.reaper import Tree
from tests.waiting import wait_for

SLEEPER = "import time; time.sleep(300)"
# A raylet stand-in: starts one child (its "agent"), prints the child's pid, sleeps.
PARENT = textwrap.dedent(f"""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", {SLEEPER!r}])
    print(child.pid, flush=True)
    time.sleep(300)
""")


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", SLEEPER], start_new_session=True)


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_reaper_ends_the_raylets_tree_once_the_driver_is_killed_and_nothing_else():
    driver, other = _sleeper(), _sleeper()  # `other`: a process of the driver's that Ray did not start
    raylet = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    agent = int(raylet.stdout.readline())
    reaper = subprocess.Popen([sys.executable, "-m", "rayrlhf.utils.reaper", str(driver.pid), str(raylet.pid), "1"],
                              stdout=subprocess.PIPE, text=True)
    try:
        tree = Tree(raylet.pid, lives=[driver.pid])
        tree.refresh()
        assert tree.alive() and list(tree.known) == [agent]
        assert reaper.stdout.readline() == "ready\n"  # it has read the raylet's tree
        assert reaper.poll() is None and not _gone(agent) and raylet.poll() is None  # nothing ended yet
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert reaper.wait(timeout=60) == 0
        assert raylet.wait(timeout=10) == -signal.SIGTERM
        wait_for(lambda: _gone(agent), 10, "the raylet's child to end")
        assert other.poll() is None  # not in the raylet's tree: untouched
    finally:
        for p in (driver, other, raylet, reaper):
            if p.poll() is None:
                p.kill()
                p.wait()
        if not _gone(agent):
            os.kill(agent, signal.SIGKILL)


def test_a_tree_forgets_nothing_when_its_root_ends_first():
    raylet = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    agent = int(raylet.stdout.readline())
    try:
        tree = Tree(raylet.pid)
        tree.refresh()
        raylet.kill()
        raylet.wait()
        tree.refresh()  # the child is now init's: still remembered, and still alive
        assert not tree.alive() and [p.pid for p in tree.left()] == [agent]
    finally:
        if raylet.poll() is None:
            raylet.kill()
        if not _gone(agent):
            os.kill(agent, signal.SIGKILL)


def _line(driver):
    line = driver.stdout.readline()
    if not line:
        raise AssertionError(f"the driver ended ({driver.wait()}) before its cluster started")
    return line if line.startswith("RAYLET ") else None


DRIVER = textwrap.dedent("""
    import time
    from rayrlhf.utils.ray_init import ensure_ray
    ensure_ray(num_cpus=1)
    from ray._private import worker
    print("RAYLET", worker._global_node.all_processes["raylet"][0].process.pid, flush=True)
    time.sleep(600)
""")


def test_no_process_of_a_local_cluster_outlives_its_killed_driver(tmp_path):
    """SIGKILL a driver that started a local cluster: Ray ends its GCS and raylet; the raylet's
    agents (DashboardAgent, RuntimeEnvAgent) would stay; none of the raylet's tree does."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local cluster of its own
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True, env=env,
                              cwd=str(tmp_path), start_new_session=True)
    try:
        line = wait_for(lambda: _line(driver), 120, "the driver's cluster")
        raylet = int(line.split()[1])
        agents = wait_for(lambda: [p for p in psutil.Process(raylet).children(recursive=True)
                                   if "Agent" in " ".join(p.cmdline())] or None, 60, "the raylet's agents")
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        wait_for(lambda: all(_gone(p.pid) for p in agents) and _gone(raylet), 90, "the raylet and its agents to end")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
