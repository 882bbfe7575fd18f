"""An AI judge: preference labels from a causal LM's next-token log-probabilities (RLAIF).

``Judge`` is a plain class over two functions, so it runs the same on the rollout fleet
(vLLM or transformers workers on Ray, `rayrlhf label`) and on one backend in-process:

    choice_logprobs(prompt_ids, choices) -> [[log p(choice) for choice in choices[i]], ...]
    generate(prompt_ids) -> [text, ...]            # chain of thought only

Each pair is scored in both orders and the two averaged (``rayrlhf.algo.judging``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rayrlhf.algo.judging import choice_mass, debiased, expected_rating, first_preferred
from rayrlhf.data.tokenize import render_prompt
from rayrlhf.feedback.template import JudgeTemplate


def conversation_text(messages: list[dict]) -> str:
    """A prompt's text for the judge: a single user turn as is, a conversation turn by turn."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def head_ids(tokenizer, template: JudgeTemplate, question: str) -> list[int]:
    """Token ids of the judge's prompt up to its reply: the chat template's user turn and
    generation prompt, or (``chat: false``) the plain text and a blank line."""
    if template.chat:
        return render_prompt(tokenizer, [{"role": "user", "content": question}])
    return list(tokenizer(question + "\n\n").input_ids)


def reply_ids(tokenizer, template: JudgeTemplate, reply: str) -> tuple[list[int], list[int]]:
    """(tokens of the reply before the choice, the token of each choice after them).

    The reply is encoded with each choice appended, so a tokenizer that merges the ending's
    last characters with the choice ("= " + "1" -> "=", " 1") is read the way it writes.
    """
    encoded = [tokenizer.encode(reply + c, add_special_tokens=False) for c in template.labels]
    n = 0
    while all(len(e) > n for e in encoded) and len({e[n] for e in encoded}) == 1:
        n += 1
    if any(len(e) != n + 1 for e in encoded):
        pieces = [tokenizer.convert_ids_to_tokens(e[n:]) for e in encoded]
        raise ValueError(f"judge template: ending {template.ending!r} followed by the choices "
                         f"{template.labels} does not end in one token per choice ({pieces}); end the "
                         "ending string differently (e.g. without a trailing space) or use one-token choices")
    return encoded[0][:n], [e[n] for e in encoded]


@dataclass
class Labels:
    """The judge's verdicts on pairs (a, b). Shapes: (N,)."""

    p_a: torch.Tensor
    """P(a preferred), averaged over both orders (or from the order a-first alone)."""
    p_ab: torch.Tensor
    """P(first preferred) with a shown first."""
    p_ba: torch.Tensor
    """P(first preferred) with b shown first (NaN with ``orders: first``)."""
    mass: torch.Tensor
    """p("1") + p("2") with a first: how much the judge's next token is a choice at all."""
    principles: list[list[str]]
    rationales: list[list[str]]
    """With chain of thought, the rationale of each order (a first, then b first)."""

    @staticmethod
    def cat(parts: list["Labels"]) -> "Labels":
        return Labels(*(torch.cat([getattr(p, k) for p in parts]) for k in ("p_a", "p_ab", "p_ba", "mass")),
                      [x for p in parts for x in p.principles], [x for p in parts for x in p.rationales])


