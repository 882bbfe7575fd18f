"""Rollouts with transformers ``generate``: the fallback where vLLM is not installed.

Sampling semantics match the vLLM backend: temperature, then top-k, then top-p, from float32
logits; behaviour logprobs are ``log_softmax`` of the processed scores (see ``Sample``).
"""
from __future__ import annotations

import time

import torch

from rayrlhf.rollout.checksum import weights_checksum
from rayrlhf.rollout.common import SeedCounter, complete_tied_weights, nbytes, start_call
from rayrlhf.rollout.config import RolloutSection
from rayrlhf.rollout.types import Sample

# Values that switch off every sampling knob we don't expose, so that a checkpoint's
# generation_config.json (a repetition penalty, say) cannot change what is sampled: vLLM
# ignores those too when it is given explicit SamplingParams.
NEUTRAL = dict(repetition_penalty=1.0, no_repeat_ngram_size=0, typical_p=1.0, min_p=None,
               epsilon_cutoff=0.0, eta_cutoff=0.0, min_new_tokens=0,
               num_beams=1, renormalize_logits=False, suppress_tokens=None,
               begin_suppress_tokens=None, bad_words_ids=None, forced_bos_token_id=None,
               forced_eos_token_id=None)


class HFBackend:
    name = "hf"

    def __init__(self, model_path: str, tokenizer_path: str | None = None,
                 cfg: RolloutSection | None = None, trust_remote_code: bool = False):
        from rayrlhf.models import load_causal_lm, load_tokenizer

        self.cfg = cfg or RolloutSection()
        self.tokenizer = load_tokenizer(tokenizer_path or model_path, trust_remote_code=trust_remote_code)
        self.model = load_causal_lm(model_path, dtype=self.cfg.dtype, trust_remote_code=trust_remote_code)
        # The GPU of the worker's bundle where there is one (Ray sets CUDA_VISIBLE_DEVICES).
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.tied = bool(getattr(self.model.config.get_text_config(), "tie_word_embeddings", False))
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.version = 0
        self._seeds = SeedCounter(self.cfg.seed)

    def _eos_ids(self) -> list[int]:
        # Like vLLM: the tokenizer's EOS plus any the checkpoint's generation config adds
        # (Llama 3 ends turns with <|eot_id|>, listed only there).
        ids = {self.tokenizer.eos_token_id}
        extra = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(extra if isinstance(extra, list) else [extra] if extra is not None else [])
        return sorted(i for i in ids if i is not None)

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int | None = None,
                 seed: int | None = None) -> list[Sample]:
        cfg = self.cfg
        n, seed = start_call(cfg, self._seeds, prompt_ids, n, seed)
        if not prompt_ids:
            return []
        # Left padding so every row's next token is at the last column; generate derives
        # position ids from the attention mask, so padding does not shift RoPE positions.
        # Rows are repeated here rather than with num_return_sequences, which greedy refuses.
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids) * n, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for r in range(len(prompt_ids) * n):
            ids = prompt_ids[r // n]
            input_ids[r, width - len(ids):] = torch.tensor(ids)
            attention_mask[r, width - len(ids):] = 1
        greedy = cfg.temperature == 0
        sampling = {} if greedy else dict(temperature=cfg.temperature, top_p=cfg.top_p,
                                          top_k=max(cfg.top_k, 0))
        # fork_rng: generate samples from the global generator; seeding a private copy makes
        # the call reproducible without disturbing anyone else's random stream.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(seed)
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                do_sample=not greedy,
                max_new_tokens=cfg.max_new_tokens,
                eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
                output_scores=True, return_dict_in_generate=True, **sampling, **NEUTRAL,
            )
        new_tokens = out.sequences[:, width:].cpu()  # (B*n, steps); rows are prompt-major
        # scores: processed logits (after temperature / top-k / top-p), one (B*n, V) per step.
        scores = torch.stack(out.scores, dim=1).float().cpu()  # (B*n, steps, V)
        logprobs = torch.log_softmax(scores, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        return self._samples(prompt_ids, n, new_tokens.tolist(), logprobs.tolist())

    def _samples(self, prompt_ids, n, rows, row_logprobs) -> list[Sample]:
        samples = []
        eos = set(self.eos_ids)
        for r, (tokens, lps) in enumerate(zip(rows, row_logprobs)):
            end = next((k + 1 for k, t in enumerate(tokens) if t in eos), None)
            finish = "stop" if end is not None else "length"
            end = end if end is not None else len(tokens)
            i, j = divmod(r, n)
            samples.append(Sample(
                prompt_index=i, sample_index=j, prompt_ids=list(prompt_ids[i]),
                response_ids=tokens[:end], logprobs=lps[:end],
                text=self.tokenizer.decode(tokens[:end], skip_special_tokens=True),
                finish_reason=finish, policy_version=self.version,
            ))
        return samples

    def load_weights(self, named_tensors: dict[str, torch.Tensor], version: int) -> dict:
        start = time.perf_counter()
        checksum = weights_checksum(named_tensors)
        full = complete_tied_weights(named_tensors, self.tied)
        self.model.load_state_dict(full, strict=True)
        self.version = version
        return {"version": version, "checksum": checksum,
                "seconds": time.perf_counter() - start, "bytes": nbytes(named_tensors)}

    @torch.no_grad()
    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        ids = torch.tensor([token_ids])
        logits = self.model(input_ids=ids.to(self.device)).logits[0, :-1].float().cpu()  # (T-1, V)
        return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1).tolist()

    def choice_logprobs(self, prompt_ids: list[list[int]], choices: list[list[int]]) -> list[list[float]]:
        """``log_softmax(logits)`` (T=1) of each candidate next token after each prompt."""
        return next_token_logprobs(self.model, prompt_ids, choices, self.pad_id, self.device)


@torch.no_grad()
def next_token_logprobs(model, prompt_ids: list[list[int]], choices: list[list[int]], pad_id: int, device,
                        micro_batch: int = 8) -> list[list[float]]:
    """``log_softmax(logits)`` at the position after each prompt, at its candidate tokens: one
    forward pass per micro-batch of right-padded prompts."""
    out = []
    for start in range(0, len(prompt_ids), micro_batch):
        rows = prompt_ids[start:start + micro_batch]
        ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):  # right padding: each row's last real position is len - 1
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = logits[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])].float().cpu()
        lp = torch.log_softmax(last, -1)  # (rows, V)
        out += [lp[i, c].tolist() for i, c in enumerate(choices[start:start + micro_batch])]
    return out
