"""Connect to Ray once: an existing cluster when there is one, else a local one on 127.0.0.1."""
from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None, num_gpus: int | None = None, namespace: str | None = None) -> None:
    """``ray.init`` only when not already connected, so one command runs locally and as a job.

    Inside ``ray job submit`` (or with RAY_ADDRESS set) this joins that cluster; otherwise it
    starts a local one whose dashboard listens on 127.0.0.1 only.
    """
    import ray

    if ray.is_initialized():
        return
    defaults = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    # Inside a Ray job, Ray refuses to merge a runtime_env that sets a variable the job's own
    # runtime_env already sets (even to the same value): pass only what is not set yet.
    env = {k: v for k, v in defaults.items() if k not in os.environ}
    runtime_env = {"env_vars": env} if env else None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], namespace=namespace, runtime_env=runtime_env,
                 log_to_driver=True)
        return
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, namespace=namespace,
             dashboard_host="127.0.0.1", runtime_env=runtime_env, log_to_driver=True)
