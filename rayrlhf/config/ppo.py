"""Configuration of `rayrlhf ppo`: the policy, its critic and reference, reward sources, the
rollout fleet and PPO's hyper-parameters."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from rayrlhf.algo.hacking import HackingSection, check_agree_with
from rayrlhf.config.resources import ResourcesSection
from rayrlhf.config.schema import ModelSection, RunSection
from rayrlhf.rollout.config import RolloutSection


@dataclass
class DerivedModelSection(ModelSection):
    """A model whose unset keys are the policy's (``resolve_derived``)."""

    def validate(self) -> list[str]:
        return self.validate_engine()


def resolve_derived(section: ModelSection, policy: ModelSection) -> ModelSection:
    """A critic or reference section as it runs: the policy's settings (model, dtype, strategy,
    ...), except for the keys the section sets itself. A key set to its default value reads as
    unset (a critic cannot be float32/ddp next to a bfloat16/fsdp policy)."""
    from dataclasses import fields, replace

    default = type(section)()
    own = {f.name: getattr(section, f.name) for f in fields(section)
           if getattr(section, f.name) != getattr(default, f.name)}
    names = {f.name for f in fields(policy)}
    return replace(policy, **{k: v for k, v in own.items() if k in names})


def reference_is_base(policy: ModelSection, reference: ModelSection) -> bool:
    """The policy trains LoRA adapters on the reference's own weights (same model, dtype and
    quantization): its base with the adapters off is the reference."""
    ref = resolve_derived(reference, policy)
    return (policy.lora.enabled and ref.name_or_path == policy.name_or_path and ref.dtype == policy.dtype
            and ref.quantization == policy.quantization)


@dataclass
class PromptDataSection:
    train: list[str] = field(default_factory=list)
    """Prompt sources (any prompt or preference format; only the prompts are used)."""
    eval: list[str] = field(default_factory=list)
    """Held-out prompts for the before/after evaluation."""
    format: str = "auto"
    """Row format; auto detects it."""
    split: str = "train"
    """Split of hub datasets."""
    max_prompt_tokens: int = 256
    """Longer prompts are reported as problems before anything starts."""
    too_long: Literal["error", "drop"] = "error"
    """Prompts over max_prompt_tokens: error (stop before any actor starts and list them) or
    drop (leave them out, print how many, and list them in data_report.json)."""
    limit: Optional[int] = None
    """Read at most this many rows per source (quick experiments)."""
    eval_limit: Optional[int] = None
    """Evaluate on at most this many held-out prompts."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping, our column name -> the file's (``{prompt: question, chosen: better}``), for
    files whose columns have other names; applied before the format is detected."""

    def validate(self) -> list[str]:
        from rayrlhf.data.columns import check

        return check(self.columns) + ([] if self.train else ["train: required: at least one prompt source"])


@dataclass
class EvalSection:
    """The held-out evaluation: samples per prompt and the bootstrap of its intervals."""

    samples_per_prompt: int = 4
    """Responses sampled per held-out prompt at each evaluation (the rollout fleet's n), with the
    same seeds every time; a prompt's figure is the mean over its samples."""
    bootstrap: int = 2000
    """Resamples of the held-out prompts for each interval (percentile bootstrap)."""
    interval: float = 0.95
    """Coverage of the intervals: every held-out figure f gets f_ci_low and f_ci_high."""
    seed: int = 0
    """Seed of the bootstrap resamples."""

    def validate(self) -> list[str]:
        out = []
        if self.samples_per_prompt < 1:
            out.append(f"samples_per_prompt: must be at least 1, got {self.samples_per_prompt}")
        if self.bootstrap < 1:
            out.append(f"bootstrap: must be at least 1, got {self.bootstrap}")
        if not 0.0 < self.interval < 1.0:
            out.append(f"interval: must be in (0, 1), got {self.interval}")
        return out


