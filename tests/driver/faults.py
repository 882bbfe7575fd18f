"""Rule-based reward functions with injected faults, for the engine's failure tests.

They run on the driver (function rewards do), so a test controls them through module state.
"""
import math

STATE = {"calls": 0, "crash_at": None, "kill_at": None, "kill_actor": None, "nan": False, "restart": False,
         "restarted": False, "kill_with": None}


def reset(**kw):
    STATE.update(calls=0, crash_at=None, kill_at=None, kill_actor=None, nan=False, restart=False, restarted=False,
                 kill_with=None)
    STATE.update(kw)


def is_dead(actor) -> bool:
    """Whether a call to ``actor`` fails because it is gone (a slow answer is not death)."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        ray.get(actor.__ray_ready__.remote(), timeout=10)
    except RayActorError:
        return True
    except GetTimeoutError:
        pass
    return False


def kill_and_wait(actor, timeout: float = 60.0) -> None:
    """ray.kill returns before the actor is gone: wait until a call to it fails, so what the
    test does next meets a dead actor."""
    import ray

    from tests.waiting import wait_for

    ray.kill(actor, no_restart=True)
    wait_for(lambda: is_dead(actor), timeout, "the killed actor to be gone")


def _pid(actor, timeout: float = 5.0):
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        return ray.get(actor.__ray_call__.remote(lambda self: __import__("os").getpid()), timeout=timeout)
    except (GetTimeoutError, RayActorError):
        return None


def crash_and_wait_for_restart(actor, timeout: float = 120.0) -> None:
    """Kill ``actor``'s process as a crash would (Ray may restart it), then wait until it answers
    from a new process: the restart really happened before the run goes on."""
    import ray

    from tests.waiting import wait_for

    before = _pid(actor)
    ray.kill(actor, no_restart=False)
    wait_for(lambda: _pid(actor) not in (None, before), timeout, "the killed actor to be restarted")
    STATE["restarted"] = True


def reward(prompt: str, response: str) -> float:
    """Deterministic: toyworld's gold helpfulness, with the faults a test asked for."""
    import ray

    from rayrlhf.tasks.toyworld import gold_helpfulness

    STATE["calls"] += 1
    if STATE["crash_at"] is not None and STATE["calls"] == STATE["crash_at"]:
        raise RuntimeError("driver killed")
    if STATE["kill_at"] is not None and STATE["calls"] == STATE["kill_at"]:
        actor = ray.get_actor(STATE["kill_actor"])
        if STATE["kill_with"] is not None:  # e.g. remove the actor's node
            STATE["kill_with"](actor)
        elif STATE["restart"]:
            crash_and_wait_for_restart(actor)
        else:
            kill_and_wait(actor)
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
