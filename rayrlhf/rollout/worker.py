"""The rollout worker: one engine, wrapped in a Ray actor by the placement layer.

A plain class, so it runs and is tested without Ray; placement does
``ray.remote(num_cpus=..., num_gpus=...)(RolloutWorker)``.
"""
from __future__ import annotations

import os
import sys
import threading
import time

import torch

from rayrlhf.rollout.checksum import weights_checksum
from rayrlhf.rollout.common import nbytes
from rayrlhf.rollout.config import RolloutSection
from rayrlhf.rollout.types import RolloutBackend, Sample
from rayrlhf.telemetry import RolloutMeter


def vllm_import_error() -> str | None:
    """Why ``import vllm`` fails here (a broken install, missing CUDA libraries, ...), or None."""
    try:
        import vllm  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def vllm_available() -> bool:
    return vllm_import_error() is None


def make_backend(model_path: str, cfg: RolloutSection, tokenizer_path: str | None = None,
                 trust_remote_code: bool = False) -> RolloutBackend:
    """The engine ``cfg.backend`` names; "auto" takes vLLM when it imports, else transformers."""
    problems = cfg.validate()
    if cfg.tensor_parallel_size > 1 and not torch.cuda.is_available():
        problems.append(f"tensor_parallel_size: {cfg.tensor_parallel_size} shards one engine over several GPUs, "
                        "but this worker sees no CUDA device: set rollout.tensor_parallel_size: 1 on CPU")
    if problems:
        raise ValueError("rollout config: " + "; ".join(problems))
    backend = cfg.backend
    if backend == "auto":
        # Said once per worker, so a silent fallback to the slower engine cannot go unnoticed.
        error = None if vllm_available() else (vllm_import_error() or "vllm does not import")
        backend = "hf" if error else "vllm"
        why = f"vLLM does not import ({error.splitlines()[0][:200]})" if error else "vLLM imports"
        print(f"[rayrlhf] rollout.backend auto: {why}; using {backend}", flush=True)
    if backend == "vllm":
        # An explicit backend: vllm fails with vLLM's own import error, never falls back.
        from rayrlhf.rollout.vllm_backend import VLLMBackend

        return VLLMBackend(model_path, tokenizer_path, cfg, trust_remote_code)
    from rayrlhf.rollout.hf_backend import HFBackend

    return HFBackend(model_path, tokenizer_path, cfg, trust_remote_code)


