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
    env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    runtime_env = {"env_vars": env}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], namespace=namespace, runtime_env=runtime_env,
                 log_to_driver=True)
        return
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, namespace=namespace,
             dashboard_host="127.0.0.1", runtime_env=runtime_env, log_to_driver=True)
