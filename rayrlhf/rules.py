"""Rule-based reward functions, usable as reward sources:

    rewards:
      - {name: brevity, function: "rayrlhf.rules:length_penalty", args: {max_words: 10, per_word: 0.1}}

Each is ``f(prompt, response, **args) -> float`` on the text of the last user message and the
response. Rules are cheap and run on the driver; they counter known biases of learned reward
models (length, repetition) or check a format.
"""
from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z0-9']+")


def length_penalty(prompt: str, response: str, max_words: int = 64, per_word: float = 0.01) -> float:
    """``-per_word`` for every word beyond ``max_words`` (0 up to it): reward models learn to
    like long answers (Singhal et al. 2023); this keeps an optimised policy from padding."""
    return -per_word * max(0, len(_WORD.findall(response)) - max_words)


def repeated_sentence_penalty(prompt: str, response: str, penalty: float = 1.0) -> float:
    """``-penalty`` for every sentence that repeats an earlier one of the same response."""
    sentences = [s.strip().lower() for s in re.split(r"[.!?]+", response) if s.strip()]
    return -penalty * (len(sentences) - len(set(sentences)))


def format_check(prompt: str, response: str, pattern: str = r"^\S", reward: float = 0.0, penalty: float = -1.0) -> float:
    """``reward`` when the response matches the regular expression ``pattern``, else ``penalty``."""
    return reward if re.search(pattern, response) else penalty
