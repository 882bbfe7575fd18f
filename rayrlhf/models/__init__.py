"""Model loading, the tiny-model factory, scalar heads and HF export."""
from rayrlhf.models.load import export_hf, load_causal_lm, load_scalar_model, unwrap
from rayrlhf.models.tiny import TinyModelSpec, build_tiny_llama
from rayrlhf.models.tokenizer import load_tokenizer, train_tiny_tokenizer

__all__ = [
    "export_hf", "load_causal_lm", "load_scalar_model", "unwrap",
    "TinyModelSpec", "build_tiny_llama", "load_tokenizer", "train_tiny_tokenizer",
]
