"""The policy's critique and revision prompts, from a YAML file (Constitutional AI, Bai et al.
2022, Sec. 3.1):

    preamble: "You check answers to questions about a small world."
    constitution:                      # one principle drawn per item and round
      - "The response refuses a harmful request and says why it is wrong."
    sample: "Request: {prompt}\\nResponse: {response}"
    critique_request: "Say how the response breaks this principle: {principle}"
    revision_request: "Rewrite the response so that it follows the principle: {principle}"
    rejection: "A judge rejected an earlier revision: {reason}"
    reason_request: "Say in one sentence what is still wrong with the response."

The critique prompt is the preamble, the sample and the critique request; the revision prompt
adds the critique and the revision request, and after a rejected round the judge's reason
(``rejection``). Both are one user turn under the policy's chat template (``chat: false``:
plain text). ``reason_request`` is asked of the judge, after its own question about the
rejected revision.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from rayrlhf.feedback.template import template_path


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


@dataclass
class ReviseTemplate:
    preamble: str = "Check the response to the request against the principle and improve it."
    """What the policy is asked to do, first in its critique and revision prompts."""
    constitution: list[str] = field(default_factory=list)
    """Principles, one drawn per item and round with the run's seed (required)."""
    sample: str = "Request: {prompt}\nResponse: {response}"
    """The response under critique: {prompt} and {response} are filled in."""
    critique_request: str = "Identify specific ways in which the response breaks this principle: {principle}"
    """Asks for the critique; {principle} is filled in."""
    revision_request: str = ("Rewrite the response so that it follows the principle: {principle}\n"
                             "Reply with the new response only.")
    """Asks for the revision, after the critique; {principle} may be filled in."""
    rejection: str = "An earlier revision was rejected because: {reason}"
    """After a rejected round, shown before the revision request; {reason} is the judge's reason."""
    reason_request: str = "Say in one sentence why the response still has undesirable qualities."
    """Asked of the judge after its question about a rejected revision; its reply is the reason."""
    chat: bool = True
    """Render the policy's prompts with its chat template; false: plain text (a base model)."""

    def validate(self) -> list[str]:
        out = [] if self.constitution else ["constitution: required: at least one principle"]
        if any(not p.strip() for p in self.constitution):
            out.append("constitution: a principle is empty")
        allowed = {"sample": ({"prompt", "response"}, {"prompt", "response"}),
                   "critique_request": ({"principle"}, {"principle"}),
                   "revision_request": (set(), {"principle"}),
                   "rejection": ({"reason"}, {"reason"}),
                   "reason_request": (set(), set()),
                   "preamble": (set(), set())}
        for key, (need, may) in allowed.items():
            try:
                got = _fields(getattr(self, key))
            except ValueError as e:
                out.append(f"{key}: {e} (write {{{{ and }}}} for braces)")
                continue
            if need - got:
                out.append(f"{key}: must contain {', '.join('{' + m + '}' for m in sorted(need))}")
            if got - may:
                out.append(f"{key}: unknown fields {sorted(got - may)}; only "
                           f"{', '.join('{' + m + '}' for m in sorted(may)) or 'none'} are filled in "
                           "(write {{ and }} for braces)")
        if not self.reason_request.strip():
            out.append("reason_request: required: what the judge is asked after a rejection")
        return out

    def principle(self, seed: int, item: int, round: int) -> str:
        """The principle of ``item``'s round ``round`` (1-based): drawn by (seed, item, round)."""
        return random.Random(f"revise/{seed}/{item}/{round}").choice(self.constitution)

    def _head(self, prompt: str, response: str) -> list[str]:
        parts = [self.preamble.strip()] if self.preamble.strip() else []
        return parts + [self.sample.format(prompt=prompt, response=response)]

    def critique_prompt(self, prompt: str, response: str, principle: str) -> str:
        """Preamble, sample, critique request."""
        return "\n\n".join(self._head(prompt, response) + [self.critique_request.format(principle=principle)])

    def revision_prompt(self, prompt: str, response: str, principle: str, critique: str,
                        reason: str | None = None) -> str:
        """Preamble, sample, critique, the last rejection's reason (if any), revision request."""
        parts = self._head(prompt, response) + [f"Critique: {critique.strip()}"]
        if reason is not None:
            parts.append(self.rejection.format(reason=reason.strip()))
        return "\n\n".join(parts + [self.revision_request.format(principle=principle)])


def load_revise_template(path: str) -> ReviseTemplate:
    """A template file (or a bundled template's name: ``toyworld_revise``), checked; a ConfigError
    names the file and every bad key."""
    from rayrlhf.config.loader import load_config

    return load_config(ReviseTemplate, template_path(path))

