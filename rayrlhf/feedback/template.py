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
    """Its first response."""
    response_2: str = ""
    """Its second response."""
    preferred: int = 1
    """The better one: 1 or 2."""
    rationale: str = ""
    """With chain_of_thought: the reasoning shown before the ending string."""

    def validate(self) -> list[str]:
        out = [f"{k}: required" for k in ("prompt", "response_1", "response_2") if not getattr(self, k)]
        if self.preferred not in (1, 2):
            out.append(f"preferred: must be 1 or 2, got {self.preferred}")
        return out


@dataclass
class JudgeTemplate:
    preamble: str = DEFAULT_PREAMBLE
    """What the judge is asked to do, first in its prompt."""
    constitution: list[str] = field(default_factory=list)
    """Principles the judge applies (Constitutional AI, Bai et al. 2022); empty: none shown."""
    principles: Literal["sample", "all"] = "sample"
    """sample: one principle per pair, drawn with the run's seed (the same in both orders);
    all: every principle in every prompt."""
    few_shot: list[FewShotExample] = field(default_factory=list)
    """Solved examples shown before the sample, each with its answer after the ending string."""
    sample: str = "Request: {prompt}\nResponse 1: {response_1}\nResponse 2: {response_2}"
    """The pair to label; {prompt}, {response_1} and {response_2} are filled in."""
    ending: str = "Preferred Response = "
    """The start of the judge's reply; its next token is the label."""
    choices: list[str] = field(default_factory=lambda: ["1", "2"])
    """What the judge says for the first and for the second response."""
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
        fields = {name for _, name, _, _ in string.Formatter().parse(self.sample) if name is not None}
        missing = {"prompt", "response_1", "response_2"} - fields
        if missing:
            out.append(f"sample: must contain {', '.join('{' + m + '}' for m in sorted(missing))}")
        if fields - {"prompt", "response_1", "response_2"}:
            out.append(f"sample: unknown fields {sorted(fields - {'prompt', 'response_1', 'response_2'})}; "
                       "only {prompt}, {response_1} and {response_2} are filled in (write {{ and }} for braces)")
        if not self.ending:
            out.append("ending: required: the string after which the judge says its choice")
        if len(self.choices) != 2 or len(set(self.choices)) != 2 or not all(self.choices):
            out.append(f"choices: must be two different non-empty strings, got {self.choices}")
        if self.principles == "sample" and any(not p.strip() for p in self.constitution):
            out.append("constitution: a principle is empty")
        if self.chain_of_thought and self.max_rationale_tokens <= 0:
            out.append("max_rationale_tokens: must be positive with chain_of_thought")
        return out

    def principles_for(self, seed: int, index: int) -> list[str]:
        """The principles shown for pair ``index``: one drawn by (seed, index), or all."""
        if not self.constitution or self.principles == "all":
            return list(self.constitution)
        return [random.Random(f"judge/{seed}/{index}").choice(self.constitution)]

    def _sample(self, prompt: str, first: str, second: str) -> str:
        return self.sample.format(prompt=prompt, response_1=first, response_2=second)

    def question(self, prompt: str, first: str, second: str, principles: list[str]) -> str:
        """Everything before the judge's reply: preamble, principles, solved examples, sample."""
        parts = [self.preamble.strip()] if self.preamble.strip() else []
        if len(principles) == 1:
            parts.append(f"Principle: {principles[0]}")
        elif principles:
            parts.append("Principles:\n" + "\n".join(f"- {p}" for p in principles))
        for ex in self.few_shot:
            reply = f"{self.rationale_prompt} {ex.rationale}\n" if self.chain_of_thought and ex.rationale else ""
            parts.append(f"{self._sample(ex.prompt, ex.response_1, ex.response_2)}\n"
                         f"{reply}{self.ending}{self.choices[ex.preferred - 1]}")
        parts.append(self._sample(prompt, first, second))
        return "\n\n".join(parts)

    def reply(self, rationale: str | None = None) -> str:
        """The judge's reply up to its choice: the ending, after the rationale with chain of thought."""
        if not self.chain_of_thought:
            return self.ending
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
