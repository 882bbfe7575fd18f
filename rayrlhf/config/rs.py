"""Configuration of `rayrlhf rs` (best-of-K rejection sampling in rounds, Llama 2 section
3.2.3; with ``rs.objective`` dpo or rrhf, online DPO or online RRHF in the same rounds) and of
`rayrlhf best-of-k` (the same selection at inference time, no training)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from rayrlhf.algo.hacking import HackingSection, check_agree_with
from rayrlhf.config.ppo import (CombineSection, DerivedModelSection, EvalSection, PromptDataSection,
                                RewardSourceSection, check_reward_sources, check_rollout_matches, reference_is_base)
from rayrlhf.config.resources import ResourcesSection
from rayrlhf.config.schema import DPOSection, ModelSection, RRHFSection, RunSection
from rayrlhf.rollout.config import RolloutSection


@dataclass
class RSSection:
    rounds: int = 3
    """Rounds of: sample K per prompt with the current policy, keep the best, fine-tune on them,
    send the new weights to the rollout workers."""
    objective: Literal["sft", "dpo", "rrhf"] = "sft"
    """What each round trains on its K samples per prompt, ranked by the combined (gated)
    reward: sft, the NLL of the best top_m (rejection sampling, Llama 2); dpo, DPO (the ``dpo``
    section, as in `rayrlhf dpo`) on the pair of the best and the worst sample, against the
    reference model (online / iterative DPO); rrhf, RRHF (the ``rrhf`` section) on all K ranked
    (online RRHF). A prompt whose K samples all score the same gives dpo no pair."""
    k: int = 8
    """Samples per prompt (vLLM's n)."""
    top_m: int = 1
    """objective sft: samples kept per prompt, best first by the combined reward."""
    prompts_per_round: int = 64
    """Prompts of each round, consecutive slices of a seeded order over the prompt set."""
    min_reward: Optional[float] = None
    """Train on a prompt only if its best sample's combined reward is at least this (null
    keeps all); prompts whose best falls below are counted in rs/rejected_prompts."""
    epochs: int = 1
    """Passes over each round's kept samples."""
    global_batch_size: int = 32
    """Per optimizer step, over all trainer workers: kept samples (sft), pairs (dpo) or
    prompts' ranked lists (rrhf)."""
    lr: float = 1e-5
    """Learning rate of the fine-tuning (AdamW, constant)."""
    per_worker_micro_batch_size: int = 8
    """Kept samples (sft), pairs (dpo) or lists (rrhf) one trainer worker puts through the model
    at once; its share of a batch is accumulated over micro-batches into one optimizer step."""
    max_grad_norm: float = 1.0
    """Gradient clipping; 0 turns it off."""
    curve_k: int = 32
    """Best-of-K curve (Gao et al. 2022) before the first round: this many samples per held-out
    prompt give the expected proxy and gold reward of best-of-k for k = 1..curve_k; 0 skips it."""
    curve_prompts: int = 64
    """Held-out prompts used for the curve."""
    eval_every: int = 1
    """Evaluate on the held-out prompts every N rounds (and before the first, and at the end)."""
    call_timeout_s: float = 600.0
    """An actor call that takes longer fails with the actor and phase named."""
    max_worker_restarts: int = 3
    """Times a dead rollout worker is replaced before the run gives up."""
    keep_checkpoints: int = 2
    """Checkpoints kept (one per round); the newest complete one is never deleted."""
    hacking: HackingSection = field(default_factory=HackingSection)
    """The reward-hacking alarm over rounds, as PPO's over iterations (``ppo.hacking``): hacking/*
    metrics every round, a warning when it fires, and with ``stop: true`` the run ends there
    (checkpoint, export, summary). Its windows count rounds: with the default window of 5 it
    judges from round 10 on."""

    def validate(self) -> list[str]:
        out = []
        if self.rounds < 0:
            out.append(f"rounds: must be 0 or more, got {self.rounds}")
        if self.k < 1:
            out.append(f"k: must be at least 1, got {self.k}")
        if not 1 <= self.top_m <= self.k:
            out.append(f"top_m: must be between 1 and k ({self.k}), got {self.top_m}")
        if self.objective != "sft" and self.k < 2:
            out.append(f"k: objective {self.objective} ranks each prompt's samples against each other; "
                       f"k must be at least 2, got {self.k}")
        if self.objective != "sft" and self.top_m != 1:
            out.append(f"top_m: {self.top_m} applies to objective sft only (objective {self.objective} "
                       "trains on every prompt's best and worst (dpo) or all K (rrhf)); leave it at 1")
        if self.prompts_per_round < 1 or self.epochs < 1 or self.global_batch_size < 1:
            out.append("prompts_per_round, epochs and global_batch_size must be at least 1")
        if self.curve_k < 0 or self.curve_k == 1:
            out.append(f"curve_k: 0 (no curve) or at least 2, got {self.curve_k}")
        return out


@dataclass
class RSConfig:
    """`rayrlhf rs`: rounds of best-of-K rejection sampling and fine-tuning on the kept samples."""

    policy: ModelSection = field(default_factory=ModelSection)
    """The starting policy, usually an SFT export."""
    reference: DerivedModelSection = field(default_factory=DerivedModelSection)
    """objective dpo: the frozen reference (every key left unset is the policy's). Under LoRA on
    the policy's own model its base with the adapters off is the reference, and no reference
    worker is started."""
    data: PromptDataSection = field(default_factory=PromptDataSection)
    rewards: list[RewardSourceSection] = field(default_factory=list)
    """Reward sources (reward models and functions) combined by `combine`."""
    combine: CombineSection = field(default_factory=CombineSection)
    gold: dict[str, str] = field(default_factory=dict)
    """Gold reward functions ("module:callable") reported as gold/<name>, never selected on."""
    rollout: RolloutSection = field(default_factory=RolloutSection)
    rs: RSSection = field(default_factory=RSSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    """objective dpo: the loss (sigmoid, ipo, cdpo), beta and label smoothing, as `rayrlhf dpo`."""
    rrhf: RRHFSection = field(default_factory=RRHFSection)
    """objective rrhf: the ranking and SFT weights and the length penalty, as `rayrlhf rrhf`."""
    eval: EvalSection = field(default_factory=EvalSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    run: RunSection = field(default_factory=RunSection)

    @property
    def reference_from_policy(self) -> bool:
        """objective dpo under LoRA on the reference's weights: the policy's base is the reference."""
        return reference_is_base(self.policy, self.reference)

    @property
    def uses_reference(self) -> bool:
        """A reference worker is started (objective dpo, unless the policy's base is the reference)."""
        return self.rs.objective == "dpo" and not self.reference_from_policy

    @property
    def sequences_per_example(self) -> int:
        """Sequences one trained example puts through the model: 1 (sft), 2 (dpo), k (rrhf)."""
        return {"sft": 1, "dpo": 2, "rrhf": self.rs.k}[self.rs.objective]

    def validate(self) -> list[str]:
        out = check_reward_sources(self.rewards, self.combine, self.resources)
        out += check_agree_with(self.rs.hacking, [r.name for r in self.rewards], "rs.hacking")
        out += check_rollout_matches(self.policy, self.rollout, self.resources)
        trainers = self.resources.trainer.num_workers
        if self.rs.global_batch_size % trainers:
            out.append(f"rs.global_batch_size ({self.rs.global_batch_size}) must be a multiple of "
                       f"resources.trainer.num_workers ({trainers})")
        if self.rs.objective == "dpo" and self.dpo.margin != "none":
            out.append(f"dpo.margin: {self.dpo.margin!r}; pairs made online carry no margin label or value, "
                       "set dpo.margin: none for rs.objective dpo")
        return out
