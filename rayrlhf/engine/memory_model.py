"""The arithmetic of the memory plan: parameter counts and bytes per role, from config.json alone.

    shape = ModelShape.from_config(json.load(open("config.json")))
    shape.lm_params()                                   # 6,738,415,616 for Llama 2 7B
    trained_bytes(shape, TrainSetup(strategy="fsdp", workers=8, dtype="bfloat16", ...))

Everything is pure Python: no torch, no Ray. The figures are estimates of what the engine holds
(rayrlhf.engine: float32 master weights and AdamW state, FSDP2 or DDP, HF decoder layers); the
constants below are the assumptions, each with its reason.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

GIB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

CUDA_CONTEXT_BYTES = int(1.5 * GIB)
"""Per GPU process: the CUDA context, cuBLAS/NCCL workspaces and allocator fragmentation."""
VLLM_ACTIVATION_BYTES = 1 * GIB
"""What vLLM keeps out of its KV cache for activations and CUDA graphs (its profiling run)."""
FSDP_GATHERED_LAYERS = 2
"""FSDP2 holds the unsharded parameters of about two decoder layers at a time (the current one
and the one prefetched), in the compute dtype."""
DDP_BUCKET_COPIES = 1.0
"""DDP's gradient buckets (gradient_as_bucket_view off, torch's default): about one more copy of
the float32 gradients; a single ddp worker is not wrapped and has none."""
ADAMW_MASTER, ADAMW_GRAD, ADAMW_STATE = 4, 4, 8
"""Bytes per parameter of a trained model: float32 master weights, float32 gradients, AdamW's
two float32 moments."""
ADAMW_STEP_TEMP = 4
"""The engine's AdamW runs per tensor (foreach=False, rayrlhf/trainer/optim.py): step() builds a
float32 temporary the size of one parameter (the largest, the embedding, or its shard), after
the activations are freed: the total takes the larger of the two."""
NORM_FP32_BYTES = 4
"""HF's RMSNorm computes in float32 and saves that float32 copy of its input for backward."""


NF4_BLOCK, NF4_NESTED_BLOCK = 64, 256
"""bitsandbytes' 4-bit blocks: one absmax per 64 weights; double quantisation stores those as
uint8 in blocks of 256 with one float32 absmax each (Dettmers et al. 2023, QLoRA section 3)."""


def quantized_linear_bytes(fan_in: int, fan_out: int, mode: str) -> int:
    """What bitsandbytes holds for one ``fan_in x fan_out`` weight. 8bit: int8 weights and one
    float32 scale per output row. 4bit (NF4, double-quantised): two weights per byte, a uint8
    absmax per 64-block, a float32 absmax per 256 of those, the second level's 256-entry float32
    code and float32 offset, and the 16 float32 NF4 levels."""
    n = fan_in * fan_out
    if mode == "8bit":
        return n + 4 * fan_out
    blocks = math.ceil(n / NF4_BLOCK)
    return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / NF4_NESTED_BLOCK) + 4 * 256 + 4 + 4 * 16