def assigned_cpus() -> int:
    """Threads this process should use: the Ray actor's CPU reservation when inside one, else
    an explicit OMP_NUM_THREADS, else the CPUs it may run on.

    More threads than reserved cores make OpenMP spin against other processes' threads; on a
    busy 2-core machine a tiny model's training step went from 13 ms (1 thread) to 1.2 s (2).
    """
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            try:
                cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            except AssertionError:  # a driver process, not a Ray worker: it has no reservation
                cpus = None
            if cpus:
                return max(1, int(cpus))
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class RolloutWorker:
    """One rollout engine. New weights arrive in two steps, so a sync need not wait for the
    generation already queued on the worker:

    - ``stage_weights`` / ``receive_weights`` hold a version aside (host memory), in the actor's
      ``staging`` concurrency group: they run while a ``generate`` call is going.
    - ``activate(version)`` swaps the staged version into the engine. It runs in the default
      group, in call order: every ``generate`` sent before it samples from the old weights,
      every one sent after it from the new. Each ``Sample.policy_version`` says which.

    Until activated, each staged version costs one copy of the weights in host memory; the
    driver keeps at most ``ppo.max_staleness + 1`` versions staged.
    """

    CONCURRENCY_GROUPS = {"staging": 1}
    """Ray concurrency groups of the actor (``ray.remote(concurrency_groups=...)``)."""

    def __init__(self, model_path: str, cfg: RolloutSection | dict, tokenizer_path: str | None = None,
                 trust_remote_code: bool = False, name: str = "rollout/0", threads: int | None = None):
        self.name = name
        cfg = RolloutSection(**cfg) if isinstance(cfg, dict) else cfg
        threads = threads or assigned_cpus()  # resources.rollout.threads, else the reservation
        # Before the engine starts: vLLM's CPU worker forbids set_num_threads afterwards and
        # keeps an explicit OMP_NUM_THREADS instead of dropping to one thread.
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        self.threads = threads
        self.backend = make_backend(model_path, cfg, tokenizer_path, trust_remote_code)
        self.meter = RolloutMeter(name)
        self._staged: dict[int, tuple[dict, str]] = {}  # version -> (tensors, checksum)
        self._staged_lock = threading.Lock()

    @property
    def version(self) -> int:
        return self.backend.version

    def generate(self, prompt_ids: list[list[int]], n: int | None = None, seed: int | None = None,
                 version: int | None = None) -> list[Sample]:
        """Samples from the current weights. ``version``, when given, must be the loaded one:
        a driver that just synced weights gets an error instead of stale samples."""
        if version is not None and version != self.backend.version:
            raise RuntimeError(f"{self!r}: asked for policy version {version}, holds {self.backend.version}")
        t0 = time.perf_counter()
        samples = self.backend.generate(prompt_ids, n=n, seed=seed)
        self.meter.record(sum(len(s.response_ids) for s in samples), time.perf_counter() - t0)
        return samples

    def load_weights(self, named_tensors: dict[str, torch.Tensor], version: int) -> dict:
        """Replace the engine's weights now (a worker that has no generation queued)."""
        return self.backend.load_weights(named_tensors, version)

    def stage_weights(self, named_tensors: dict[str, torch.Tensor], version: int) -> dict:
        """Hold ``version`` aside for ``activate``; returns its checksum (what arrived), seconds
        and bytes. Safe to run beside ``generate`` (the ``staging`` group)."""
        t0 = time.perf_counter()
        checksum = weights_checksum(named_tensors)
        with self._staged_lock:
            self._staged[version] = (named_tensors, checksum)
        return {"version": version, "checksum": checksum, "seconds": time.perf_counter() - t0,
                "bytes": nbytes(named_tensors)}

    def activate(self, version: int, probe_ids: list[int] | None = None) -> dict:
        """Load the staged ``version`` into the engine (older staged versions are dropped), and
        return the engine's probe logprobs on ``probe_ids`` under it."""
        with self._staged_lock:
            staged = self._staged.pop(version, None)
            for v in [v for v in self._staged if v < version]:
                del self._staged[v]
        if staged is None:
            if self.backend.version == version:  # a replacement admitted with this version already
                return {"version": version, "seconds": 0.0,
                        "probe": self.backend.probe_logprobs(probe_ids) if probe_ids else None}
            raise RuntimeError(f"{self.name}: activate({version}) without staged weights of that version "
                               f"(staged: {sorted(self._staged)}, serving {self.backend.version})")
        tensors, checksum = staged
        report = self.backend.load_weights(tensors, version)
        if report["checksum"] != checksum:
            raise RuntimeError(f"{self.name}: weights of version {version} changed between staging and activation")
        out = {"version": version, "seconds": report["seconds"]}
        out["probe"] = self.backend.probe_logprobs(probe_ids) if probe_ids else None
        return out

    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        return self.backend.probe_logprobs(token_ids)

    def choice_logprobs(self, prompt_ids: list[list[int]], choices: list[list[int]]) -> list[list[float]]:
        """Log-probabilities (T=1) of candidate next tokens, ``choices[i]`` after
        ``prompt_ids[i]``: an AI judge's label tokens (``rayrlhf label``)."""
        return self.backend.choice_logprobs(prompt_ids, choices)

    def join_broadcast(self, addr: str, port: int, rank: int, world: int, backend: str = "gloo") -> bool:
        """Join the weight-broadcast group whose rank 0 is the trainer (``rayrlhf.weight_sync``)."""
        from rayrlhf.weight_sync import make_group

        self._bcast = make_group(backend, addr, port, rank, world)
        return True

    def receive_weights(self, meta: list, version: int, bucket_bytes: int) -> dict:
        """Receive one broadcast of the trainer's weights and stage them (host memory), like
        ``stage_weights``; ``activate`` loads them."""
        from rayrlhf.weight_sync import receive

        device = "cuda" if torch.cuda.is_available() else "cpu"
        return self.stage_weights(receive(self._bcast, meta, bucket_bytes, device, keep_on="cpu"), version)

    def ready(self) -> dict:
        return {"name": self.name, "backend": self.backend.name, "version": self.backend.version,
                "threads": self.threads}

    def __repr__(self) -> str:
        # Ray prefixes an actor's log lines with this.
        backend = getattr(self, "backend", None)
        if backend is None:
            return f"RolloutWorker({self.name})"
        return f"RolloutWorker({self.name}, {backend.name}, v{backend.version})"
