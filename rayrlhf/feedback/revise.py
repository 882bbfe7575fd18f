"""Critique and revision (Constitutional AI, Bai et al. 2022): the policy critiques a response
by a principle of the constitution and revises it; a judge decides whether the revision is
acceptable, and says why not, which the next round's revision request shows.

``Reviser`` is a plain class over four functions, so the loop runs the same on Ray fleets
(`rayrlhf revise`) and over stand-ins in tests:

    generate(prompt_ids) -> [text, ...]                          the policy
    judge_generate(prompt_ids) -> [text, ...]                    the judge (its reasons)
    and the judge's ``Judge`` (kind direct: P(acceptable) is its expected rating, from
    choice_logprobs(prompt_ids, choices))

Each round of an item: (1) critique of the current response (the original, then the last
rejected revision) by a principle drawn for (seed, item, round); (2) revision given the
critique and, after a rejection, the judge's reason; (3) the judge's P(acceptable) of the
revision; at or above ``accept_threshold`` the item is done, below it the judge is asked why
and the item goes on, until ``max_rounds``.

Each round's items are rated in one call to the judge, so a judge template that samples one of
its own principles draws it by the item's place in that call; the bundled one shows them all.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rayrlhf.feedback.judge import Judge, conversation_text, head_ids
from rayrlhf.feedback.revise_template import ReviseTemplate


@dataclass
class Item:
    """A prompt and the response to clean."""

    prompt: list[dict]
    response: str
    meta: dict = field(default_factory=dict)
    where: str = ""
    """file:line, named in errors and kept in the outputs."""


@dataclass
class Round:
    """One round of one item."""

    item: int
    round: int
    principle: str
    critique: str
    revision: str
    p_acceptable: float
    accepted: bool
    reason: str | None = None
    """The judge's reason for a rejection (None when accepted)."""


class Reviser:
    def __init__(self, template: ReviseTemplate, judge: Judge, tokenizer, generate, judge_generate, *,
                 accept_threshold: float = 0.5, max_rounds: int = 2, seed: int = 0,
                 max_len: int | None = None, max_new_tokens: int = 0, judge_max_len: int | None = None,
                 judge_max_new_tokens: int = 0):
        """``tokenizer``: the policy's; ``max_len`` / ``max_new_tokens``: the policy engines'
        context and reply length (``judge_*``: the judge's), for the length checks."""
        self.t, self.judge, self.tok = template, judge, tokenizer
        self._generate, self._judge_generate = generate, judge_generate
        self.threshold, self.max_rounds, self.seed = accept_threshold, max_rounds, seed
        self.max_len, self.budget = max_len, max_new_tokens
        self.judge_max_len, self.judge_budget = judge_max_len, judge_max_new_tokens
        # The reason is asked after the judge's question about the revision, not after its ending.
        self._reason_t = dataclasses.replace(judge.t, ending_in_reply=True, chain_of_thought=False)

    # ---- prompts ------------------------------------------------------------------------------

    def policy_ids(self, text: str) -> list[int]:
        return head_ids(self.tok, self.t, text)

    def reason_ids(self, prompt: list[dict], revision: str, index: int) -> list[int]:
        """The judge's question about ``revision`` and the template's reason request."""
        q = self._reason_t.question(conversation_text(prompt), revision, None,
                                    self.judge.t.principles_for(self.seed, index))
        return head_ids(self.judge.tok, self.judge.t, f"{q}\n\n{self.t.reason_request}")

    def _check(self, ids: list[int], where: str, what: str, max_len, budget: int) -> None:
        if max_len is not None and len(ids) + budget > max_len:
            raise ValueError(f"{where}: the {what} needs {len(ids) + budget} tokens ({budget} of them for the reply), "
                             f"over rollout.max_model_len {max_len}; raise it or shorten the prompt or template")

    def check_lengths(self, items: list[Item], sampled: bool = False) -> None:
        """Before anything runs: every item's longest prompt fits its engine. The bound: the
        round-1 revision prompt with the longest principle, room for a critique, a reason and a
        revision of max_new_tokens each (and a critiqued response of max_new_tokens where that
        is longer than the original; ``sampled``: the original is a policy sample)."""
        principle = max(self.t.constitution, key=len)
        for it in items:
            text = self.t.revision_prompt(conversation_text(it.prompt), it.response, principle, "", "")
            n_resp = 0 if sampled else len(self.tok.encode(it.response, add_special_tokens=False))
            extra = max(0, self.budget - n_resp) + self.budget + self.judge_budget
            self._check(self.policy_ids(text) + [0] * extra, it.where, "revision prompt", self.max_len, self.budget)
            judge_ids = self.reason_ids(it.prompt, "", 0) + [0] * self.budget
            self._check(judge_ids, it.where, "judge's reason prompt", self.judge_max_len, self.judge_budget)

    # ---- the loop -----------------------------------------------------------------------------

    def _policy(self, texts: list[str], where: list[str], what: str) -> list[str]:
        ids = [self.policy_ids(t) for t in texts]
        for x, w in zip(ids, where):
            self._check(x, w, what, self.max_len, self.budget)
        return [s.strip() for s in self._generate(ids)] if ids else []

    def run(self, items: list[Item], start: int = 0) -> list[list[Round]]:
        """Every round of every item; ``start`` is the first item's index in the whole set (it
        seeds the principles drawn)."""
        current = [it.response for it in items]
        reasons: list[str | None] = [None] * len(items)
        rounds: list[list[Round]] = [[] for _ in items]
        active = list(range(len(items)))
        for r in range(1, self.max_rounds + 1):
            if not active:
                break
            active = self._round(items, active, r, start, current, reasons, rounds)
        return rounds

    def _round(self, items, active, r, start, current, reasons, rounds) -> list[int]:
        """One round of the ``active`` items; returns those rejected."""
        texts = [conversation_text(items[i].prompt) for i in active]
        where = [items[i].where or f"item {start + i}" for i in active]
        principles = [self.t.principle(self.seed, start + i, r) for i in active]
        critiques = self._policy([self.t.critique_prompt(q, current[i], p)
                                  for q, i, p in zip(texts, active, principles)], where, "critique prompt")
        revisions = self._policy([self.t.revision_prompt(q, current[i], p, c, reasons[i])
                                  for q, i, p, c in zip(texts, active, principles, critiques)], where,
                                 "revision prompt")
        p_ok = self.judge.rate([items[i].prompt for i in active], revisions, where).tolist()
        rejected = [k for k, p in enumerate(p_ok) if p < self.threshold]
        reason_ids = [self.reason_ids(items[active[k]].prompt, revisions[k], k) for k in rejected]
        for k, x in zip(rejected, reason_ids):
            self._check(x, where[k], "judge's reason prompt", self.judge_max_len, self.judge_budget)
        said = dict(zip(rejected, [s.strip() for s in self._judge_generate(reason_ids)] if rejected else []))
        for k, i in enumerate(active):
            rounds[i].append(Round(start + i, r, principles[k], critiques[k], revisions[k], float(p_ok[k]),
                                   k not in said, said.get(k)))
            if k in said:
                current[i], reasons[i] = revisions[k], said[k]
        return [active[k] for k in rejected]
