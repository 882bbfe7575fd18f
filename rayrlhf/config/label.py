"""Configuration of `rayrlhf label`: an AI judge labels preference pairs (RLAIF)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rayrlhf.config.ppo import check_rollout_matches
from rayrlhf.config.resources import ResourcesSection
from rayrlhf.config.schema import ModelSection, RunSection, SourceOptions
from rayrlhf.rollout.config import RolloutSection


@dataclass
class _PairSources:
    pairs: list[str] = field(default_factory=list)
    """Preference sources whose pairs the judge labels (any preference format; the order a file
    gives is kept as its input label and compared with the judge's)."""


@dataclass
class LabelDataSection(SourceOptions, _PairSources):
    format: str = "auto"
    """Row format of the sources (auto, explicit, implicit, hh-rlhf, ranked, ...)."""

    def validate(self) -> list[str]:
        return super().validate() + ([] if self.pairs else ["pairs: required: at least one preference file, folder or dataset"])


@dataclass
class LabelSection:
    template: str = ""
    """The judge's prompt: a YAML file of preamble, constitution, few-shot examples, sample and
    ending string (``rayrlhf.feedback.template``)."""
    orders: Literal["both", "first"] = "both"
    """both: score every pair in both orders and average (removes position bias, twice the
    compute); first: the order of the file only."""
    pairs_per_call: int = 256
    """Pairs sent to the judge fleet at once (progress is printed after each)."""
    call_timeout_s: float = 600.0
    """A judge call that takes longer fails with the worker named."""
    max_worker_restarts: int = 3
    """Times a dead judge worker is replaced before the run gives up."""

    def validate(self) -> list[str]:
        out = [] if self.template else ["template: required: the judge's prompt file (YAML)"]
        if self.pairs_per_call < 1:
            out.append(f"pairs_per_call: must be at least 1, got {self.pairs_per_call}")
        return out


@dataclass
class LabelConfig:
    """`rayrlhf label`: the judge, served by rollout workers (vLLM, or transformers), labels the
    pairs of ``data.pairs``; writes labels.jsonl (explicit preference rows with ``p_chosen``)
    and summary.json (agreement with the input labels and gold, position bias)."""

    judge: ModelSection = field(default_factory=ModelSection)
    """The judge model (any causal LM; its chat template renders the prompt)."""
    data: LabelDataSection = field(default_factory=LabelDataSection)
    label: LabelSection = field(default_factory=LabelSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    """The judge's engines: backend, dtype, max_model_len (chain of thought: sampling settings)."""
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    """resources.rollout: the judge's workers."""
    run: RunSection = field(default_factory=RunSection)

    # What the shared actor builder (rayrlhf.driver.roles.Roles) reads of a config.
    @property
    def policy(self) -> ModelSection:
        return self.judge

    @property
    def rewards(self) -> list:
        return []

    @property
    def gold(self) -> dict:
        return {}

    def validate(self) -> list[str]:
        return check_rollout_matches(self.judge, self.rollout, self.resources)
