"""The judge's prompt, from a YAML file: preamble, constitution, few-shot examples, the sample
to annotate and the ending string (Lee et al. 2023, RLAIF, Sec. 2.1 and Table 1):

    preamble: "A good response answers the question asked, correctly and plainly."
    constitution:                      # one principle sampled per label (or all of them)
      - "Prefer the response that states the right answer to the question."
      - "Prefer the response that refuses to help with harm, and says why."
    principles: sample                 # sample | all
    few_shot:                          # solved examples, shown before the sample
      - {prompt: "Where is the red key?", response_1: "In the hall.",
         response_2: "The red key is in the kitchen.", preferred: 2}
    sample: "Question: {prompt}\\nResponse 1: {response_1}\\nResponse 2: {response_2}"
    ending: "Preferred Response = "
    chain_of_thought: false            # true: the judge writes a rationale before the ending

The text up to the sample is the user's message, rendered with the judge's chat template; the
judge's reply starts with the ending string (after its rationale, with chain of thought), and
the label is read from its next token, "1" or "2".
"""
from __future__ import annotations

import os
import random
import string
from dataclasses import dataclass, field
from typing import Literal

DEFAULT_PREAMBLE = ("Compare two responses to the same request and say which one is better: more "
                    "helpful, correct and harmless.")


@dataclass
class FewShotExample:
    prompt: str = ""
    """The request of the solved example."""
    response_1: str = ""
    """kind pairwise: its first response."""
    response_2: str = ""
    """kind pairwise: its second response."""
    preferred: int = 0
    """kind pairwise: the better one, 1 or 2."""
    response: str = ""
    """kind direct: the response rated."""
    score: str = ""
    """kind direct: its rating, one of the template's choices."""
    rationale: str = ""
    """With chain_of_thought: the reasoning shown before the ending string."""

    def validate(self) -> list[str]:
        out = [] if self.prompt else ["prompt: required"]
        if self.response or self.score:  # a rated response (kind direct)
            out += [] if self.response else ["response: required with score"]
            out += [] if self.score else ["score: required with response: one of the template's choices"]
            out += [f"{k}: a rated example (response, score) has no {k}"
                    for k in ("response_1", "response_2") if getattr(self, k)]
            return out
        out += [f"{k}: required" for k in ("response_1", "response_2") if not getattr(self, k)]
        if self.preferred not in (1, 2):
            out.append(f"preferred: must be 1 or 2, got {self.preferred}")
        return out


PAIRWISE_FIELDS = {"prompt", "response_1", "response_2"}
DIRECT_FIELDS = {"prompt", "response"}
DEFAULT_SAMPLE = {"pairwise": "Request: {prompt}\nResponse 1: {response_1}\nResponse 2: {response_2}",
                  "direct": "Request: {prompt}\nResponse: {response}"}


