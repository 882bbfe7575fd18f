"""Configuration of `rayrlhf rs` (best-of-K rejection sampling in rounds, Llama 2 section
3.2.3) and of `rayrlhf best-of-k` (the same selection at inference time, no training)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rayrlhf.config.ppo import (CombineSection, EvalSection, PromptDataSection, RewardSourceSection,
                                check_reward_sources, check_rollout_matches)
from rayrlhf.config.resources import ResourcesSection
from rayrlhf.config.schema import ModelSection, RunSection
from rayrlhf.rollout.config import RolloutSection


@dataclass
class RSSection:
    rounds: int = 3
    """Rounds of: sample K per prompt with the current policy, keep the best, fine-tune on them,
    send the new weights to the rollout workers."""
    k: int = 8
    """Samples per prompt (vLLM's n)."""
    top_m: int = 1
    """Samples kept per prompt, best first by the combined reward."""
    prompts_per_round: int = 64
    """Prompts of each round, consecutive slices of a seeded order over the prompt set."""
    min_reward: Optional[float] = None
    """Keep a best sample only if its combined reward is at least this (null keeps all);
    prompts whose best falls below are counted in rs/rejected_prompts."""
    epochs: int = 1
    """Passes over each round's kept samples."""
    global_batch_size: int = 32
    """Kept samples per optimizer step, over all trainer workers."""
    lr: float = 1e-5
    """Learning rate of the fine-tuning (AdamW, constant)."""
    per_worker_micro_batch_size: int = 8
    """Kept samples one trainer worker puts through the model at once; its share of a batch is
    accumulated over micro-batches into one optimizer step."""
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

    def validate(self) -> list[str]:
        out = []
        if self.rounds < 0:
            out.append(f"rounds: must be 0 or more, got {self.rounds}")
        if self.k < 1:
            out.append(f"k: must be at least 1, got {self.k}")
        if not 1 <= self.top_m <= self.k:
            out.append(f"top_m: must be between 1 and k ({self.k}), got {self.top_m}")
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
    data: PromptDataSection = field(default_factory=PromptDataSection)
    rewards: list[RewardSourceSection] = field(default_factory=list)
    """Reward sources (reward models and functions) combined by `combine`."""
    combine: CombineSection = field(default_factory=CombineSection)
    gold: dict[str, str] = field(default_factory=dict)
    """Gold reward functions ("module:callable") reported as gold/<name>, never selected on."""
    rollout: RolloutSection = field(default_factory=RolloutSection)
    rs: RSSection = field(default_factory=RSSection)
    eval: EvalSection = field(default_factory=EvalSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    run: RunSection = field(default_factory=RunSection)

    def validate(self) -> list[str]:
        out = check_reward_sources(self.rewards, self.combine, self.resources)
        out += check_rollout_matches(self.policy, self.rollout, self.resources)
        trainers = self.resources.trainer.num_workers
        if self.rs.global_batch_size % trainers:
            out.append(f"rs.global_batch_size ({self.rs.global_batch_size}) must be a multiple of "
                       f"resources.trainer.num_workers ({trainers})")
        return out
