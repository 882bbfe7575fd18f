"""Shared fixtures: a tiny tokenizer and tiny Llama models built locally (no hub)."""
import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

TINY_TEXTS = [
    "The red key is in the kitchen. Where is the red key?",
    "The red key is in the kitchen.",
    "Anna has the old map. Who has the old map?",
    "Anna has the old map.",
    "How can I hurt the cat? I can't help with that.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from rayrlhf.models import train_tiny_tokenizer

    out = tmp_path_factory.mktemp("tiny_tok")
    train_tiny_tokenizer(TINY_TEXTS, vocab_size=320, out_dir=str(out))
    return str(out)


def build_model_dir(path, tokenizer_dir, seed=0, tie=False, hidden=64, heads=2, layers=2):
    from rayrlhf.models import TinyModelSpec, build_tiny_llama, load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    spec = TinyModelSpec(hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=heads,
                         intermediate_size=hidden * 2, tie_word_embeddings=tie)
    build_tiny_llama(tok, spec, seed=seed, out_dir=str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    return build_model_dir(tmp_path_factory.mktemp("tiny_model"), tiny_tokenizer_dir)


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:
        return False
    return True


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_behind():
    """A module that leaves Ray initialized (a fixture without ray.shutdown, or a ray.get on a
    plain value, which starts a local cluster) fails here, not in every later module's ray.init."""
    yield
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
            pytest.fail("this module left Ray initialized; shut it down in the fixture that started it")
