"""Configuration of the rollout fleet: which engine samples, and how."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

BACKENDS = ("vllm", "hf", "auto")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class RolloutSection:
    """How the rollout workers sample. How many workers there are, and what each reserves, is
    ``resources.rollout`` (``num_workers``, ``gpus_per_worker``, ...): one key for both."""

    MOVED: ClassVar[dict] = {"num_workers": "resources.rollout.num_workers"}
    backend: Literal["vllm", "hf", "auto"] = "auto"
    """Sampling engine: vllm, hf (transformers ``generate``), or auto (vllm when it imports,
    else hf)."""
    temperature: float = 1.0
    """Sampling temperature; 0 means greedy. Behaviour logprobs are taken under logits / T."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with this much probability; 1 keeps all.
    Below 1 the behaviour logprobs are those of the truncated distribution (see Sample)."""
    top_k: int = -1
    """Keep only the k most likely tokens; -1 keeps all."""
    max_new_tokens: int = 64
    """Most tokens generated per response; a response cut here has finish_reason "length"."""
    n_samples: int = 1
    """Samples per prompt (best-of-K uses K)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Engine dtype. Must equal the trainer's, else rollout and trainer logprobs disagree."""
    max_model_len: int = 512
    """Longest prompt + response a worker accepts (vLLM sizes its KV cache blocks by it)."""
    tensor_parallel_size: int = 1
    """GPUs one rollout worker shards its engine across (vLLM tensor parallelism, on one
    node). Each worker reserves a bundle of this many GPUs; resources.rollout.gpus_per_worker
    must equal it. CPU engines take 1 only."""
    gpu_memory_utilization: float = 0.5
    """vLLM on GPU: share of GPU memory the engine may take (weights + KV cache). Lower it when
    the rollout worker shares a GPU with a trainer."""
    cpu_kv_cache_gib: float = 1.0
    """vLLM on CPU: KV cache size in GiB (what VLLM_CPU_KVCACHE_SPACE sets, here passed as
    kv_cache_memory_bytes so fractions work; an exported VLLM_CPU_KVCACHE_SPACE still wins).
    Ignored on GPU."""
    cpu_max_batched_tokens: int = 65536
    """vLLM on CPU: tokens one engine step may hold. A prefill longer than this is chunked,
    which vLLM's CPU build cannot do for seeded requests; keep it above the prompt tokens of
    one generate call (prompts x samples x prompt length)."""
    enforce_eager: bool = True
    """vLLM: skip CUDA graph capture / torch.compile (faster start; slower decoding on GPU)."""
    seed: int = 0
    """Base seed; a generate call without its own seed draws one from this and a call counter,
    so a run repeats exactly."""

    def validate(self) -> list[str]:
        out = []
        if self.backend not in BACKENDS:
            out.append(f"backend: {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.temperature < 0:
            out.append(f"temperature: must be >= 0 (0 is greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            out.append(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k != -1 and self.top_k < 1:
            out.append(f"top_k: must be -1 (off) or at least 1, got {self.top_k}")
        if self.max_new_tokens < 1:
            out.append(f"max_new_tokens: must be at least 1, got {self.max_new_tokens}")
        if self.n_samples < 1:
            out.append(f"n_samples: must be at least 1, got {self.n_samples}")
        if self.dtype not in DTYPES:
            out.append(f"dtype: {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.max_model_len <= self.max_new_tokens:
            out.append(
                f"max_model_len ({self.max_model_len}) must exceed max_new_tokens "
                f"({self.max_new_tokens}) to leave room for the prompt"
            )
        if not 0 < self.gpu_memory_utilization <= 1:
            out.append(f"gpu_memory_utilization: must be in (0, 1], got {self.gpu_memory_utilization}")
        if isinstance(self.tensor_parallel_size, bool) or not isinstance(self.tensor_parallel_size, int) \
                or self.tensor_parallel_size < 1:
            out.append(f"tensor_parallel_size: must be a whole number of at least 1, got {self.tensor_parallel_size!r}")
        if self.cpu_kv_cache_gib <= 0:
            out.append(f"cpu_kv_cache_gib: must be positive, got {self.cpu_kv_cache_gib}")
        if self.seed < 0:
            out.append(f"seed: must be >= 0, got {self.seed}")
        return out