class Judge:
    def __init__(self, template: JudgeTemplate, tokenizer, choice_logprobs, generate=None, seed: int = 0,
                 max_len: int | None = None):
        """``max_len``: the judge engine's context; a longer prompt is an error naming the pair."""
        if template.chain_of_thought and generate is None:
            raise ValueError("judge template: chain_of_thought needs a judge that generates")
        self.t, self.tok, self.seed, self.max_len = template, tokenizer, seed, max_len
        self._choice_logprobs, self._generate = choice_logprobs, generate
        if not template.chain_of_thought:
            self._reply = reply_ids(tokenizer, template, template.reply())

    def questions(self, prompts: list[list[dict]], a: list[str], b: list[str] | None, start: int = 0,
                  both: bool = True) -> tuple[list[str], list[list[str]]]:
        """The judge's prompt texts (a first for every pair, then b first; each response alone
        when ``b`` is None) and each item's principles."""
        principles = [self.t.principles_for(self.seed, start + i) for i in range(len(prompts))]
        texts = [conversation_text(p) for p in prompts]
        seconds = b if b is not None else [None] * len(a)
        out = [self.t.question(q, x, y, pr) for q, x, y, pr in zip(texts, a, seconds, principles)]
        if both and b is not None:
            out += [self.t.question(q, y, x, pr) for q, x, y, pr in zip(texts, a, b, principles)]
        return out, principles

    def prepare(self, prompts: list[list[dict]], a: list[str], b: list[str], where: list[str],
                start: int = 0, both: bool = True) -> tuple[list[list[int]], list[list[int]], list, list[str]]:
        """(token ids to score, their choice tokens, each pair's principles, rationales): a first
        for every pair, then (``both``) b first. Only chain of thought calls the judge here."""
        questions, principles = self.questions(prompts, a, b, start, both)
        heads = [head_ids(self.tok, self.t, q) for q in questions]
        where = where + where if both and b is not None else where
        rationales = [""] * len(heads)
        if self.t.chain_of_thought:
            opener = self.tok.encode(self.t.rationale_prompt, add_special_tokens=False)
            self._check_lengths([h + opener for h in heads], where, self.t.max_rationale_tokens + 8)
            rationales = [r.split(self.t.ending)[0].strip() for r in self._generate([h + opener for h in heads])]
            replies = [reply_ids(self.tok, self.t, self.t.reply(r)) for r in rationales]
        else:
            replies = [self._reply] * len(heads)
        seqs = [h + r for h, (r, _) in zip(heads, replies)]
        self._check_lengths(seqs, where, 1)
        return seqs, [c for _, c in replies], principles, rationales

    def _check_lengths(self, seqs: list[list[int]], where: list[str], extra: int) -> None:
        if self.max_len is None:
            return
        for s, w in zip(seqs, where):
            if len(s) + extra > self.max_len:
                raise ValueError(f"{w}: the judge's prompt needs {len(s) + extra} tokens, over the judge engine's "
                                 f"rollout.max_model_len {self.max_len}; raise it or shorten the template")

    def label(self, prompts: list[list[dict]], a: list[str], b: list[str], where: list[str] | None = None,
              start: int = 0, both: bool = True) -> Labels:
        """Label each pair (prompts[i], a[i], b[i]); ``where`` names each pair in errors (file:line),
        ``start`` is the first pair's index in the whole set (it seeds the principle drawn)."""
        where = where or [f"pair {start + i}" for i in range(len(prompts))]
        return self.verdicts(self.prepare(prompts, a, b, where, start, both), both)

    def verdicts(self, prepared: tuple, both: bool = True) -> Labels:
        """The labels of pairs ``prepare`` built (its whole output): one call to the judge."""
        seqs, choices, principles, rationales = prepared
        n = len(principles)
        lp = torch.tensor(self._choice_logprobs(seqs, choices), dtype=torch.float64)  # (N or 2N, 2)
        p_first = first_preferred(lp)
        p_ab = p_first[:n]
        p_ba = p_first[n:] if both else torch.full((n,), float("nan"), dtype=torch.float64)
        p_a = debiased(p_ab, p_ba) if both else p_ab
        pairs_rationales = [[rationales[i]] + ([rationales[n + i]] if both else []) for i in range(n)]
        return Labels(p_a, p_ab, p_ba, choice_mass(lp[:n]), principles, pairs_rationales)

    def rate(self, prompts: list[list[dict]], responses: list[str], where: list[str] | None = None,
             start: int = 0) -> torch.Tensor:
        """kind direct: each response's expected rating, in [0, 1] (``expected_rating``). Shape: (N,)."""
        where = where or [f"response {start + i}" for i in range(len(prompts))]
        seqs, choices, _, _ = self.prepare(prompts, responses, None, where, start, both=False)
        return expected_rating(torch.tensor(self._choice_logprobs(seqs, choices), dtype=torch.float64))

