"""The GPU memory plan of a config, checked before any actor starts; no weights are loaded.

    plan = plan_memory("ppo", load_config(PPOConfig, "jobs/x.yaml"))
    print(format_memory(plan))        # one row per role: weights, grads, optim, activations, ...
    plan.problems()                   # one message per role that cannot fit its GPU, with fixes
    check_memory("ppo", cfg)          # raises ConfigError with those messages

Each role's model is read from its config.json (a local folder, the Hugging Face cache, or a
copy bundled in rayrlhf/engine/model_configs/); the arithmetic is in memory_model.py. Roles on
the same GPU (colocate_with) are summed per GPU.
"""
from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass, field, replace

from rayrlhf.config.loader import ConfigError, _looks_local
from rayrlhf.config.schema import SUPERVISED_COMMANDS
from rayrlhf.config.ppo import resolve_derived
from rayrlhf.engine.memory_model import (CUDA_CONTEXT_BYTES, DTYPE_BYTES, GIB, ModelShape, TrainSetup,
                                         activation_bytes, frozen_bytes, rollout_bytes, trained_bytes)
from rayrlhf.engine.memory_fixes import fixes_for
from rayrlhf.placement.report import _gib, _params, format_memory

__all__ = ["MemoryPlan", "MemoryRow", "check_memory", "format_memory", "pipeline_model_configs", "plan_memory",
           "planned_roles", "read_model_config"]

BUNDLED_CONFIGS = os.path.join(os.path.dirname(__file__), "model_configs")
RS_SCORE_ROWS = 64
"""Rows a reward model scores at once in rejection sampling (RewardModelWorker's micro_batch;
rs has no forward_micro_batch_size)."""


@dataclass
class MemoryRow:
    """One worker of a role on one GPU (gpu None: a CPU role). Bytes throughout."""

    role: str
    rank: int
    gpu: int | None
    bundle: str
    """Placement group and bundle (``trainer/0``); ``worker/3`` for Ray Train workers."""
    config_key: str
    """The model's config section (policy, critic, rewards[1].model, rollout, model)."""
    resources_key: str
    model: str
    params: int
    weights: int
    grads: int
    optimizer: int
    activations: int
    """The activations in effect (the configured checkpointing; no-grad forward passes too)."""
    activations_full: int
    activations_checkpointed: int
    kv_cache: int
    kv_tokens: int
    context: int
    total: int
    """This worker's bytes on this GPU (or in host memory, for a CPU role)."""
    host: int
    """Host memory: cpu_offload's sharded state, or everything of a CPU role."""
    gpu_total: int = 0
    """Every worker on this GPU together."""
    gpu_memory: int = 0
    gpu_share: float = 1.0
    """This worker's part of what the workers on its GPU reserved (0.5 of 0.5 + 0.5)."""