@dataclass
class RewardSourceSection:
    name: str = ""
    """Name of the source: its metric key reward/<name> and its key in the combination."""
    model: str = ""
    """Folder of a reward model (an `rayrlhf rm` export or any HF sequence classifier)."""
    function: str = ""
    """Or a rule-based reward: "module.path:callable", called as f(prompt, response, **args) ->
    float (rayrlhf.rules has a few, e.g. rayrlhf.rules:length_penalty). A callable that declares
    a ``row`` parameter is called f(prompt, response, row=..., **args) with the prompt row's other
    fields as a dict, so a verifiable reward reads its ground truth from the prompt file
    (rayrlhf.rules:exact_match and numeric_match compare with row[args.field], default "answer";
    every prompt row must carry that field, checked before any actor starts)."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the rule function, e.g. {max_words: 10, per_word: 0.1}."""
    normalize: bool = True
    """Standardise a reward model's scores with the held-out mean and std its rm stage recorded."""
    judge: str = ""
    """With ``model`` a causal LM: an AI judge's template (a YAML file, rayrlhf.feedback.template,
    or a bundled name) makes the source an AI judge (RLAIF): a direct template's reward is the
    judge's expected rating in [0, 1]; a pairwise one's, its probability that the response beats
    the prompt row's ``reference_field`` response (both orders averaged)."""
    reference_field: str = "reference"
    """A pairwise judge: the prompt rows' field holding the response to compare against."""
    quantization: Literal["none", "8bit", "4bit"] = "none"
    """A reward model's linear layers in 8-bit or 4-bit NF4 (bitsandbytes); it computes in the
    policy's dtype."""

    def validate(self) -> list[str]:
        out = [] if self.name else ["name: required"]
        if bool(self.model) == bool(self.function):
            out.append("set exactly one of model (a reward-model folder) or function (module:callable)")
        if self.args and not self.function:
            out.append("args: only a function source takes arguments")
        if self.judge:
            if not self.model:
                out.append("judge: needs model: the judge's causal LM folder")
            out += self._judge_problems()
        if self.quantization != "none" and not self.model:
            out.append("quantization: only a reward model is quantised, not a function")
        return out

    def _judge_problems(self) -> list[str]:
        from rayrlhf.actors.judge_reward import reward_template_problem
        from rayrlhf.config.loader import ConfigError
        from rayrlhf.feedback.template import load_template

        try:
            problem = reward_template_problem(load_template(self.judge))
        except ConfigError as e:
            return [f"judge: {p}" for p in e.problems]
        return [f"judge: {problem}"] if problem else []


@dataclass
class CombineSection:
    method: Literal["linear", "llama2_gate"] = "linear"
    """linear: the weighted sum of sources; llama2_gate: the safety score where the prompt is
    unsafe or the safety score is below threshold, else helpfulness (Llama 2, section 3.2.3)."""
    weights: dict[str, float] = field(default_factory=dict)
    """Weight per source for linear (an empty mapping weights every source 1); for llama2_gate,
    the weight of each source besides helpfulness and safety (e.g. a length rule), added to the
    gated score."""
    helpful_key: str = "helpfulness"
    """Source used as helpfulness by llama2_gate."""
    safety_key: str = "safety"
    """Source used as safety by llama2_gate."""
    threshold: float = 0.15
    """llama2_gate: safety scores below this take over (on the sources' scale)."""
    unsafe_field: str = "unsafe"
    """Prompt metadata field that tags a prompt as unsafe."""
    transform: Optional[Literal["inverse_sigmoid"]] = None
    """Applied to the combined score (Llama 2 whitens logit(R_c))."""
    whiten: bool = False
    """Whiten the combined scores over each batch."""


