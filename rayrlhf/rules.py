"""Rule-based reward functions, usable as reward sources:

    rewards:
      - {name: brevity, function: "rayrlhf.rules:length_penalty", args: {max_words: 10, per_word: 0.1}}
      - {name: correct, function: "rayrlhf.rules:numeric_match", args: {field: answer}}

Each is ``f(prompt, response, **args) -> float`` on the text of the last user message and the
response. A rule that declares a parameter named ``row`` is called
``f(prompt, response, row=..., **args)``, ``row`` being the prompt row's other fields as a dict
(every column of the prompt file besides ``prompt``/``messages``), so a prompt file such as
``{"prompt": "What is 2 + 3?", "answer": "5"}`` carries the ground truth of a verifiable reward
(``exact_match``, ``numeric_match``). When such a rule's ``args`` name a ``field``, every prompt
row must carry it: a row without it fails the run before any actor starts. Rules are cheap and
run on the driver; they counter known biases of learned reward models (length, repetition),
check a format or verify an answer.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

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


# The final answer of a response is the text after its last "answer is" or "answer:" marker
# (any case, so "The answer is", "Final answer:" and "Answer:" all count), else all of it.
_ANSWER_MARKER = re.compile(r"answer\s*(?:is\b|:)", re.IGNORECASE)
_EDGE_PUNCT = "\"'`.,;:!?()[]{}<>*_ \t\n\r"
# A number: an optional sign, digits with optional thousands commas, an optional decimal part
# (or a bare ".5"), optionally over a denominator ("1/2", "-3/4").
_NUMBER = re.compile(r"(?<![\d.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")


def final_answer(response: str) -> str:
    """The text after the last "answer is" / "answer:" marker (case-insensitive) of ``response``,
    or the whole response where it has none; stripped of whitespace either way."""
    found = None
    for found in _ANSWER_MARKER.finditer(response):
        pass
    return (response[found.end():] if found else response).strip()


def normalize_answer(text: str) -> str:
    """``text`` stripped of surrounding whitespace and punctuation (quotes, brackets, periods,
    commas, ``*`` and ``_`` of markdown emphasis), inner whitespace collapsed, case-folded."""
    return " ".join(str(text).strip(_EDGE_PUNCT).split()).casefold()


def _field(row: dict | None, field: str, rule: str):
    if row is None or field not in row:
        have = ", ".join(sorted(row)) if row else "none"
        raise KeyError(f"{rule}: the prompt row has no field {field!r} holding the reference answer "
                       f"(its fields: {have}); set args.field to the column that holds it")
    return row[field]


def exact_match(prompt: str, response: str, row: dict | None = None, field: str = "answer",
                reward: float = 1.0, penalty: float = 0.0) -> float:
    """``reward`` when the response's final answer (``final_answer``) equals ``row[field]``, both
    normalised by ``normalize_answer``, else ``penalty``: "The answer is Paris." matches "paris"."""
    expected = _field(row, field, "exact_match")
    return reward if normalize_answer(final_answer(response)) == normalize_answer(expected) else penalty


def parse_number(text) -> float | None:
    """A number's value: an int or float as is; a string such as "1,234", "-0.5", ".5", "3." or
    "1/2" (after ``normalize_answer``'s stripping); None when it is not one."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip(_EDGE_PUNCT.replace(".", "")).rstrip(".").replace(",", "").replace(" ", "")
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(Fraction(num) / Fraction(den))
        return float(Fraction(s))
    except (ValueError, ZeroDivisionError):
        return None


def last_number(text: str) -> float | None:
    """The value of the last number written in ``text`` ("so 2 + 3 = 5." gives 5.0; "1,234"
    1234.0; "1/2" 0.5; "-0.25" -0.25), or None when it has none."""
    found = [m.group(0) for m in _NUMBER.finditer(text) if any(c.isdigit() for c in m.group(0))]
    for candidate in reversed(found):
        value = parse_number(candidate)
        if value is not None:
            return value
    return None


def numeric_match(prompt: str, response: str, row: dict | None = None, field: str = "answer",
                  rel_tol: float = 1e-6, abs_tol: float = 1e-9, reward: float = 1.0,
                  penalty: float = 0.0) -> float:
    """``reward`` when the last number of the response (``last_number``: thousands commas, a
    trailing period, decimals and "a/b" fractions) equals the number ``row[field]`` within
    ``math.isclose(rel_tol, abs_tol)``, else ``penalty`` (also for a response without a number)."""
    raw = _field(row, field, "numeric_match")
    expected = parse_number(raw)
    if expected is None:
        raise ValueError(f"numeric_match: the prompt row's field {field!r} is {raw!r}, not a number")
    got = last_number(response)
    return reward if got is not None and math.isclose(got, expected, rel_tol=rel_tol, abs_tol=abs_tol) else penalty