@dataclass
class MemoryPlan:
    command: str
    gpu_memory: int
    rows: list[MemoryRow]
    notes: list[str] = field(default_factory=list)
    checks: list[tuple[str, str, str]] = field(default_factory=list)
    """(role, "gpu" or "engine", what does not fit), found before fixes are searched: "gpu", a GPU
    holds more than its memory; "engine", a vLLM engine's own budget is too small."""
    _redo: object = None
    _problems: list | None = None

    def roles(self) -> list[str]:
        return list(dict.fromkeys(r.role for r in self.rows))

    def failing_roles(self) -> list[str]:
        return list(dict.fromkeys(role for role, _, _ in self.checks))

    def fits_alone(self, role: str) -> bool:
        """``role`` has no problem of its own: each GPU it is on fits, or (a shared GPU) it stays
        within its share of that GPU (its gpus_per_worker over all reserved there), and a rollout
        engine's weights and one max_model_len sequence fit its budget."""
        rows = [r for r in self.rows if r.role == role and r.gpu is not None]
        engine_ok = not any(r == role and kind == "engine" for r, kind, _ in self.checks)
        return engine_ok and all(r.gpu_total <= r.gpu_memory or r.total <= r.gpu_share * r.gpu_memory for r in rows)

    def problems(self) -> list[str]:
        """One message per role that cannot fit its GPU, with the settings that would fit."""
        if self._problems is None:
            self._problems = self._find_problems()
        return list(self._problems)

    def _find_problems(self) -> list[str]:
        out = []
        for role in self.failing_roles():
            row = max((r for r in self.rows if r.role == role), key=lambda r: r.gpu_total)
            what = "; ".join(msg for r, _, msg in self.checks if r == role)
            head = (f"{row.resources_key} / {row.config_key} ({role}, {row.model}, {_params(row.params)} "
                    f"parameters): {what}")
            fixes = fixes_for(self._redo, self.command, role) if self._redo else []
            tail = ("fits with: " + "; or ".join(fixes)) if fixes else \
                "no single change tried fits (strategy: fsdp, more workers, cpu_offload, gradient " \
                "checkpointing, smaller micro-batches, tensor parallelism); use more or larger GPUs"
            out.append(f"{head}. {tail}")
        return out


# -- config.json ---------------------------------------------------------------------------------

def read_model_config(name_or_path: str, key: str, known: dict | None = None) -> dict:
    """The config.json of a model: a local folder, a planned pipeline output (``known``), the
    Hugging Face cache, or a bundled copy. Never reaches the network."""
    local = os.path.join(name_or_path, "config.json")
    if os.path.isfile(local):
        with open(local, encoding="utf-8") as f:
            return json.load(f)
    if known and name_or_path in known:
        found = known[name_or_path]
        if isinstance(found, str):
            raise ConfigError([f"{key}: {found}"])
        return found
    if _looks_local(name_or_path) or os.path.isdir(name_or_path):
        raise ConfigError([f"{key}: {name_or_path} has no config.json (yet): point it at a model folder, "
                           "or plan the pipeline that writes it"])
    cached = _hf_cached_config(name_or_path)
    if cached:
        with open(cached, encoding="utf-8") as f:
            return json.load(f)
    bundled = os.path.join(BUNDLED_CONFIGS, name_or_path.replace("/", "--") + ".json")
    if os.path.isfile(bundled):
        with open(bundled, encoding="utf-8") as f:
            return json.load(f)
    raise ConfigError([f"{key}: no config.json for {name_or_path!r} in the Hugging Face cache nor among the "
                       f"bundled ones ({', '.join(bundled_models())}): download its config.json "
                       f"(huggingface-cli download {name_or_path} config.json) or point {key} at a local folder"])


def bundled_models() -> list[str]:
    return sorted(n[:-len(".json")].replace("--", "/") for n in os.listdir(BUNDLED_CONFIGS) if n.endswith(".json"))