@dataclass
class PPOSection:
    total_steps: int = 100
    """PPO iterations: generate, score, update, sync."""
    prompts_per_step: int = 32
    """Prompts per iteration over all rollout workers (each sampled rollout.n_samples times)."""
    ppo_epochs: int = 1
    """Passes over each iteration's samples."""
    global_mini_batch_size: int = 32
    """Samples per optimizer step, over all trainer workers."""
    forward_micro_batch_size: int = 64
    """Rows per forward pass when computing logprobs and values."""
    per_worker_micro_batch_size: int = 8
    """Rows one policy or critic worker puts through its model at once in an update; a
    worker's share of a mini-batch is accumulated over micro-batches into one optimizer step
    equal to the unaccumulated one."""
    actor_lr: float = 1e-6
    """Policy learning rate (AdamW)."""
    critic_lr: float = 1e-5
    """Critic learning rate (AdamW)."""
    max_grad_norm: float = 1.0
    """Gradient clipping of both models; 0 turns it off."""
    clip_eps: float = 0.2
    """PPO ratio clip (Schulman et al. 2017, eq. 7)."""
    clip_eps_high: Optional[float] = None
    """Upper clip if different from clip_eps (asymmetric clipping)."""
    dual_clip: Optional[float] = None
    """Dual-clip bound for negative advantages (Ye et al. 2020); null turns it off."""
    value_clip: Optional[float] = 0.2
    """Clip of the value update around the old values; null turns it off."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda (Schulman et al. 2016)."""
    whiten_advantages: bool = True
    """Whiten advantages over each iteration's response tokens."""
    entropy_coef: float = 0.0
    """Entropy bonus on the policy loss."""
    kl_coef: float = 0.05
    """KL penalty coefficient (initial value for the adaptive controller)."""
    kl_controller: Literal["fixed", "adaptive"] = "fixed"
    """fixed, or adaptive toward kl_target (Ziegler et al. 2019)."""
    kl_target: float = 6.0
    """Adaptive controller: target KL per response (summed over tokens)."""
    kl_horizon: int = 10000
    """Adaptive controller: horizon in samples."""
    kl_estimator: Optional[Literal["k1", "k2", "k3", "abs"]] = None
    """Per-token KL estimator (Schulman 2020); null: k1 in the reward (InstructGPT), k3 in the
    loss (Shao et al. 2024). k1 is refused in the loss: its gradient has zero mean under the
    policy's own samples, so as a loss it does not pull the policy toward the reference."""
    kl_in: Literal["reward", "loss"] = "reward"
    """Put the KL penalty into the per-token reward (InstructGPT) or into the loss (GRPO). With
    advantage gae or reinforce++, reward means -kl_coef * KL_t on every response token before
    the returns are summed; with grpo or rloo, it means kl_coef times the response's summed KL
    is subtracted from its score before the group baseline. loss: the rewards are the scores
    alone and kl_coef * KL_t (kl_estimator, k3 by default) is added to the policy loss."""
    advantage: Literal["gae", "grpo", "rloo", "reinforce++"] = "gae"
    """Advantage estimator. gae: a critic and GAE (gamma, lam, whiten_advantages). The others
    place no critic (no critic worker, placement, checkpoint or memory; critic.* and the critic
    keys here are unused): grpo: (score - group mean) / (group std + eps) on every response token
    (Shao et al. 2024); rloo: score - mean of the prompt's other samples (Ahmadian et al. 2024);
    reinforce++: the summed future per-token rewards (gamma, no critic), whitened over the
    iteration's response tokens (Hu 2025). A group is the rollout.n_samples samples of one
    prompt, so grpo and rloo need n_samples >= 2."""
    grpo_std_normalize: bool = True
    """grpo: divide by the group's standard deviation; false gives Dr. GRPO's advantages, the
    score minus the group mean (Liu et al. 2025). The policy loss is token-level either way: a
    mini-batch's summed token losses divided by loss_agg's count."""
    loss_agg: Literal["token_mean", "seq_sum_token_norm"] = "token_mean"
    """What the policy-gradient loss of a mini-batch divides its summed token losses by. token_mean: the
    mini-batch's number of response tokens. seq_sum_token_norm: the constant rows x
    rollout.max_new_tokens, so no response's tokens weigh more for being in a batch of short
    responses (Dr. GRPO, Liu et al. 2025, sec. 3.1). The KL and entropy terms and the critic's loss are token means either way."""
    critic_warmup_steps: int = 0
    """Iterations that update only the critic, so values are sensible before the policy moves."""
    rollout_mode: Literal["sync", "async"] = "async"
    """sync: generate, then train, then sync weights, in turn. async: rollout workers keep
    generating the next iterations into a bounded queue while the trainer updates; a weight
    sync does not wait for that generation (workers stage new weights and swap them in between
    generate calls), so iteration i's samples come from policy version max(0, i - max_staleness)
    when no update is skipped. Both modes give the same results on every rerun and resume."""
    max_staleness: int = 1
    """Async mode: a sample generated by policy version v is used at version u only if
    u - v <= max_staleness (older ones are dropped, counted, and their prompts regenerated);
    the queue holds max_staleness + 1 iterations. 0 gives the synchronous results exactly."""
    importance_cap: float = 2.0
    """Off-policy correction: each token's advantage is weighted by
    min(pi_old / pi_behaviour, importance_cap) (truncated importance sampling)."""
    truncated_importance_sampling: bool = False
    """Also weight samples of the current version by min(pi_trainer / pi_engine, importance_cap),
    correcting for the rollout engine's numerical mismatch with the trainer (Yao et al. 2025,
    "TIS"); in sync mode too. Off: a fresh sample's weight is exactly 1. The mismatch itself
    is logged every iteration as rollout/mismatch_kl either way."""
    weight_sync: Literal["object_store", "broadcast"] = "object_store"
    """How weights reach the rollout workers: through Ray's object store (any cluster, CPU), or
    a collective broadcast from trainer rank 0 (NCCL between GPUs, gloo on CPU), in buckets."""
    sync_bucket_mb: int = 256
    """Broadcast bucket size in MiB."""
    sync_every: int = 1
    """Send weights to the rollout workers every N updates."""
    verify_sync: bool = True
    """After each sync, compare each worker's weights checksum and probe logprobs with the trainer's."""
    probe_atol: Optional[float] = None
    """Largest probe-logprob difference accepted between rollout worker and trainer; null
    follows the dtype (float32 1e-3, float16 0.05, bfloat16 0.15: low-precision kernels of the
    engine and the trainer round differently, while stale weights differ by far more)."""
    eval_every: int = 10
    """Evaluate on the held-out prompts every N iterations (and before the first, and at the end):
    eval.samples_per_prompt samples per prompt at the rollout temperature, the same seeds each time."""
    checkpoint_every: int = 10
    """Checkpoint every N iterations (and at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept; the newest complete one is never deleted."""
    call_timeout_s: float = 600.0
    """An actor call that takes longer fails with the actor and phase named."""
    max_bad_steps: int = 3
    """Consecutive iterations with a non-finite reward or loss before the run stops."""
    max_worker_restarts: int = 3
    """Times a dead rollout worker is replaced before the run gives up."""
    hacking: HackingSection = field(default_factory=HackingSection)
    """The reward-hacking alarm: hacking/* metrics every iteration, a warning when it fires, and
    optionally an early stop."""

    @property
    def uses_critic(self) -> bool:
        """GAE needs a critic; the group baselines and REINFORCE++ do not."""
        return self.advantage == "gae"

    @property
    def kl_estimator_used(self) -> str:
        """The estimator in effect: the configured one, else k1 in the reward and k3 in the loss."""
        return self.kl_estimator or ("k3" if self.kl_in == "loss" else "k1")

    def validate(self) -> list[str]:
        out = []
        if self.total_steps < 1 or self.prompts_per_step < 1:
            out.append("total_steps and prompts_per_step must be at least 1")
        if self.max_staleness < 0:
            out.append("max_staleness: must be >= 0")
        if self.clip_eps <= 0:
            out.append("clip_eps: must be positive")
        if self.importance_cap < 1:
            out.append("importance_cap: must be >= 1")
        if self.kl_in == "loss" and self.kl_estimator == "k1":
            out.append("kl_estimator: k1 with kl_in: loss has a gradient of zero mean on the policy's own "
                       "samples, so it would not pull the policy toward the reference; use k3 (the default "
                       "for the loss) or k2, or put the KL in the reward (kl_in: reward)")
        if not self.uses_critic and self.critic_warmup_steps:
            out.append(f"critic_warmup_steps: {self.critic_warmup_steps} warms up a critic, but advantage: "
                       f"{self.advantage} has none; set critic_warmup_steps: 0")
        if self.per_worker_micro_batch_size < 1 or self.forward_micro_batch_size < 1:
            out.append("per_worker_micro_batch_size and forward_micro_batch_size must be at least 1")
        return out


