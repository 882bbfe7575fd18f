"""Typed settings a role hands the engine and its losses (no untyped dicts, no silent defaults).

``EngineSettings`` says how one model runs (device, wrapping, precision, memory, optimizer);
``PolicyLoss`` and ``CriticLoss`` say what a PPO or rejection-sampling update optimises. The
config tree (``rayrlhf.config``) is the one place defaults live: these are built from it by
``from_model`` and the ``build_*`` functions of ``rayrlhf.driver.roles``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from rayrlhf.config.schema import LoraSection


@dataclass
class EngineSettings:
    role: str = "model"
    """Who this is, for messages: trainer, critic, reference, reward/<name>, sft, rm."""
    config_key: str = "model"
    """The config section of this model (policy, critic, model, ...), for messages."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype; trained models keep float32 master weights and optimizer state."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """ddp: a full replica per worker; fsdp: FSDP2 shards per decoder layer."""
    cpu_offload: bool = False
    """fsdp: sharded parameters, gradients and optimizer state live in CPU memory."""
    reshard_after_forward: bool = True
    """fsdp: free gathered layer parameters after their forward."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass."""
    micro_batch_size: int = 8
    """Rows per forward+backward of an update; a step accumulates over micro-batches."""
    forward_micro_batch_size: int = 64
    """Rows per no-grad forward pass."""
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0
    """Clip by global norm; 0 turns clipping off."""
    wants_gpu: bool = False
    """The role reserved a GPU: compute there, or stop at start if none is visible."""
    fake_gpus: bool = False
    """Placement tests: a reserved GPU that is not there is tolerated (compute on CPU)."""
    lora: LoraSection = field(default_factory=LoraSection)
    """Train LoRA adapters (and a scalar head) on frozen base weights instead of the whole model."""
    quantization: Literal["none", "8bit", "4bit"] = "none"
    """Frozen base linear layers in 8-bit or 4-bit NF4 (bitsandbytes); a trained model needs lora."""

    def load_dtype(self, trainable: bool) -> str:
        """The dtype to load the model in: float32 master weights for a model trained whole;
        the compute dtype for a frozen model and for the frozen base under LoRA adapters."""
        return "float32" if trainable and not self.lora.enabled else self.dtype

    @classmethod
    def from_model(cls, section, *, role: str, config_key: str, **kwargs) -> "EngineSettings":
        """From a ``ModelSection`` (model, policy, critic, ...) plus role-specific values."""
        return cls(role=role, config_key=config_key, dtype=section.dtype, strategy=section.strategy,
                   cpu_offload=section.cpu_offload, reshard_after_forward=section.reshard_after_forward,
                   gradient_checkpointing=section.gradient_checkpointing, lora=section.lora,
                   quantization=section.quantization, **kwargs)


@dataclass
class PolicyLoss:
    """What a policy update optimises: clipped PPO; or, in rounds of sampling (``rayrlhf rs``),
    the NLL of kept samples (sft), DPO on each prompt's best and worst sample (dpo) or RRHF on
    each prompt's ranked samples (rrhf)."""

    objective: Literal["ppo", "sft", "dpo", "rrhf"] = "ppo"
    temperature: float = 1.0
    """The rollout's sampling temperature: logprobs are taken under logits / T."""
    clip_eps: float = 0.2
    clip_eps_high: Optional[float] = None
    dual_clip: Optional[float] = None
    kl_in: Literal["reward", "loss"] = "reward"
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = "k3"
    entropy_coef: float = 0.0
    dpo: Optional[object] = None
    """objective dpo: the ``DPOSection`` (loss, beta, label_smoothing)."""
    rrhf: Optional[object] = None
    """objective rrhf: the ``RRHFSection`` (rank_weight, sft_weight, length_penalty)."""


@dataclass
class CriticLoss:
    value_clip: Optional[float] = 0.2
    """Clip of the value update around the old values; None turns it off."""


@dataclass
class RoleSpec:
    """Everything a model role needs besides its model folder."""

    engine: EngineSettings = field(default_factory=EngineSettings)
    loss: Optional[PolicyLoss | CriticLoss] = None