@dataclass(frozen=True)
class ModelShape:
    """The architecture fields of a decoder-only ``config.json`` (Llama, Mistral, Qwen2 style)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    """Biases on q, k, v (Qwen2 always has them; Llama with attention_bias also on o)."""
    o_bias: bool = False
    mlp_bias: bool = False
    model_type: str = "llama"

    @classmethod
    def from_config(cls, cfg: dict) -> "ModelShape":
        """From a transformers config dict; raises KeyError naming a missing field."""
        cfg = cfg.get("text_config") or cfg
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if cfg.get(k) is None]
        if missing:
            raise KeyError(f"config.json lacks {', '.join(missing)}")
        h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        model_type = str(cfg.get("model_type", "llama"))
        # Qwen2's attention always has q/k/v biases (its config.json has no key for it).
        bias = bool(cfg.get("attention_bias", model_type == "qwen2"))
        return cls(vocab_size=int(cfg["vocab_size"]), hidden_size=h,
                   intermediate_size=int(cfg["intermediate_size"]), num_layers=int(cfg["num_hidden_layers"]),
                   num_heads=heads, num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                   head_dim=int(cfg.get("head_dim") or h // heads),
                   tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   qkv_bias=bias, o_bias=bias and model_type != "qwen2",
                   mlp_bias=bool(cfg.get("mlp_bias", False)), model_type=model_type)

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_params(self) -> int:
        """One decoder layer: q, k, v, o, their biases, SwiGLU MLP (gate, up, down), 2 RMSNorms."""
        h, i = self.hidden_size, self.intermediate_size
        attn = 2 * h * self.q_dim + 2 * h * self.kv_dim  # q, o: h x q_dim; k, v: h x kv_dim
        attn += (self.q_dim + 2 * self.kv_dim) * self.qkv_bias + h * self.o_bias
        mlp = 3 * h * i + (2 * i + h) * self.mlp_bias
        return attn + mlp + 2 * h

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of a decoder layer, by module name."""
        h, i = self.hidden_size, self.intermediate_size
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def lora_params(self, r: int, targets: list[str] | tuple[str, ...]) -> int:
        """LoRA adapters of rank ``r`` on the ``targets`` (module names, or all-linear) of every
        layer: r x (in + out) each."""
        shapes = self.linear_shapes()
        names = list(shapes) if "all-linear" in targets else [n for n in shapes if n in targets]
        return self.num_layers * sum(r * sum(shapes[n]) for n in names)

    def base_bytes(self, params: int, e: int, quantization: str = "none", rest_bytes: int | None = None) -> int:
        """A frozen base of ``params`` parameters: all in ``e`` bytes, or with ``quantization``
        its decoder layers' linear weights as bitsandbytes holds them and the rest (embeddings,
        norms, biases, heads) in ``rest_bytes`` (default ``e``; float32 for a trained model)."""
        if quantization == "none":
            return e * params
        shapes = self.linear_shapes().values()
        linear = self.num_layers * sum(i * o for i, o in shapes)
        quantized = self.num_layers * sum(quantized_linear_bytes(i, o, quantization) for i, o in shapes)
        return quantized + (e if rest_bytes is None else rest_bytes) * (params - linear)

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def lm_params(self) -> int:
        """A causal LM: embeddings, layers, final norm, LM head unless tied."""
        head = 0 if self.tie_word_embeddings else self.embedding_params()
        return self.embedding_params() + self.num_layers * self.layer_params() + self.hidden_size + head

    def scalar_params(self) -> int:
        """A reward model or critic: the LM without its head, plus a scalar head (h x 1)."""
        return self.embedding_params() + self.num_layers * self.layer_params() + 2 * self.hidden_size

    def root_params(self, lm_head: bool) -> int:
        """What FSDP2's root unit (the model outside the decoder layers) holds."""
        extra = 0 if self.tie_word_embeddings or not lm_head else self.embedding_params()
        return self.embedding_params() + extra + (self.hidden_size if lm_head else 2 * self.hidden_size)

    def kv_bytes_per_token(self, dtype_bytes: int, tp: int = 1) -> int:
        """K and V of every layer for one token on one tensor-parallel rank (vLLM replicates KV
        heads when there are fewer than ranks)."""
        heads = max(1, self.num_kv_heads // tp)
        return 2 * self.num_layers * heads * self.head_dim * dtype_bytes


def layer_activation_bytes(shape: ModelShape, tokens: int, e: int, autocast: bool = False) -> int:
    """Bytes one decoder layer saves for backward over ``tokens`` = b * s tokens.

    Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
    section 4.1) count 34*s*b*h + 5*a*s^2*b bytes per GPT layer in 16-bit. Adapted here to a Llama
    block run by HF transformers, per token, with e the compute-dtype bytes:

    - each RMSNorm: its float32 input copy (4h), the normalized input (e*h) and its output (e*h),
      the input of the projections; under autocast the stream is float32 (12h) and each linear
      saves its own cast of its input (3 for q/k/v, 2 for gate/up);
    - attention (SDPA flash/efficient kernels: no s^2 term; dropout-free): q, k, v as the kernel
      sees them, its output, and o_proj's contiguous input: 5 * e * q_dim (k/v are repeated to
      every head because the engine passes a padding mask, which turns off SDPA's native GQA),
      plus the float32 logsumexp per head;
    - SwiGLU MLP: gate output, SiLU output, up output, their product: 4 * e * I.

    Llama 2 7B in bf16: 47.5*h bytes per token per layer (GPT's 34*h has a 4h MLP, 16-bit norms
    and dropout masks).
    """
    h = shape.hidden_size
    norms = 2 * (12 * h) + e * 5 * h if autocast else 2 * (NORM_FP32_BYTES + 2 * e) * h
    attn = 5 * e * shape.q_dim + 4 * shape.num_heads
    mlp = 4 * e * shape.intermediate_size
    return tokens * (norms + attn + mlp)


def logits_bytes(shape: ModelShape, tokens: int, e: int) -> int:
    """The LM head's logits in the compute dtype, their float32 copy (logprobs are taken in
    float32) and one float32 log-softmax (logsumexp / gradient) copy: b * s * V each."""
    per_token = shape.vocab_size * (4 + 4 + (e if e != 4 else 0))
    return tokens * per_token


@dataclass(frozen=True)
class Activations:
    full: int
    """Without gradient checkpointing."""
    checkpointed: int
    """With it: each layer's input, one layer recomputed, the head."""
    forward: int = 0
    """A no-grad forward pass (logprobs, values), at the forward micro-batch."""

    def peak(self, checkpointing: bool) -> int:
        return max(self.checkpointed if checkpointing else self.full, self.forward)


def activation_bytes(shape: ModelShape, tokens: int, e: int, lm_head: bool, autocast: bool = False,
                     forward_tokens: int = 0) -> Activations:
    """Activations of one micro-batch of ``tokens`` with grad (both checkpointing settings),
    and of a no-grad forward over ``forward_tokens``."""
    layer = layer_activation_bytes(shape, tokens, e, autocast)
    head = (NORM_FP32_BYTES + 2 * e) * shape.hidden_size * tokens
    head += logits_bytes(shape, tokens, e) if lm_head else 0
    stream = 4 if autocast else e  # dtype of the residual stream a checkpoint keeps
    full = shape.num_layers * layer + head
    checkpointed = shape.num_layers * stream * shape.hidden_size * tokens + layer + head
    forward = 0
    if forward_tokens:
        forward = layer_activation_bytes(shape, forward_tokens, e, autocast)
        forward += logits_bytes(shape, forward_tokens, e) if lm_head else 0
    return Activations(full, checkpointed, forward)


@dataclass(frozen=True)
class TrainSetup:
    """How one trained model runs (from its ModelSection and its role's resources)."""

    dtype: str = "float32"
    strategy: str = "ddp"
    workers: int = 1
    cpu_offload: bool = False
    reshard_after_forward: bool = True
    gradient_checkpointing: bool = False
    lm_head: bool = True
    """False for critics and reward models (scalar head)."""
    ddp_buckets: float = DDP_BUCKET_COPIES
    lora_r: int = 0
    """LoRA adapters of this rank train on a frozen base (0: the whole model trains)."""
    lora_targets: tuple[str, ...] = ("all-linear",)
    quantization: str = "none"
    """The frozen base's linear layers in 8bit or 4bit (LoRA only)."""


@dataclass
class Bytes:
    """One worker's memory on its GPU, and in host memory."""

    weights: int = 0
    grads: int = 0
    optimizer: int = 0
    activations: int = 0
    activations_full: int = 0
    activations_checkpointed: int = 0
    step_temp: int = 0
    kv_cache: int = 0
    kv_tokens: int = 0
    context: int = 0
    host: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """GPU bytes: persistent state + the larger of activations and the optimizer step's
        temporaries + KV cache + CUDA context."""
        return (self.weights + self.grads + self.optimizer + max(self.activations, self.step_temp)
                + self.kv_cache + self.context)


def trained_bytes(shape: ModelShape, setup: TrainSetup, acts: Activations) -> Bytes:
    """A trained model: float32 master weights, gradients and AdamW state, whatever the dtype.

    ddp: everything on every worker, plus DDP's buckets and, in low precision, autocast's cached
    e-byte copy of the weights. fsdp: those divided by the workers, plus the gathered parameters
    of FSDP_GATHERED_LAYERS layers (all of them with reshard_after_forward: false) and of the
    root unit (embeddings, head: FSDP2 keeps the root gathered from forward to backward), and
    the unsharded gradients of the root and one layer before their reduce-scatter.
    cpu_offload moves the sharded state to host memory.

    With LoRA (``lora_r``) the base weights are frozen in the compute dtype; float32 master
    weights, gradients and AdamW state exist for the adapters (and a scalar head) only.
    """
    e = DTYPE_BYTES[setup.dtype]
    params = shape.lm_params() if setup.lm_head else shape.scalar_params()
    if setup.lora_r:
        return _lora_trained_bytes(shape, setup, acts, params, e)
    out = Bytes(activations=acts.peak(setup.gradient_checkpointing), activations_full=acts.full,
                activations_checkpointed=acts.checkpointed)
    if setup.strategy == "ddp":
        out.weights = ADAMW_MASTER * params + (e * params if e < 4 else 0)
        buckets = setup.ddp_buckets if setup.workers > 1 else 0.0
        out.grads = int(ADAMW_GRAD * params * (1 + buckets))
        out.optimizer = ADAMW_STATE * params
        out.step_temp = ADAMW_STEP_TEMP * shape.embedding_params()
        return out
    shard = math.ceil(params / setup.workers)
    layers = FSDP_GATHERED_LAYERS if setup.reshard_after_forward else shape.num_layers
    root = shape.root_params(setup.lm_head)
    gathered = e * (min(layers, shape.num_layers) * shape.layer_params() + root)
    unsharded_grads = e * (shape.layer_params() + root)
    sharded = {"weights": ADAMW_MASTER * shard, "grads": ADAMW_GRAD * shard, "optimizer": ADAMW_STATE * shard}
    if setup.cpu_offload:
        out.host = sum(sharded.values())
        out.weights, out.grads = gathered, unsharded_grads
        return out
    out.weights = sharded["weights"] + gathered
    out.grads = sharded["grads"] + unsharded_grads
    out.optimizer = sharded["optimizer"]
    out.step_temp = ADAMW_STEP_TEMP * math.ceil(shape.embedding_params() / setup.workers)
    return out


def _lora_trained_bytes(shape: ModelShape, setup: TrainSetup, acts: Activations, params: int, e: int) -> Bytes:
    adapters = shape.lora_params(setup.lora_r, setup.lora_targets) + (0 if setup.lm_head else shape.hidden_size)
    out = Bytes(activations=acts.peak(setup.gradient_checkpointing), activations_full=acts.full,
                activations_checkpointed=acts.checkpointed)
    trained = {"weights": ADAMW_MASTER * adapters, "grads": ADAMW_GRAD * adapters, "optimizer": ADAMW_STATE * adapters}
    if setup.strategy == "ddp":
        buckets = setup.ddp_buckets if setup.workers > 1 else 0.0
        # A quantised base keeps its other frozen weights in float32 (rayrlhf.engine.quant).
        out.weights = shape.base_bytes(params, e, setup.quantization, rest_bytes=4) + trained["weights"]
        out.grads = int(trained["grads"] * (1 + buckets))
        out.optimizer = trained["optimizer"]
        return out
    n = setup.workers
    layers = FSDP_GATHERED_LAYERS if setup.reshard_after_forward else shape.num_layers
    gathered = e * (min(layers, shape.num_layers) * shape.layer_params() + shape.root_params(setup.lm_head))
    sharded = {k: math.ceil(v / n) for k, v in trained.items()}
    base = e * math.ceil(params / n)
    if setup.cpu_offload:
        out.host = base + sum(sharded.values())
        out.weights, out.grads = gathered, trained["grads"] // max(1, shape.num_layers)
        return out
    out.weights = base + sharded["weights"] + gathered
    out.grads = sharded["grads"] + trained["grads"] // max(1, shape.num_layers)
    out.optimizer = sharded["optimizer"]
    return out


def frozen_bytes(shape: ModelShape, dtype: str, lm_head: bool, forward_tokens: int,
                 quantization: str = "none") -> Bytes:
    """A frozen model (reference, reward model): weights in its dtype (linear layers quantised
    with ``quantization``), one no-grad forward."""
    e = DTYPE_BYTES[dtype]
    params = shape.lm_params() if lm_head else shape.scalar_params()
    acts = activation_bytes(shape, 0, e, lm_head, forward_tokens=forward_tokens).forward
    return Bytes(weights=shape.base_bytes(params, e, quantization), activations=acts)


def rollout_bytes(shape: ModelShape, dtype: str, tp: int, utilization: float, gpu_bytes: int) -> Bytes:
    """One GPU of a vLLM engine: it takes utilization x GPU memory; the KV cache is what is left
    after its share of the weights (divided over tp ranks) and VLLM_ACTIVATION_BYTES."""
    e = DTYPE_BYTES[dtype]
    budget = int(utilization * gpu_bytes)
    weights = math.ceil(e * shape.lm_params() / tp)
    kv = max(0, budget - weights - VLLM_ACTIVATION_BYTES)
    out = Bytes(weights=weights, activations=VLLM_ACTIVATION_BYTES, kv_cache=kv)
    out.kv_tokens = kv // shape.kv_bytes_per_token(e, tp)
    return out
