"""Rule-based reward functions with injected faults, for the engine's failure tests.

They run on the driver (function rewards do), so a test controls them through module state.
"""
import math

STATE = {"calls": 0, "crash_at": None, "kill_at": None, "kill_actor": None, "nan": False}


def reset(**kw):
    STATE.update(calls=0, crash_at=None, kill_at=None, kill_actor=None, nan=False)
    STATE.update(kw)


def reward(prompt: str, response: str) -> float:
    """Deterministic: toyworld's gold helpfulness, with the faults a test asked for."""
    import ray

    from rayrlhf.tasks.toyworld import gold_helpfulness

    STATE["calls"] += 1
    if STATE["crash_at"] is not None and STATE["calls"] == STATE["crash_at"]:
        raise RuntimeError("driver killed")
    if STATE["kill_at"] is not None and STATE["calls"] == STATE["kill_at"]:
        ray.kill(ray.get_actor(STATE["kill_actor"]), no_restart=True)
    if STATE["nan"]:
        return math.nan
    return gold_helpfulness(prompt, response) + 0.01 * len(response.split())


def kill_once_when_exists(prompt: str, response: str, path: str = "", tripped: str = "") -> float:
    """0.0; the first time ``path`` exists, SIGKILL this process's whole group (a pipeline run
    and the local Ray cluster it started), leaving ``tripped`` behind so a rerun goes through."""
    import os
    import signal

    if path and os.path.exists(path) and not os.path.exists(tripped):
        open(tripped, "w").close()
        os.killpg(os.getpgid(0), signal.SIGKILL)
    return 0.0