def _hf_cached_config(name: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        path = try_to_load_from_cache(name, "config.json")
    except Exception:  # a name the hub would reject (not org/name): not in the cache either
        return None
    return path if isinstance(path, str) and os.path.isfile(path) else None


def pipeline_model_configs(pipeline, run_dir: str, configs: list) -> dict:
    """What each stage of a pipeline will write, before it runs: ``{folder}/export`` has the
    architecture of the model the stage trained from; toyworld's base_model is its tiny spec.
    Values are config dicts, or a message saying why the architecture is unknown."""
    known: dict = {}
    for spec, cfg in zip(pipeline.stages, configs):
        folder = os.path.join(run_dir, spec.name)
        if spec.kind == "toyworld":
            m = cfg.model
            known[os.path.join(cfg.out, "base_model")] = {
                "model_type": "llama", "vocab_size": cfg.vocab_size, "hidden_size": m.hidden_size,
                "intermediate_size": m.intermediate_size, "num_hidden_layers": m.num_layers,
                "num_attention_heads": m.num_heads, "num_key_value_heads": m.num_kv_heads or m.num_heads,
                "tie_word_embeddings": m.tie_word_embeddings}
            continue
        section, key = (cfg.model, "model") if spec.kind in SUPERVISED_COMMANDS else (cfg.policy, "policy")
        try:
            known[os.path.join(folder, "export")] = read_model_config(section.name_or_path, key, known)
        except ConfigError as e:
            known[os.path.join(folder, "export")] = f"the {spec.name} stage's input is unknown ({e.problems[0]})"
    return known


# -- roles ---------------------------------------------------------------------------------------

@dataclass
class _Role:
    role: str
    config_key: str
    resources_key: str
    model: str
    kind: str
    """trained, frozen or rollout."""
    section: object = None
    workers: int = 1
    tokens: int = 0
    forward_tokens: int = 0
    lm_head: bool = True


def reward_rows(cfg) -> int:
    """Rows a reward model scores at once: PPO's forward micro-batch, or RS_SCORE_ROWS (the
    plan and rayrlhf.driver.roles both read it here)."""
    ppo = getattr(cfg, "ppo", None)
    return ppo.forward_micro_batch_size if ppo is not None else RS_SCORE_ROWS


JUDGE_CHARS_PER_TOKEN = 3
"""A judge template's text per token when the judge's folder has no tokenizer yet (a pipeline
output): fewer than the 4 or so of English text, so the estimate errs long."""


@functools.lru_cache(maxsize=None)
def _template_tokens(model: str, template: str) -> tuple[int, int]:
    """Tokens of an AI judge's prompt without its request and responses (preamble, principles,
    few-shot examples, the sample's own text, and its reply up to the choice), and how many
    responses the prompt shows."""
    from rayrlhf.feedback.template import load_template

    t = load_template(template)
    shown = 1 if t.kind == "direct" else 2
    text = t.question("", "", None if t.kind == "direct" else "", t.principles_for(0, 0))
    if not os.path.isfile(os.path.join(model, "tokenizer_config.json")):
        return math.ceil(len(text + t.reply()) / JUDGE_CHARS_PER_TOKEN) + 1, shown
    from rayrlhf.feedback.judge import head_ids
    from rayrlhf.models import load_tokenizer

    tok = load_tokenizer(model)
    return len(head_ids(tok, t, text)) + len(tok.encode(t.reply(), add_special_tokens=False)) + 1, shown


def judge_tokens(source, cfg) -> int:
    """The longest prompt an AI judge reward source scores: its template's tokens, the longest
    request, and the longest response for each response it shows (a pairwise judge's
    reference counted as long as a response)."""
    template, shown = _template_tokens(source.model, source.judge)
    return template + cfg.data.max_prompt_tokens + shown * cfg.rollout.max_new_tokens


def planned_roles(command: str, cfg) -> list[str]:
    """The roles a ppo/rs run starts (as rayrlhf.driver.roles places them)."""
    return [r.role for r in _roles(command, cfg)]


def _roles(command: str, cfg) -> list[_Role]:
    if command in SUPERVISED_COMMANDS:
        pairs = 1 if command == "sft" else 2
        tokens = cfg.train.per_worker_micro_batch_size * pairs * (cfg.data.max_prompt_tokens + cfg.data.max_response_tokens)
        return [_Role(command, "model", "scaling", cfg.model.name_or_path, "trained", cfg.model,
                      cfg.scaling.num_workers, tokens, 0, lm_head=command != "rm")]
    seq = min(cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens, cfg.rollout.max_model_len)
    res, pol = cfg.resources, cfg.policy
    if command == "ppo":
        micro, fwd = cfg.ppo.per_worker_micro_batch_size * seq, cfg.ppo.forward_micro_batch_size * seq
        uses_reference = not cfg.reference_from_policy  # under LoRA the policy computes them itself
    else:  # rs: a micro-batch of kept samples, pairs (dpo) or K-lists (rrhf)
        micro = cfg.rs.per_worker_micro_batch_size * cfg.sequences_per_example * seq
        fwd = cfg.rs.per_worker_micro_batch_size * seq if cfg.rs.objective == "dpo" else 0
        uses_reference = cfg.uses_reference
    out = [_Role("trainer", "policy", "resources.trainer", pol.name_or_path, "trained", pol,
                 res.trainer.num_workers, micro, fwd)]
    if command == "ppo" and cfg.ppo.uses_critic:  # the group baselines and REINFORCE++ have no critic
        critic = resolve_derived(cfg.critic, pol)
        out.append(_Role("critic", "critic", "resources.critic", critic.name_or_path, "trained", critic,
                         res.critic.num_workers, micro, fwd, lm_head=False))
    if uses_reference:
        ref = resolve_derived(cfg.reference, pol)
        out.append(_Role("reference", "reference", "resources.reference", ref.name_or_path, "frozen", ref,
                         res.reference.num_workers, 0, fwd))
    out.append(_Role("rollout", "rollout", "resources.rollout", pol.name_or_path, "rollout", cfg.rollout,
                     res.rollout.num_workers))
    rows = reward_rows(cfg)
    for i, r in enumerate(cfg.rewards):
        if r.model and r.name in res.rewards:
            # Reward models compute in the policy's dtype (rayrlhf.driver.roles). An AI judge scores
            # whole judge prompts with its LM head's logits over every position.
            out.append(_Role(f"reward/{r.name}", f"rewards[{i}].model", f"resources.rewards.{r.name}", r.model,
                             "frozen", replace(pol, name_or_path=r.model, quantization=r.quantization),
                             res.rewards[r.name].num_workers,
                             0, rows * (judge_tokens(r, cfg) if r.judge else seq), lm_head=bool(r.judge)))
    return out


def _estimate(r: _Role, shape: ModelShape, gpu_bytes: int, on_gpu: bool):
    s = r.section
    e = DTYPE_BYTES[s.dtype]
    if r.kind == "rollout":
        if on_gpu:
            return rollout_bytes(shape, s.dtype, s.tensor_parallel_size, s.gpu_memory_utilization, gpu_bytes)
        out = frozen_bytes(shape, s.dtype, True, 0)
        out.kv_cache = int(s.cpu_kv_cache_gib * GIB)
        out.kv_tokens = out.kv_cache // shape.kv_bytes_per_token(e)
        return out
    if r.kind == "frozen":
        return frozen_bytes(shape, s.dtype, r.lm_head, r.forward_tokens, s.quantization)
    fsdp = s.strategy == "fsdp"
    autocast = not fsdp and e < 4
    acts = activation_bytes(shape, r.tokens, e, r.lm_head, autocast, r.forward_tokens)
    setup = TrainSetup(dtype=s.dtype, strategy=s.strategy, workers=r.workers, cpu_offload=fsdp and s.cpu_offload,
                       reshard_after_forward=s.reshard_after_forward,
                       gradient_checkpointing=s.gradient_checkpointing, lm_head=r.lm_head,
                       lora_r=s.lora.r, lora_targets=tuple(s.lora.target_modules),
                       quantization=s.quantization if s.lora.enabled else "none")
    return trained_bytes(shape, setup, acts)


def _gpu_slots(command: str, cfg, roles: list[_Role], notes: list[str]) -> dict[str, list[tuple[str, list[int]]]]:
    """Role -> per worker (bundle label, GPU ids it computes on); [] for a CPU worker."""
    if command in SUPERVISED_COMMANDS:
        on = cfg.scaling.use_gpu
        return {command: [(f"worker/{i}", [i] if on else [], 1.0) for i in range(cfg.scaling.num_workers)]}
    from rayrlhf.config.resources import gpu_capacity
    from rayrlhf.placement.plan import plan_placement

    res = cfg.resources.roles()
    plan = plan_placement(cfg.resources, roles=[r.role for r in roles])
    out: dict = {r: [] for r in plan.roles}
    next_gpu = 0
    for g in plan.groups.values():
        host = res[g.name]
        for i, bundle in enumerate(g.bundles):
            ids = []
            if bundle.get("GPU", 0) > 0:
                n = int(gpu_capacity(host))
                ids, next_gpu = list(range(next_gpu, next_gpu + n)), next_gpu + n
            for role in g.roles:
                for w in plan.roles[role].workers:
                    if w.bundle_index == i:
                        uses = ids[:max(1, math.ceil(w.num_gpus))] if w.num_gpus > 0 else []
                        out[role].append((f"{g.name}/{i}", uses, min(1.0, w.num_gpus)))
    for role, rc in res.items():
        if role in plan.roles and rc.colocate_with is None and 0 < rc.gpus_per_worker < 1 and len(plan.groups[role].roles) == 1:
            notes.append(f"{role} asks for {rc.gpus_per_worker:g} GPU per worker without colocate_with: counted on "
                         "a GPU of its own (Ray may pack separate placement groups onto one GPU, which cannot be "
                         "known before placement)")
    return out


def plan_memory(command: str, cfg, known: dict | None = None) -> MemoryPlan:
    """The memory of every role of ``cfg`` (an SFTConfig, RMConfig, PPOConfig or RSConfig), per
    worker and per GPU. ``known`` maps model folders a pipeline has not written yet to their
    config (pipeline_model_configs). Raises ConfigError when a GPU role's model has no config.json."""
    if command not in SUPERVISED_COMMANDS + ("ppo", "rs"):
        raise ValueError(f"command {command!r}: expected one of {', '.join(SUPERVISED_COMMANDS)}, ppo or rs")
    scaling = cfg.scaling if command in SUPERVISED_COMMANDS else cfg.resources
    gpu_bytes = int(scaling.gpu_memory_gib * GIB)
    roles, notes = _roles(command, cfg), []
    slots = _gpu_slots(command, cfg, roles, notes)
    rows, checks, errors = [], [], []
    for r in roles:
        on_gpu = any(ids for _, ids, _ in slots[r.role])
        try:
            shape = ModelShape.from_config(read_model_config(r.model, r.config_key, known))
        except (ConfigError, KeyError) as e:
            msg = e.problems[0] if isinstance(e, ConfigError) else f"{r.config_key}: {e}"
            (errors if on_gpu else notes).append(msg if on_gpu else f"{r.role}: no estimate: {msg}")
            continue
        est = _estimate(r, shape, gpu_bytes, on_gpu)
        params = shape.lm_params() if r.lm_head else shape.scalar_params()
        tp = r.section.tensor_parallel_size if r.kind == "rollout" else 1
        for rank, (bundle, ids, reserved) in enumerate(slots[r.role]):
            where = ids[:tp] if r.kind == "rollout" else ids[:1]
            for gpu in where or [None]:
                ctx = CUDA_CONTEXT_BYTES if gpu is not None else 0
                total = est.total + ctx
                if r.kind == "rollout" and gpu is not None:
                    total = max(est.total, int(r.section.gpu_memory_utilization * gpu_bytes)) + ctx
                rows.append(MemoryRow(r.role, rank, gpu, bundle, r.config_key, r.resources_key, r.model, params,
                                      est.weights, est.grads, est.optimizer, est.activations, est.activations_full,
                                      est.activations_checkpointed, est.kv_cache, est.kv_tokens, ctx, total,
                                      est.host + (total if gpu is None else 0), gpu_memory=gpu_bytes,
                                      gpu_share=reserved))
        if r.kind == "rollout" and on_gpu:
            checks.extend(_rollout_checks(r, est, gpu_bytes))
    if errors:
        raise ConfigError(errors)
    per_gpu: dict[int, int] = {}
    reserved_on: dict[int, float] = {}
    for row in rows:
        if row.gpu is not None:
            per_gpu[row.gpu] = per_gpu.get(row.gpu, 0) + row.total
            reserved_on[row.gpu] = reserved_on.get(row.gpu, 0.0) + row.gpu_share
    for row in rows:
        row.gpu_total = per_gpu.get(row.gpu, 0) if row.gpu is not None else row.total
        if row.gpu is not None:
            row.gpu_share = row.gpu_share / reserved_on[row.gpu]
    for role in dict.fromkeys(r.role for r in rows):
        over = [r for r in rows if r.role == role and r.gpu is not None and r.gpu_total > gpu_bytes]
        if over:
            worst = max(over, key=lambda r: r.gpu_total)
            others = [f"{o.role}/{o.rank} {_gib(o.total)}" for o in rows if o.gpu == worst.gpu and o is not worst]
            share = f" (with {', '.join(others)} on the same GPU: {_gib(worst.gpu_total)} GiB)" if others else ""
            checks.append((role, "gpu", f"needs {_gib(worst.total)} GiB per GPU{share} ({_breakdown(worst)}), "
                                        f"GPU {worst.gpu} has {_gib(gpu_bytes)} GiB ({_memory_key(command)})"))
    if command == "rm":
        notes.append("rm: 2 sequences per example (a pair); ranked lists with reward.ranked_lists: kwise hold K "
                     "per example, so multiply the activations by K/2")
    if command == "rrhf":
        notes.append("rrhf: 2 sequences per example (a pair); a ranked list of K is one example of K sequences, "
                     "so multiply the activations by K/2")
    plan = MemoryPlan(command, gpu_bytes, rows, notes, checks)
    plan._redo = (cfg, known)
    return plan


def _rollout_checks(r: _Role, est, gpu_bytes: int) -> list[tuple[str, str, str]]:
    s, out = r.section, []
    budget = int(s.gpu_memory_utilization * gpu_bytes)
    if est.weights + est.activations > budget:
        out.append(("rollout", "engine", f"its weights ({_gib(est.weights)} GiB per GPU over tensor_parallel_size "
                               f"{s.tensor_parallel_size}) and {_gib(est.activations)} GiB of activations do not fit in "
                               f"rollout.gpu_memory_utilization {s.gpu_memory_utilization:g} x {_gib(gpu_bytes)} GiB = "
                               f"{_gib(budget)} GiB"))
    elif est.kv_tokens < s.max_model_len:
        out.append(("rollout", "engine", f"its KV cache ({_gib(est.kv_cache)} GiB) holds {est.kv_tokens} tokens, fewer than one "
                               f"rollout.max_model_len ({s.max_model_len}) sequence"))
    return out


def _memory_key(command: str) -> str:
    return "scaling.gpu_memory_gib" if command in SUPERVISED_COMMANDS else "resources.gpu_memory_gib"


def _breakdown(row: MemoryRow) -> str:
    parts = [("weights", row.weights), ("grads", row.grads), ("optimizer", row.optimizer),
             ("activations", row.activations), ("KV cache", row.kv_cache), ("CUDA context", row.context)]
    return ", ".join(f"{k} {_gib(v)}" for k, v in parts if v)


def uses_gpu(command: str, cfg) -> bool:
    if command in SUPERVISED_COMMANDS:
        return bool(cfg.scaling.use_gpu)
    res = cfg.resources.roles()
    return any(res[r].gpus_per_worker > 0 for r in planned_roles(command, cfg))


def check_memory(command: str, cfg, known: dict | None = None) -> None:
    """Raise ConfigError(problems) when a GPU role does not fit; nothing for CPU-only configs."""
    if not uses_gpu(command, cfg):
        return
    problems = plan_memory(command, cfg, known).problems()
    if problems:
        raise ConfigError(problems)
