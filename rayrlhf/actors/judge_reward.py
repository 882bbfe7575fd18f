"""An AI judge as a reward source in PPO and rejection sampling (RLAIF, Lee et al. 2023).

    rewards:
      - {name: judge, model: runs/rlaif/judge/export, judge: my_judge.yaml}

With a ``direct`` template the reward is the judge's expected rating of the response (d-RLAIF);
with a ``pairwise`` one, the judge's probability (both orders averaged) that the response beats
the prompt row's reference response (``reference_field``, e.g. an SFT demonstration).
"""
from __future__ import annotations

import torch

from rayrlhf.feedback.judge import Judge
from rayrlhf.feedback.template import load_template


def reward_template_problem(t) -> str | None:
    """Why a judge template cannot give rewards, or None."""
    if t.chain_of_thought:
        return "a judge reward reads the rating directly: set chain_of_thought: false in its template"
    if t.principles == "sample" and len(t.constitution) > 1:
        return ("a judge reward must not depend on where a response sits in a batch: set principles: all "
                "(or keep one principle) in its template")
    return None


class JudgeRewardWorker:
    def __init__(self, name: str, model_path: str, template: str, reference_field: str = "reference",
                 trust_remote_code: bool = False, dtype: str = "float32", num_threads: int = 1, seed: int = 0,
                 wants_gpu: bool = False, fake_gpus: bool = False, config_key: str = "resources.rewards",
                 quantization: str = "none", micro_batch: int = 8):
        from rayrlhf.engine.device import resolve_device
        from rayrlhf.models import load_causal_lm, load_tokenizer
        from rayrlhf.rollout.hf_backend import next_token_logprobs
        from rayrlhf.utils.quiet import quiet_libraries

        quiet_libraries()
        torch.set_num_threads(max(1, num_threads))
        self.name, self.reference_field = name, reference_field
        from rayrlhf.utils.ray_init import note_restart

        note_restart(self.name)
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        self.device = resolve_device(wants_gpu, name, config_key, fake_gpus)
        self.model = load_causal_lm(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
        if quantization != "none":
            from rayrlhf.engine.quant import quantize_linears

            quantize_linears(self.model, quantization, dtype, self.device)  # layer by layer onto the device
        self.model.to(self.device).eval().requires_grad_(False)
        pad = self.tokenizer.pad_token_id

        def choice_logprobs(ids, choices):
            return next_token_logprobs(self.model, ids, choices, pad, self.device, micro_batch)

        self.template = load_template(template)
        problem = reward_template_problem(self.template)
        if problem:
            raise ValueError(f"{name}: {problem}")
        self.judge = Judge(self.template, self.tokenizer, choice_logprobs, seed=seed)

    def __repr__(self) -> str:
        return f"JudgeRewardWorker({self.name})"

    def score(self, prompts: list[list[dict]], responses: list[str], meta: list[dict] | None = None) -> list[float]:
        if self.template.kind == "direct":
            return self.judge.rate(prompts, responses).tolist()
        meta = meta or [{}] * len(prompts)
        references = [m[self.reference_field] for m in meta]
        return self.judge.label(prompts, responses, references).p_a.tolist()

    def ping(self) -> str:
        return self.name


def check_references(rewards: list, records: list) -> None:
    """Every prompt row carries the reference response each pairwise judge source compares with:
    a DataValidationError naming each row and field that does not, before any actor starts."""
    from rayrlhf.data.problems import Problem, describe
    from rayrlhf.data.validate import DataValidationError

    problems = []
    for r in rewards:
        if not r.judge or load_template(r.judge).kind != "pairwise":
            continue
        for rec in records:
            value = rec.meta.get(r.reference_field)
            if not isinstance(value, str) or not value.strip():
                where = (rec.source.file, rec.source.line) if rec.source else ("<prompts>", 0)
                problems.append(Problem(*where, r.reference_field,
                                        f"reward source {r.name!r} (a pairwise judge) compares each response with "
                                        f"this field's response; found {describe(value)}"))
    if problems:
        raise DataValidationError(problems)
