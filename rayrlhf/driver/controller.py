"""Rollout workers added or removed while a run goes: the run's named controller actor, the
driver's side of it (``ScalingControl``), and ``rayrlhf scale``.

    rayrlhf scale --run quickstart-ppo --rollout-workers 4   # on a cluster node (or --address ray://head:10001)
    rayrlhf scale --run quickstart-ppo                       # only print the run's state

A run starts an actor named ``<run name>/controller`` (no CPU) in its Ray namespace
(``rayrlhf`` unless RAYRLHF_NAMESPACE names another). It holds the number of rollout workers
wanted and the state the driver last reported. At every iteration boundary the driver reads the
wanted number (one small call), moves the fleet toward it without waiting for capacity
(``RolloutFleet.poll_scaling``) and reports back. A driver needs two lines:

    with ScalingControl(run_name, fleet) as scaling:        # or .start() ... .stop()
        metrics.update(scaling.poll(step, version))          # once per iteration
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from rayrlhf.utils.ray_init import run_namespace

SUFFIX = "/controller"


def controller_name(run: str) -> str:
    return run + SUFFIX


class ScalingController:
    """The named actor of one run: the rollout worker count wanted, and the last reported state."""

    def __init__(self, run: str, rollout_workers: int):
        self.state = {"run": run, "desired": rollout_workers, "workers": rollout_workers, "pending": 0,
                      "draining": 0, "step": 0, "version": 0}

    def set_rollout_workers(self, n: int) -> dict:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"rollout workers must be a whole number of at least 1, got {n!r}")
        self.state["desired"] = n
        return dict(self.state)

    def desired(self) -> int:
        return self.state["desired"]

    def report(self, state: dict) -> None:
        """What the fleet looks like (never the wanted count, which only `rayrlhf scale` sets)."""
        self.state.update({k: v for k, v in state.items() if k != "desired"})

    def get_state(self) -> dict:
        return dict(self.state)


class ScalingControl:
    """The driver's side of a run's controller: ``start()`` before the loop, ``poll(step,
    version)`` once per iteration (returns the fleet's ``rollout/workers*`` metrics), ``stop()``
    at the end. A controller that does not answer never fails the run: the fleet keeps its count.
    """

    def __init__(self, run_name: str, fleet, timeout: float = 10.0):
        self.run_name, self.fleet, self.timeout = run_name, fleet, timeout
        self.actor = None
        self._warned = False

    def __enter__(self) -> "ScalingControl":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ScalingControl":
        import ray
        from ray.exceptions import ActorAlreadyExistsError

        name = controller_name(self.run_name)
        cls = ray.remote(num_cpus=0)(ScalingController)
        try:
            self.actor = cls.options(name=name).remote(self.run_name, self.fleet.target)
        except ActorAlreadyExistsError:
            # A controller of this name that does not answer belongs to a run that just ended.
            if _answers(name, self.timeout) or not _wait_released(name, self.timeout):
                namespace = ray.get_runtime_context().namespace
                raise RuntimeError(f"a run named {self.run_name!r} is already going in Ray namespace {namespace!r} "
                                   f"(actor {name} exists); give this run another run.name") from None
            self.actor = cls.options(name=name).remote(self.run_name, self.fleet.target)
        return self

    def poll(self, step: int, version: int) -> dict:
        """Read the wanted count, move the fleet toward it, report the fleet's state back."""
        desired = self._desired()
        if desired is not None and desired != self.fleet.target:
            print(f"[rayrlhf] rollout workers: {self.fleet.target} -> {desired} (rayrlhf scale)", flush=True)
            self.fleet.resize(desired)
        metrics = self.fleet.poll_scaling()
        if self.actor is not None:
            self.actor.report.remote({"step": step, "version": version, "workers": int(metrics["rollout/workers"]),
                                      "pending": int(metrics["rollout/workers_pending"]),
                                      "draining": int(metrics["rollout/workers_draining"])})
        return metrics

    def _desired(self) -> int | None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        if self.actor is None:
            return None
        try:
            return ray.get(self.actor.desired.remote(), timeout=self.timeout)
        except (GetTimeoutError, RayActorError) as e:
            if not self._warned:
                print(f"[rayrlhf] {controller_name(self.run_name)} did not answer ({type(e).__name__}); keeping "
                      f"{self.fleet.target} rollout workers", flush=True)
                self._warned = True
            return None

    def stop(self) -> None:
        """Kill the controller and wait until its name is free again (a resumed run reuses it)."""
        import ray

        if self.actor is None:
            return
        actor, self.actor = self.actor, None
        ray.kill(actor)
        _wait_released(controller_name(self.run_name), self.timeout)


def restore_fleet_size(fleet, state: dict) -> None:
    """A resumed run asks for the rollout worker count it had at its checkpoint (a count set with
    `rayrlhf scale` outlives a restart); the first ``poll`` moves the fleet there."""
    n = state.get("rollout_workers")
    if n and n != fleet.target:
        print(f"[rayrlhf] rollout workers: {fleet.target} -> {n} (the count at the checkpoint)", flush=True)
        fleet.resize(int(n))


def _answers(name: str, timeout: float) -> bool:
    import ray

    try:
        ray.get(ray.get_actor(name).get_state.remote(), timeout=timeout)
        return True
    except Exception:  # gone, dead or dying
        return False


def _wait_released(name: str, timeout: float) -> bool:
    """Whether no actor holds ``name`` within ``timeout`` (a killed actor's name frees shortly after)."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.get_actor(name)
        except ValueError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# -- `rayrlhf scale` ---------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rayrlhf scale", description="Add or remove rollout workers of a run that "
                                "is going, or print its state.")
    p.add_argument("--run", required=True, help="the run's name (run.name: the name of its folder)")
    p.add_argument("--rollout-workers", type=int, default=None,
                   help="rollout workers wanted, at least 1; leave out to print the run's state only")
    p.add_argument("--address", default=None,
                   help="Ray cluster: default RAY_ADDRESS, else the cluster this machine belongs to; "
                        "from outside the cluster ray://<head>:10001")
    p.add_argument("--namespace", default=None, help="Ray namespace of the run (default: RAYRLHF_NAMESPACE or rayrlhf)")
    return p


def scale_main(argv: list[str]) -> int:
    """``rayrlhf scale --run NAME [--rollout-workers N]``: 0 when the run's controller took it,
    1 when no such run is going, 2 when the cluster cannot be reached."""
    import ray

    parser = _parser()
    args = parser.parse_args(argv)
    if args.rollout_workers is not None and args.rollout_workers < 1:
        parser.error(f"--rollout-workers must be at least 1, got {args.rollout_workers}")
    try:
        namespace = _connect(args.address, args.namespace)
    except ConnectionError as e:
        print(f"rayrlhf scale: cannot reach a Ray cluster ({e}); run this on a node of the cluster, or pass "
              "--address ray://<head>:10001", file=sys.stderr)
        return 2
    try:
        controller = ray.get_actor(controller_name(args.run), namespace=namespace)
    except ValueError:
        print(_no_such_run(args.run, namespace), file=sys.stderr)
        return 1
    n = args.rollout_workers
    try:
        state = ray.get(controller.get_state.remote() if n is None else controller.set_rollout_workers.remote(n),
                        timeout=60)
    except ray.exceptions.RayActorError:
        print(f"rayrlhf scale: run {args.run!r} ended before its controller answered", file=sys.stderr)
        return 1
    print(format_state(state))
    return 0


def _connect(address: str | None, namespace: str | None) -> str:
    """Join the cluster (unless this process already has); returns the namespace to look in."""
    import ray

    if ray.is_initialized():
        return namespace or ray.get_runtime_context().namespace
    namespace = run_namespace(namespace)
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", namespace=namespace,
             log_to_driver=False, logging_level=logging.WARNING)
    return namespace


def going_runs() -> list[tuple[str, str]]:
    """(run, namespace) of every run whose controller is alive on the cluster."""
    import ray

    try:
        named = ray.util.list_named_actors(all_namespaces=True)
    except Exception:
        return []
    return sorted((a["name"][: -len(SUFFIX)], a["namespace"]) for a in named if a["name"].endswith(SUFFIX))


def _no_such_run(run: str, namespace: str) -> str:
    runs = going_runs()
    going = ("runs going: " + ", ".join(f"{r} (namespace {ns})" for r, ns in runs)) if runs else \
        "no rayrlhf run is going on this cluster"
    return (f"rayrlhf scale: no run named {run!r} is going in Ray namespace {namespace!r} "
            f"(no actor {controller_name(run)}); {going}")


def format_state(state: dict) -> str:
    return (f"run {state['run']}: rollout workers wanted {state['desired']}; now {state['workers']} serving, "
            f"{state['pending']} starting, {state['draining']} leaving (step {state['step']}, "
            f"policy version {state['version']})")
