"""Reward sources: reward-model actors and rule-based functions, one interface.

``score(prompts, responses, meta) -> list[float]`` where prompts are chat-message lists and
responses are texts, so a reward model with its own tokenizer (a different family than the
policy's) scores exactly what it was trained on: its chat template, the response, EOS.
"""
from __future__ import annotations

import json
import os

import torch

from rayrlhf.data.tokenize import encode_response, render_prompt


class RewardModelWorker:
    """A trained scalar reward model (an `rayrlhf rm` export or any HF sequence classifier)."""

    def __init__(self, name: str, model_path: str, normalize: bool = True, trust_remote_code: bool = False,
                 dtype: str = "float32", micro_batch: int = 64, max_len: int = 1024, num_threads: int = 1,
                 wants_gpu: bool = False, fake_gpus: bool = False, config_key: str = "resources.rewards",
                 quantization: str = "none"):
        from rayrlhf.models import load_scalar_model, load_tokenizer
        from rayrlhf.utils.quiet import quiet_libraries

        quiet_libraries()
        torch.set_num_threads(max(1, num_threads))
        self.name, self.micro_batch, self.max_len = name, micro_batch, max_len
        from rayrlhf.utils.ray_init import note_restart

        note_restart(self.name)
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        from rayrlhf.engine.device import resolve_device

        self.device = resolve_device(wants_gpu, name, config_key, fake_gpus)
        self.model = load_scalar_model(model_path, dtype, trust_remote_code, pad_token_id=self.tokenizer.pad_token_id)
        if quantization != "none":
            from rayrlhf.engine.quant import quantize_linears

            quantize_linears(self.model, quantization, dtype, self.device)  # layer by layer onto the device
        self.model.to(self.device).eval().requires_grad_(False)
        # Scores are standardised with the held-out statistics the rm stage recorded, so
        # several reward models combine on one scale (and Llama 2's threshold applies).
        self.mean, self.std = 0.0, 1.0
        info = os.path.join(model_path, "rayrlhf.json")
        if normalize and os.path.exists(info):
            with open(info, encoding="utf-8") as f:
                meta = json.load(f)
            if meta.get("score_mean") is not None and meta.get("score_std"):
                self.mean, self.std = float(meta["score_mean"]), float(meta["score_std"])

    def __repr__(self) -> str:
        return f"RewardModelWorker({self.name})"

    @torch.no_grad()
    def score(self, prompts: list[list[dict]], responses: list[str], meta: list[dict] | None = None) -> list[float]:
        from rayrlhf.data.tokenize import pad_right

        rows = []
        for p, r in zip(prompts, responses):
            ids = render_prompt(self.tokenizer, p) + encode_response(self.tokenizer, r)
            rows.append(ids[-self.max_len:])
        out = []
        pad = self.tokenizer.pad_token_id
        for i in range(0, len(rows), self.micro_batch):
            chunk = rows[i:i + self.micro_batch]
            ids = pad_right(chunk, pad)
            mask = pad_right([[1] * len(r) for r in chunk], 0)
            r = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float().squeeze(-1).cpu()
            out.extend(((r - self.mean) / self.std).tolist())
        return out

    def ping(self) -> str:
        return self.name


class FunctionReward:
    """A rule-based reward: an importable callable ``f(prompt: str, response: str, **args) -> float``.

    The prompt passed is the text of the last user message. A callable that declares a ``row``
    parameter is called ``f(prompt, response, row=meta, **args)``, ``meta`` being the prompt
    row's other fields (a ground truth for a verifiable reward); the signature is read once,
    here. Runs on the driver (cheap rules) or wrapped in an actor like any other source.
    """

    def __init__(self, name: str, path: str, args: dict | None = None):
        from rayrlhf.tasks import resolve

        self.name, self.path, self.args = name, path, dict(args or {})
        self.fn = resolve(path)
        self.takes_row = takes_row(self.fn)

    def __repr__(self) -> str:
        return f"FunctionReward({self.name}={self.path})"

    def score(self, prompts: list[list[dict]], responses: list[str], meta: list[dict] | None = None) -> list[float]:
        if not self.takes_row:
            return [float(self.fn(last_user_text(p), r, **self.args)) for p, r in zip(prompts, responses)]
        meta = meta if meta is not None else [{}] * len(prompts)
        return [float(self.fn(last_user_text(p), r, row=dict(m), **self.args))
                for p, r, m in zip(prompts, responses, meta)]


def takes_row(fn) -> bool:
    """Whether the rule ``fn`` declares a parameter named ``row`` (the prompt row's fields)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("row")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def check_row_fields(rewards: list, records: list) -> None:
    """Every prompt row carries the field each row-reading rule source names in ``args.field``
    (or, without it, its callable's default ``field``, as ``rayrlhf.rules:exact_match`` and
    ``numeric_match`` have): a DataValidationError naming each row, the field and the source
    that needs it, before any actor starts."""
    from rayrlhf.data.problems import Problem
    from rayrlhf.data.validate import DataValidationError
    from rayrlhf.tasks import resolve

    problems = []
    for r in rewards:
        fn = resolve(r.function) if r.function else None
        if fn is None or not takes_row(fn):
            continue
        field = (r.args or {}).get("field", _default_field(fn))
        if not isinstance(field, str):
            continue
        for rec in records:
            if field not in rec.meta:
                where = (rec.source.file, rec.source.line) if rec.source else ("<prompts>", 0)
                problems.append(Problem(*where, field,
                                        f"reward source {r.name!r} ({r.function}) reads each prompt row's "
                                        f"{field!r} field as its reference answer; this row has none"))
    if problems:
        raise DataValidationError(problems)


def _default_field(fn) -> str | None:
    """The default of ``fn``'s ``field`` parameter where it has a string one."""
    import inspect

    try:
        p = inspect.signature(fn).parameters.get("field")
    except (TypeError, ValueError):
        return None
    return p.default if p is not None and isinstance(p.default, str) else None


def last_user_text(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    return messages[-1]["content"] if messages else ""
