"""Tokenizers: loading with a chat template guaranteed, and training a tiny one locally.

Every stage renders prompts with the tokenizer's chat template, so a tokenizer without one
(a base model) gets ``DEFAULT_CHAT_TEMPLATE``, the Human/Assistant transcript layout that
hh-rlhf and rm-static use.
"""
from __future__ import annotations

from typing import Iterable

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '\n\nHuman: ' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ '\n\nAssistant: ' + m['content'] }}"
    "{% else %}{{ m['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n\nAssistant:' }}{% endif %}"
)

# The tiny tokenizer's template: role tags as special tokens keep sequences short.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] != 'assistant' %}<|end|>{% else %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, chat_template: str | None = None):
    """Load a tokenizer, then make sure it has a pad token and a chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if chat_template:
        tok.chat_template = chat_template
    elif not getattr(tok, "chat_template", None):
        tok.chat_template = DEFAULT_CHAT_TEMPLATE
    if tok.pad_token is None:
        # Padding positions are masked everywhere, so reusing EOS is safe.
        tok.pad_token = tok.eos_token
    if tok.eos_token is None:
        raise ValueError(f"tokenizer {name_or_path} has no eos_token: generation cannot stop; set one")
    tok.padding_side = "right"
    return tok


def tokenizer_for(model_section):
    """The tokenizer a config's model section names (its own, else the model's)."""
    m = model_section
    return load_tokenizer(m.tokenizer or m.name_or_path, m.trust_remote_code, m.chat_template)


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 1024, out_dir: str | None = None):
    """A byte-level BPE tokenizer trained on ``texts`` (seconds), with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|end|>", "<|system|>", "<|user|>", "<|assistant|>"],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    tok.padding_side = "right"
    if out_dir:
        tok.save_pretrained(out_dir)
    return tok