@dataclass
class JudgeTemplate:
    kind: Literal["pairwise", "direct"] = "pairwise"
    """pairwise: which of two responses is better (labels, and rewards against a reference
    response); direct: rate one response with one of ``choices`` (d-RLAIF, Lee et al. 2023
    Sec. 2.2.2: the reward is the expected rating under the judge's next-token distribution)."""
    preamble: str = DEFAULT_PREAMBLE
    """What the judge is asked to do, first in its prompt."""
    constitution: list[str] = field(default_factory=list)
    """Principles the judge applies (Constitutional AI, Bai et al. 2022); empty: none shown."""
    principles: Literal["sample", "all"] = "sample"
    """sample: one principle per pair, drawn with the run's seed (the same in both orders);
    all: every principle in every prompt."""
    few_shot: list[FewShotExample] = field(default_factory=list)
    """Solved examples shown before the sample, each with its answer after the ending string."""
    sample: str = ""
    """What the judge judges: pairwise, {prompt}, {response_1} and {response_2} are filled in
    (default "Request: {prompt}\\nResponse 1: {response_1}\\nResponse 2: {response_2}");
    direct, {prompt} and {response} (default "Request: {prompt}\\nResponse: {response}")."""
    ending: str = "Preferred Response = "
    """The string after which the judge's next token is the label."""
    ending_in_reply: bool = True
    """Open the judge's reply with the ending string (its next token is the label); false: end
    the prompt with it, so the label is the reply's first token (a judge fine-tuned on
    `judge_sft` rows then learns from a reply of one token instead of the ending's many)."""
    choices: list[str] = field(default_factory=list)
    """Pairwise: what the judge says for the first and for the second response (default 1, 2);
    direct: the ratings, worst first (default 1 .. 9), scored 0 .. 1 evenly."""
    chat: bool = True
    """Render the prompt with the judge's chat template (the ending opens the assistant's turn);
    false: one plain text, the ending on a line after the sample (a base model as judge)."""
    chain_of_thought: bool = False
    """Let the judge write a rationale (after ``rationale_prompt``) before the ending string."""
    rationale_prompt: str = "Rationale:"
    """With chain_of_thought: what opens the judge's reply before its rationale."""
    max_rationale_tokens: int = 128
    """With chain_of_thought: the rationale's length limit in tokens."""

    def validate(self) -> list[str]:
        out = []
        want = PAIRWISE_FIELDS if self.kind == "pairwise" else DIRECT_FIELDS
        fields = {name for _, name, _, _ in string.Formatter().parse(self.sample_text) if name is not None}
        if want - fields:
            out.append(f"sample: must contain {', '.join('{' + m + '}' for m in sorted(want - fields))}")
        if fields - want:
            out.append(f"sample: unknown fields {sorted(fields - want)}; only "
                       f"{', '.join('{' + m + '}' for m in sorted(want))} are filled in (write {{{{ and }}}} for braces)")
        for i, ex in enumerate(self.few_shot):
            rated = bool(ex.response or ex.score)
            if rated != (self.kind == "direct"):
                out.append(f"few_shot[{i}]: a kind {self.kind} template shows "
                           + ("rated responses (response, score)" if self.kind == "direct"
                              else "solved pairs (response_1, response_2, preferred)"))
            elif rated and ex.score not in self.labels:
                out.append(f"few_shot[{i}].score: {ex.score!r} is not one of the choices {self.labels}")
        if not self.ending:
            out.append("ending: required: the string after which the judge says its choice")
        n = 2 if self.kind == "pairwise" else None
        if (n and len(self.labels) != n) or len(self.labels) < 2 or len(set(self.labels)) != len(self.labels) \
                or not all(self.labels):
            out.append(f"choices: must be {'two' if n else 'at least two'} different non-empty strings, got {self.choices}")
        if self.principles == "sample" and any(not p.strip() for p in self.constitution):
            out.append("constitution: a principle is empty")
        if self.chain_of_thought and not self.ending_in_reply:
            out.append("ending_in_reply: chain_of_thought writes the rationale before the ending, so the ending "
                       "must open the reply (set ending_in_reply: true)")
        if self.chain_of_thought and self.max_rationale_tokens <= 0:
            out.append("max_rationale_tokens: must be positive with chain_of_thought")
        return out

    @property
    def sample_text(self) -> str:
        return self.sample or DEFAULT_SAMPLE[self.kind]

    @property
    def labels(self) -> list[str]:
        """The choices, or the kind's default."""
        return self.choices or (["1", "2"] if self.kind == "pairwise" else [str(i) for i in range(1, 10)])

    def principles_for(self, seed: int, index: int) -> list[str]:
        """The principles shown for pair ``index``: one drawn by (seed, index), or all."""
        if not self.constitution or self.principles == "all":
            return list(self.constitution)
        return [random.Random(f"judge/{seed}/{index}").choice(self.constitution)]

    def _sample(self, prompt: str, first: str, second: str | None = None) -> str:
        if self.kind == "direct":
            return self.sample_text.format(prompt=prompt, response=first)
        return self.sample_text.format(prompt=prompt, response_1=first, response_2=second)

    def question(self, prompt: str, first: str, second: str | None, principles: list[str]) -> str:
        """Everything before the judge's reply: preamble, principles, solved examples, sample
        (``second`` is None for a direct rating)."""
        parts = [self.preamble.strip()] if self.preamble.strip() else []
        if len(principles) == 1:
            parts.append(f"Principle: {principles[0]}")
        elif principles:
            parts.append("Principles:\n" + "\n".join(f"- {p}" for p in principles))
        for ex in self.few_shot:
            reply = f"{self.rationale_prompt} {ex.rationale}\n" if self.chain_of_thought and ex.rationale else ""
            shown = self._sample(ex.prompt, ex.response) if self.kind == "direct" else \
                self._sample(ex.prompt, ex.response_1, ex.response_2)
            answer = ex.score if self.kind == "direct" else self.labels[ex.preferred - 1]
            parts.append(f"{shown}\n{reply}{self.ending}{answer}")
        parts.append(self._sample(prompt, first, second))
        if not self.ending_in_reply:
            parts[-1] += f"\n{self.ending.rstrip()}"
        return "\n\n".join(parts)

    def reply(self, rationale: str | None = None) -> str:
        """The judge's reply up to its choice: the ending, after the rationale with chain of thought."""
        if not self.chain_of_thought:
            return self.ending if self.ending_in_reply else ""
        return f"{self.rationale_prompt} {(rationale or '').strip()}\n{self.ending}"


BUNDLED = os.path.join(os.path.dirname(__file__), "templates")


def template_path(name: str) -> str:
    """A template file, or the name of a bundled one (``toyworld``: rayrlhf/feedback/templates/)."""
    bundled = os.path.join(BUNDLED, f"{name}.yaml")
    return bundled if not os.path.exists(name) and os.path.exists(bundled) else name


def load_template(path: str) -> JudgeTemplate:
    """A template file (or a bundled template's name), checked; a ConfigError names the file and
    every bad key."""
    from rayrlhf.config.loader import load_config

    return load_config(JudgeTemplate, template_path(path))
