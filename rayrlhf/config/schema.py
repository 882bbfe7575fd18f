"""The typed configuration tree of every stage. One docstring per field.

Batch sizes are named by scope: ``global_batch_size`` is summed over all workers and
micro-batches (one optimizer step); ``per_worker_micro_batch_size`` is what one worker puts
through the model at once. Gradient accumulation is derived from the two.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from rayrlhf.data.schema import DEFAULT_MARGIN_VALUES, MARGIN_LEVELS


@dataclass
class RunSection:
    output_dir: str = "runs"
    """Parent folder of run folders."""
    name: str = ""
    """Run folder name under output_dir; empty means the stage's name. Reusing a name with
    --resume continues that run."""
    seed: int = 0
    """Seed for model init, data order and sampling; with the same seed a run repeats exactly."""
    wandb_project: Optional[str] = None
    """A Weights & Biases project to log every step's metrics to as well (needs
    `pip install wandb`); unset, metrics go to the run folder and the Ray dashboard only."""
    wandb_entity: Optional[str] = None
    """The W&B team or user the run is logged under (with wandb_project); unset, your default
    entity."""
    wandb_group: Optional[str] = None
    """The W&B group of the run; a pipeline sets it to its own run.name for each stage, so
    its stages show as one group. Unset in a stand-alone run: no group."""

    def validate(self) -> list[str]:
        problems = [] if self.output_dir else ["output_dir: must not be empty"]
        if self.wandb_project and importlib.util.find_spec("wandb") is None:
            problems.append(f"wandb_project: {self.wandb_project!r} needs wandb, which is not installed: "
                            "pip install wandb, or leave wandb_project unset")
        return problems


@dataclass
class LoraSection:
    r: int = 0
    """Rank of the adapters; 0: no adapters (the whole model trains)."""
    alpha: float = 16.0
    """Scale numerator: an adapter adds (alpha / r) * B @ A to its layer's weight."""
    dropout: float = 0.0
    """Dropout on the adapters' input (kept off in RL, as all dropout)."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Layers that get adapters: module name suffixes (q_proj, v_proj, ...) or all-linear
    (every linear layer but the output head)."""

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def validate(self) -> list[str]:
        out = [] if self.r >= 0 else [f"r: must be >= 0 (0: no adapters), got {self.r}"]
        if self.alpha <= 0:
            out.append(f"alpha: must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"dropout: must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            out.append("target_modules: name at least one layer (q_proj, v_proj, ...) or all-linear")
        elif "all-linear" in self.target_modules and len(self.target_modules) > 1:
            out.append("target_modules: all-linear stands alone (it already means every linear layer)")
        if self.enabled:
            import importlib.util

            if importlib.util.find_spec("peft") is None:
                out.append("r > 0 needs peft, which is not installed: pip install 'rayrlhf[lora]'")
        return out


@dataclass
class ModelSection:
    name_or_path: str = ""
    """A Hugging Face model name or a local folder with config.json and weights."""
    tokenizer: Optional[str] = None
    """Tokenizer name or folder; defaults to name_or_path."""
    trust_remote_code: bool = False
    """Run modelling code shipped inside the checkpoint. Off by default: it executes code
    from the model folder."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype. A trained model keeps float32 master weights and optimizer state and
    computes in this dtype (mixed precision: FSDP2's MixedPrecisionPolicy, autocast under ddp);
    logprobs, losses and advantages stay float32. Frozen models (reference, reward models,
    rollout engines) and exported weights are stored in it."""
    chat_template: Optional[str] = None
    """A Jinja chat template to use when the tokenizer has none (or to replace its own)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about 30% more compute)."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """How a trained model spans its data-parallel workers: ddp (a full replica per worker,
    gradients all-reduced) or fsdp (FSDP2 ``fully_shard`` per decoder layer: parameters,
    gradients and optimizer state split across the workers). Frozen models ignore it."""
    cpu_offload: bool = False
    """fsdp only: keep the sharded parameters, gradients and optimizer state in CPU memory and
    move each layer to the GPU only while it computes (larger models on fewer GPUs, slower)."""
    reshard_after_forward: bool = True
    """fsdp only: free each layer's gathered parameters after its forward and gather them
    again for the backward (less memory, one more all-gather per layer)."""
    lora: LoraSection = field(default_factory=LoraSection)
    """Train LoRA adapters on frozen base weights (``lora.r > 0``): only the adapters (and a
    reward model's or critic's scalar head) are trained, in the optimizer and in checkpoints;
    the base stays in ``dtype``. Rollout workers and exports get the merged weights (plus the
    adapter alone in peft's format, in ``export/adapter``). Frozen models ignore it."""
    quantization: Literal["none", "8bit", "4bit"] = "none"
    """Frozen base linear layers in 8-bit (LLM.int8) or 4-bit NF4 with double quantisation
    (QLoRA) through bitsandbytes, computing in ``dtype``; a trained model needs ``lora``."""

    def validate(self) -> list[str]:
        if not self.name_or_path:
            return ["name_or_path: required: a Hugging Face model name or a local model folder"]
        return self.validate_engine() + self.validate_trained()

    def validate_engine(self) -> list[str]:
        if self.cpu_offload and self.strategy != "fsdp":
            return ["cpu_offload: needs strategy: fsdp (ddp keeps a full replica on each GPU)"]
        return []

    def validate_trained(self) -> list[str]:
        """What a trained model (not a frozen reference) asks of ``quantization``."""
        if self.quantization == "none":
            return []
        out = []
        if not self.lora.enabled:
            out.append(f"quantization: {self.quantization} base weights cannot be fine-tuned whole; "
                       "train LoRA adapters on them (lora: {r: 16, alpha: 32}) or set quantization: none")
        if self.strategy == "fsdp":
            out.append(f"quantization: {self.quantization} needs strategy: ddp (FSDP2 does not shard "
                       "bitsandbytes weights; a quantised base is small enough to replicate)")
        return out


@dataclass
class DataSection:
    train: list[str] = field(default_factory=list)
    """Training sources: JSONL/Parquet files, folders of them, or hub dataset names."""
    eval: list[str] = field(default_factory=list)
    """Held-out sources; if empty, eval_fraction of train is held out (by a seeded split)."""
    format: str = "auto"
    """Row format (auto, explicit, implicit, hh-rlhf, rm-static, stack-exchange-paired,
    ranked, sharegpt for preferences; messages, prompt-completion, prompt-response, sharegpt,
    alpaca for SFT)."""
    split: str = "train"
    """Split to read from hub datasets."""
    eval_fraction: float = 0.05
    """Share of train held out for evaluation when no eval sources are given."""
    max_prompt_tokens: int = 256
    """Rows whose rendered prompt is longer are reported as problems before training."""
    max_response_tokens: int = 256
    """Rows whose response is longer are reported as problems before training."""
    too_long: Literal["error", "drop"] = "error"
    """Rows over max_prompt_tokens / max_response_tokens: error (stop before training and list
    them) or drop (leave them out, print how many, and list them in data_report.json)."""
    limit: Optional[int] = None
    """Read at most this many rows per source (quick experiments)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping, our column name -> the file's (``{prompt: question, chosen: better}``), for
    files whose columns have other names; applied before the format is detected."""

    def validate(self) -> list[str]:
        from rayrlhf.data.columns import check

        out = check(self.columns)
        if not self.train:
            out.append("train: required: at least one file, folder or dataset name")
        if not 0.0 <= self.eval_fraction < 1.0:
            out.append(f"eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        for key in ("max_prompt_tokens", "max_response_tokens"):
            if getattr(self, key) <= 0:
                out.append(f"{key}: must be positive")
        return out


@dataclass
class SourceOptions:
    """How the sources of a command's ``data`` section are read (`rayrlhf label`, `rayrlhf
    revise`). A section lists its own sources first: it derives from this and, after it, from
    a dataclass of those source lists, so that its keys read sources, then these options."""

    format: str = "auto"
    """Row format of the sources."""
    split: str = "train"
    """Split to read from hub datasets."""
    limit: Optional[int] = None
    """Read at most this many rows per source."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping, our column name -> the file's (``{prompt: question, chosen: better}``), for
    files whose columns have other names; applied before the format is detected."""

    def validate(self) -> list[str]:
        from rayrlhf.data.columns import check

        return check(self.columns)


@dataclass
class TrainSection:
    epochs: float = 1.0
    """Passes over the training data (fractions allowed)."""
    lr: float = 1e-5
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    """Decay after warm-up."""
    warmup_ratio: float = 0.03
    """Share of optimizer steps with a linear warm-up."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a share of lr (cosine and linear)."""
    global_batch_size: int = 32
    """Examples (pairs for reward models) per optimizer step, over all workers."""
    per_worker_micro_batch_size: int = 8
    """Examples one worker forwards at once; global_batch_size must be a multiple of
    per_worker_micro_batch_size * num_workers."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm; 0 turns it off."""
    eval_every: int = 0
    """Evaluate every N optimizer steps (0: at the end of each epoch only)."""
    log_every: int = 10
    """Write a metrics line every N optimizer steps."""
    checkpoint_every: int = 0
    """Checkpoint every N optimizer steps (0: at the end of each epoch only)."""
    keep_checkpoints: int = 2
    """How many checkpoints to keep (the newest complete ones; at least 1)."""

    def validate(self) -> list[str]:
        out = []
        if self.lr <= 0:
            out.append(f"lr: must be positive, got {self.lr}")
        if self.epochs <= 0:
            out.append(f"epochs: must be positive, got {self.epochs}")
        if self.global_batch_size <= 0 or self.per_worker_micro_batch_size <= 0:
            out.append("global_batch_size and per_worker_micro_batch_size must be positive")
        if self.keep_checkpoints < 1:
            out.append("keep_checkpoints: must be at least 1 (the last good checkpoint is always kept)")
        if not 0 <= self.warmup_ratio < 1:
            out.append(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        return out


@dataclass
class ScalingSection:
    num_workers: int = 1
    """Data-parallel training workers (Ray Train, torch DDP)."""
    use_gpu: bool = False
    """One GPU per worker with NCCL; on CPU, gloo."""
    gpu_memory_gib: float = 80.0
    """Memory of each GPU, in GiB, for the memory plan checked before launch (rayrlhf plan)."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker; also its torch thread count (rounded, at least 1)."""

    def validate(self) -> list[str]:
        out = []
        if self.num_workers < 1:
            out.append(f"num_workers: must be at least 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            out.append("cpus_per_worker: must be positive")
        return out


@dataclass
class RewardSection:
    name: str = "reward"
    """Name of this reward model (helpfulness, safety, ...): used in metric keys."""
    margin: Literal["none", "label", "value"] = "label"
    """Llama 2 margin loss: none; label (margin from the margin label via margin_values);
    value (a numeric margin field in the data)."""
    margin_values: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MARGIN_VALUES))
    """Margin per label (Llama 2 Table 27, "margin small"); "margin large" is 3, 2, 1, 0."""
    margin_scale: float = 1.0
    """Multiplies every margin."""
    reward_l2: float = 0.0
    """Penalty on the squared reward (keeps scores centred; 0 turns it off)."""
    ranked_lists: Literal["kwise", "pairs"] = "kwise"
    """Ranked lists of K responses: kwise (one example per list, each response scored once, the
    loss averaged over its K(K-1)/2 pairs, as InstructGPT trains; a micro-batch of n lists holds
    n*K sequences) or pairs (every pair its own example, 2 sequences each)."""

    def validate(self) -> list[str]:
        unknown = [k for k in self.margin_values if k not in MARGIN_LEVELS]
        if unknown:
            return [f"margin_values: unknown level(s) {unknown}; levels are {list(MARGIN_LEVELS)}"]
        return []


@dataclass
class DPOSection:
    loss: Literal["sigmoid", "ipo", "cdpo"] = "sigmoid"
    """sigmoid: -log sigmoid(beta * u - m) (DPO, Rafailov et al. 2023); cdpo: the same with
    label_smoothing (conservative DPO, Mitchell 2023); ipo: (u - m - 1 / (2 * beta))^2
    (Azar et al. 2023), where u = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))
    over response tokens and m is the pair's margin (0 with margin: none)."""
    beta: float = 0.1
    """Strength of the implicit KL constraint to the reference."""
    label_smoothing: float = 0.1
    """cdpo only: assumed probability in [0, 0.5) that a preference label is flipped."""
    margin: Literal["none", "label", "value"] = "none"
    """Margin m subtracted inside the loss, as the RM stage's reward.margin: none; label (from
    the margin label via margin_values); value (the numeric margin field), times margin_scale."""
    margin_values: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MARGIN_VALUES))
    """Margin per label (Llama 2 Table 27, "margin small")."""
    margin_scale: float = 1.0
    """Multiplies every margin."""
    ranked_lists = "pairs"  # a ranked list of K trains on its K(K-1)/2 pairs, each its own example

    def validate(self) -> list[str]:
        out = []
        if self.beta <= 0:
            out.append(f"beta: {self.beta} must be > 0")
        if self.loss == "cdpo" and not 0.0 <= self.label_smoothing < 0.5:
            out.append(f"label_smoothing: {self.label_smoothing} must be in [0, 0.5)")
        unknown = [k for k in self.margin_values if k not in MARGIN_LEVELS]
        if unknown:
            out.append(f"margin_values: unknown level(s) {unknown}; levels are {list(MARGIN_LEVELS)}")
        return out


@dataclass
class RRHFSection:
    """RRHF (Yuan et al. 2023): each prompt's K ranked responses, scored by the policy's
    length-normalised log-probability p_i = sum_t log pi(y_i,t) / |y_i|^length_penalty; the loss
    of one list is rank_weight * sum over its pairs (better b, worse w) of max(0, p_w - p_b)
    plus sft_weight * the token-mean negative log-likelihood of its best response."""
    rank_weight: float = 1.0
    """Weight of the ranking term."""
    sft_weight: float = 1.0
    """Weight of the fine-tuning term on the best response of each list (0 turns it off)."""
    length_penalty: float = 1.0
    """Exponent of the response length dividing each summed log-probability (0: no division)."""
    ranked_lists = "kwise"  # a ranked list of K is one example: its K responses, C(K, 2) pairs
    margin = "none"  # rankings carry no margins in RRHF
    margin_values: ClassVar[dict] = {}
    margin_scale = 1.0

    def validate(self) -> list[str]:
        out = [f"{k}: {getattr(self, k)} must be >= 0" for k in ("rank_weight", "sft_weight", "length_penalty")
               if getattr(self, k) < 0]
        if self.rank_weight == 0 and self.sft_weight == 0:
            out.append("rank_weight and sft_weight are both 0: nothing to train")
        return out


@dataclass
class SFTConfig:
    """`rayrlhf sft`: supervised fine-tuning on demonstrations."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    run: RunSection = field(default_factory=RunSection)


@dataclass
class RMConfig:
    """`rayrlhf rm`: a scalar reward model on preference pairs."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    reward: RewardSection = field(default_factory=RewardSection)
    run: RunSection = field(default_factory=RunSection)


@dataclass
class DPOConfig:
    """`rayrlhf dpo`: direct preference optimisation of a causal LM on preference pairs."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    run: RunSection = field(default_factory=RunSection)


@dataclass
class RRHFConfig:
    """`rayrlhf rrhf`: rank responses to align a causal LM (RRHF) on ranked lists or pairs."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    rrhf: RRHFSection = field(default_factory=RRHFSection)
    run: RunSection = field(default_factory=RunSection)


SUPERVISED_COMMANDS = ("sft", "rm", "dpo", "rrhf")
"""The commands (and pipeline stage kinds) that run the shared supervised loop on Ray Train."""