@dataclass
class PPOConfig:
    """`rayrlhf ppo`: PPO with a critic, GAE and a KL penalty to the reference policy."""

    policy: ModelSection = field(default_factory=ModelSection)
    """The starting policy, usually an SFT export."""
    critic: DerivedModelSection = field(default_factory=DerivedModelSection)
    """Critic initialisation (a reward-model or SFT export); every key left unset (name_or_path,
    dtype, strategy, ...) is the policy's."""
    reference: DerivedModelSection = field(default_factory=DerivedModelSection)
    """The frozen reference for the KL term; every key left unset is the policy's."""
    data: PromptDataSection = field(default_factory=PromptDataSection)
    rewards: list[RewardSourceSection] = field(default_factory=list)
    """Reward sources (reward models and functions) combined by `combine`."""
    gold: dict[str, str] = field(default_factory=dict)
    """Gold reward functions ("module:callable") reported as gold/<name>, never trained on
    (toyworld's exact helpfulness and safety)."""
    combine: CombineSection = field(default_factory=CombineSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    eval: EvalSection = field(default_factory=EvalSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    run: RunSection = field(default_factory=RunSection)

    @property
    def reference_from_policy(self) -> bool:
        """The policy trains LoRA adapters on the reference's own weights (same model, same
        dtype): reference logprobs are the policy's with its adapters off, and no reference
        worker is placed or started."""
        return reference_is_base(self.policy, self.reference)

    def validate(self) -> list[str]:
        out = check_reward_sources(self.rewards, self.combine, self.resources)
        out += check_agree_with(self.ppo.hacking, [r.name for r in self.rewards], "ppo.hacking")
        if not self.policy.validate_trained():  # the critic inherits the policy's keys and problems
            out += [f"critic.{p}" for p in resolve_derived(self.critic, self.policy).validate_trained()]
        out += check_rollout_matches(self.policy, self.rollout, self.resources)
        if self.rollout.top_p < 1.0 or self.rollout.top_k != -1:
            out.append(f"rollout.top_p ({self.rollout.top_p}) / rollout.top_k ({self.rollout.top_k}): PPO's ratio "
                       "and importance weights take the trainer's logprobs of the full distribution, which "
                       "would not be the truncated one the rollout sampled from; set top_p: 1.0 and top_k: -1 "
                       "for PPO (rejection sampling and best-of-K may truncate)")
        if self.ppo.advantage in ("grpo", "rloo") and self.rollout.n_samples < 2:
            out.append(f"rollout.n_samples: ppo.advantage: {self.ppo.advantage} compares the samples of each prompt, "
                       f"so it needs at least 2 per prompt, got {self.rollout.n_samples}")
        trainers = self.resources.trainer.num_workers
        if self.ppo.global_mini_batch_size % trainers:
            out.append(f"ppo.global_mini_batch_size ({self.ppo.global_mini_batch_size}) must be a multiple of "
                       f"resources.trainer.num_workers ({trainers})")
        total = self.ppo.prompts_per_step * self.rollout.n_samples
        if total % self.ppo.global_mini_batch_size:
            out.append(f"prompts_per_step x rollout.n_samples ({total}) must be a multiple of "
                       f"ppo.global_mini_batch_size ({self.ppo.global_mini_batch_size})")
        return out


def check_reward_sources(rewards: list[RewardSourceSection], combine: CombineSection,
                         resources: ResourcesSection) -> list[str]:
    """What PPO, rejection sampling and best-of-K ask of their reward sources."""
    out = []
    if not rewards:
        out.append("rewards: at least one reward source is required")
    names = [r.name for r in rewards]
    if len(set(names)) != len(names):
        out.append(f"rewards: names must be unique, got {names}")
    if combine.method == "llama2_gate":
        for field_name, key in (("helpful_key", combine.helpful_key), ("safety_key", combine.safety_key)):
            if key not in names:
                out.append(f"combine.{field_name}: {key!r} is not a reward source (sources: {names})")
        for name in names:
            if name not in (combine.helpful_key, combine.safety_key) and name not in combine.weights:
                out.append(f"combine.weights.{name}: missing: llama2_gate gates {combine.helpful_key} and "
                           f"{combine.safety_key}; give source {name!r} a weight to add it to the gated score")
    for r in rewards:
        if r.model and r.name not in resources.rewards:
            out.append(f"resources.rewards.{r.name}: missing: reward model {r.name!r} needs its resources "
                       f"(e.g. resources.rewards.{r.name}: {{num_workers: 1, cpus_per_worker: 1}})")
    for k in combine.weights:
        if k not in names:
            out.append(f"combine.weights: {k!r} is not a reward source (sources: {names})")
    return out


PROBE_ATOL = {"float32": 1e-3, "float16": 0.05, "bfloat16": 0.15}


def probe_atol(configured: Optional[float], dtype: str) -> float:
    return configured if configured is not None else PROBE_ATOL[dtype]


def check_rollout_matches(policy: ModelSection, rollout: RolloutSection, resources: ResourcesSection) -> list[str]:
    """The rollout engine must sample from the weights the trainer computes with."""
    out = []
    if rollout.dtype != policy.dtype:
        out.append(f"rollout.dtype: {rollout.dtype} differs from policy.dtype {policy.dtype}: behaviour "
                   f"logprobs would come from other numbers than the trainer's; set rollout.dtype: {policy.dtype}")
    tp, gpus = rollout.tensor_parallel_size, resources.rollout.gpus_per_worker
    if tp > 1 and gpus != tp:
        out.append(f"rollout.tensor_parallel_size: {tp} shards each engine over {tp} GPUs, so each rollout worker "
                   f"needs a bundle of {tp}: set resources.rollout.gpus_per_worker: {tp} (now {gpus:g})")
    return out
