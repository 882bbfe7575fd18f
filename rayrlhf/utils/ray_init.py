"""Connect to Ray once: an existing cluster when there is one, else a local one on 127.0.0.1."""
from __future__ import annotations

import os

DEFAULT_NAMESPACE = "rayrlhf"
"""Ray namespace of runs when neither the caller nor RAYRLHF_NAMESPACE names one; named actors
(a run's controller, found by `rayrlhf scale`) are looked up in it."""


def run_namespace(namespace: str | None = None) -> str:
    """``namespace``, else RAYRLHF_NAMESPACE, else ``rayrlhf``."""
    return namespace or os.environ.get("RAYRLHF_NAMESPACE") or DEFAULT_NAMESPACE


PIPELINE_FILE = "pipeline.yaml"
"""What `rayrlhf pipeline` writes into its run folder before its first stage starts."""


def run_name_of(run_dir: str) -> str:
    """The name a run goes by in Ray (actor, placement-group and controller names, so
    `rayrlhf scale --run`), in metrics and in W&B: ``<pipeline>/<stage>`` for a stage of a
    pipeline (its folder sits in a folder holding ``PIPELINE_FILE``), so the stages of two
    pipelines never share a name; else the run folder's name."""
    run_dir = os.path.normpath(os.path.abspath(run_dir))
    parent = os.path.dirname(run_dir)
    name = os.path.basename(run_dir)
    if os.path.exists(os.path.join(parent, PIPELINE_FILE)):
        return f"{os.path.basename(parent)}/{name}"
    return name


def ensure_ray(num_cpus: int | None = None, num_gpus: int | None = None, namespace: str | None = None) -> None:
    """``ray.init`` only when not already connected, so one command runs locally and as a job.

    Inside ``ray job submit`` (or with RAY_ADDRESS set) this joins that cluster; otherwise it
    starts a local one whose servers all listen on 127.0.0.1 only (``bind_to_loopback``) and
    whose processes all end when this driver does, even when it is killed
    (``rayrlhf.utils.reaper``). The
    driver joins the Ray namespace ``run_namespace(namespace)``; a process already connected
    keeps its own.
    """
    import ray

    if ray.is_initialized():
        return
    namespace = run_namespace(namespace)
    defaults = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    # Inside a Ray job, Ray refuses to merge a runtime_env that sets a variable the job's own
    # runtime_env already sets (even to the same value): pass only what is not set yet.
    env = {k: v for k, v in defaults.items() if k not in os.environ}
    runtime_env = {"env_vars": env} if env else None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], namespace=namespace, runtime_env=runtime_env,
                 log_to_driver=True)
        return
    bind_to_loopback()
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, namespace=namespace,
             dashboard_host="127.0.0.1", runtime_env=runtime_env, log_to_driver=True)
    make_token_private()
    from rayrlhf.utils.reaper import start_for_local_cluster

    start_for_local_cluster()  # no process of this cluster outlives this driver, however it ends


def token_file() -> str:
    """Where Ray keeps the token of a local cluster it started with token auth."""
    return os.path.join(os.path.expanduser("~"), ".ray", "auth_token")


def make_token_private(path: str | None = None) -> bool:
    """Ray writes the cluster's auth token with the umask's mode, readable by every local user
    (644 under the usual umask): anyone on the machine could then run code on the cluster. Make
    a token file of this user's private (600) and say so; True when it was changed."""
    path = path or token_file()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    if not st.st_mode & 0o077 or st.st_uid != os.getuid():
        return False
    os.chmod(path, 0o600)
    print(f"[rayrlhf] {path}: Ray's auth token was readable by other users (mode {st.st_mode & 0o777:o}); "
          "made it private to its owner (600)", flush=True)
    return True


SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def bind_to_loopback() -> None:
    """Make the next local cluster listen on 127.0.0.1 only, unless the user set SINGLE_NODE_ENV.

    Ray binds its servers (GCS, raylet, workers, agents, metrics export) to the node's IP, and
    ``ray.init`` turns 127.0.0.1 into the machine's outward address unless Ray runs as a
    single-node install, as it does on macOS and Windows (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``).
    Ray reads that variable once, on import, into the flag set here; the processes it starts
    are handed the node's IP, so the flag matters in this driver only.
    """
    if SINGLE_NODE_ENV in os.environ:
        return
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def note_restart(name: str) -> None:
    """In an actor's constructor: say so when Ray is building it again after its process died
    (a frozen role, restarted in its bundle; its model is loaded again from its folder)."""
    import sys

    if "ray" not in sys.modules:
        return
    import ray

    if ray.is_initialized():
        try:
            again = ray.get_runtime_context().was_current_actor_reconstructed
        except Exception:  # a driver or a plain process: no actor to have been restarted
            return
        if again:
            print(f"[rayrlhf] {name}: restarted by Ray after its process died; its model was loaded again "
                  f"and its unfinished calls are retried", flush=True)
