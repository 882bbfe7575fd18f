"""Generation throughput of a rollout backend, for ``rayrlhf bench``."""
from __future__ import annotations

import time

from rayrlhf.rollout.types import RolloutBackend


def tokens_per_second(backend: RolloutBackend, prompt_ids: list[list[int]], n: int = 1,
                      repeats: int = 3) -> float:
    """Generated tokens per wall-clock second over ``repeats`` calls.

    One call before timing is excluded: it pays one-off costs (vLLM's first logprobs request
    takes seconds, allocator growth).
    """
    backend.generate(prompt_ids, n=n, seed=0)
    tokens, seconds = 0, 0.0
    for r in range(repeats):
        start = time.perf_counter()
        samples = backend.generate(prompt_ids, n=n, seed=r + 1)
        seconds += time.perf_counter() - start
        tokens += sum(len(s.response_ids) for s in samples)
    return tokens / seconds
