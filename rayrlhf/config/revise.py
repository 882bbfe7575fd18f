"""Configuration of `rayrlhf revise`: critique and revision by a constitution (Constitutional AI)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from rayrlhf.config.ppo import check_rollout_matches
from rayrlhf.config.resources import ResourcesSection, RoleResources
from rayrlhf.config.schema import ModelSection, RunSection, SourceOptions
from rayrlhf.rollout.config import RolloutSection


@dataclass
class _ReviseSources:
    sft: list[str] = field(default_factory=list)
    """SFT sources whose responses are revised (messages, prompt-completion, prompt-response);
    their other columns (``unsafe``, ...) are carried to the outputs."""
    prompts: list[str] = field(default_factory=list)
    """Instead of ``sft``: prompt sources; the policy samples the response to revise (one per prompt)."""


@dataclass
class ReviseDataSection(SourceOptions, _ReviseSources):
    def validate(self) -> list[str]:
        out = super().validate()
        if bool(self.sft) == bool(self.prompts):
            out.append("sft / prompts: give exactly one: SFT rows whose responses are revised, or prompts "
                       "whose responses the policy samples")
        return out


@dataclass
class ReviseSection:
    template: str = "toyworld_revise"
    """The policy's critique and revision prompts: a YAML file (``rayrlhf.feedback.revise_template``)
    or a bundled template's name."""
    judge_template: str = "toyworld_acceptable"
    """The judge's question about a revision: a kind direct judge template whose choices run
    from unacceptable to acceptable (e.g. ["yes", "no"] to "does it still have undesirable
    qualities?"); P(acceptable) is its expected rating."""
    max_rounds: int = 2
    """Critique-revision rounds per item at most."""
    accept_threshold: float = 0.5
    """A revision whose P(acceptable) is at least this is accepted."""
    tag_field: Optional[str] = "unsafe"
    """A boolean column of the rows; the summary repeats its figures on the rows where it is
    true and false (null: none)."""
    items_per_call: int = 64
    """Items revised together (each round of them is one call to each fleet)."""
    call_timeout_s: float = 600.0
    """A fleet call that takes longer fails with the worker named."""
    max_worker_restarts: int = 3
    """Times a dead worker is replaced before the run gives up."""

    def validate(self) -> list[str]:
        out = [] if self.template else ["template: required: the critique and revision prompts (YAML)"]
        out += [] if self.judge_template else ["judge_template: required: the judge's question (YAML)"]
        if self.max_rounds < 1:
            out.append(f"max_rounds: must be at least 1, got {self.max_rounds}")
        if not 0.0 <= self.accept_threshold <= 1.0:
            out.append(f"accept_threshold: must be in [0, 1], got {self.accept_threshold}")
        if self.items_per_call < 1:
            out.append(f"items_per_call: must be at least 1, got {self.items_per_call}")
        return out


@dataclass
class ReviseConfig:
    """`rayrlhf revise`: the policy (on rollout workers) critiques and revises each response by a
    principle of the constitution; a judge accepts a revision or says why not, for at most
    ``revise.max_rounds`` rounds. Writes rounds.jsonl, revised_sft.jsonl, revised_pairs.jsonl
    and summary.json.

    The judge: without ``judge``, or with ``judge.name_or_path`` equal to the policy's, the policy's own
    fleet judges (one model, as in Constitutional AI's self-critique); otherwise the judge is
    a separate model with its own fleet (``judge_rollout``, ``judge_resources``)."""

    policy: ModelSection = field(default_factory=ModelSection)
    """The model that critiques and revises (and samples responses for ``data.prompts``)."""
    judge: Optional[ModelSection] = None
    """A separate judge model; none (or the policy's own path): the policy judges on its own fleet."""
    data: ReviseDataSection = field(default_factory=ReviseDataSection)
    revise: ReviseSection = field(default_factory=ReviseSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    """The policy's engines: backend, max_model_len, max_new_tokens and sampling (critiques,
    revisions; with the policy as judge, also the judge's reasons)."""
    judge_rollout: RolloutSection = field(default_factory=RolloutSection)
    """A separate judge's engines (max_new_tokens bounds its reasons); unused when the policy judges."""
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    """resources.rollout: the policy's workers."""
    judge_resources: RoleResources = field(default_factory=RoleResources)
    """A separate judge's workers; unused when the policy judges."""
    gold: dict[str, str] = field(default_factory=dict)
    """Gold functions ("module:callable" of prompt text, response text), e.g. safety:
    "rayrlhf.tasks.toyworld:gold_safety": the summary's mean gold of originals and revisions."""
    run: RunSection = field(default_factory=RunSection)

    @property
    def separate_judge(self) -> bool:
        return self.judge is not None and self.judge.name_or_path != self.policy.name_or_path

    @property
    def judge_model(self) -> ModelSection:
        """The judge's model section: the policy's when the policy judges."""
        return self.judge if self.separate_judge else self.policy

    # What the shared actor builder (rayrlhf.driver.roles.Roles) reads of a config.
    @property
    def rewards(self) -> list:
        return []

    def validate(self) -> list[str]:
        out = check_rollout_matches(self.policy, self.rollout, self.resources)
        if not self.policy.name_or_path:
            out.append("policy.name_or_path: required")
        if self.separate_judge:
            out += [f"judge_{m}" for m in check_rollout_matches(
                self.judge, self.judge_rollout, ResourcesSection(rollout=self.judge_resources))]
        return out


@dataclass
class JudgeFleetView:
    """A separate judge's fleet seen as a config ``Roles`` builds (its own rollout workers)."""

    policy: ModelSection
    rollout: RolloutSection
    resources: ResourcesSection
    run: RunSection
    rewards: list = field(default_factory=list)
    gold: dict = field(default_factory=dict)

    @staticmethod
    def of(cfg: ReviseConfig) -> "JudgeFleetView":
        res = ResourcesSection(rollout=cfg.judge_resources, fake_gpus=cfg.resources.fake_gpus)
        return JudgeFleetView(cfg.judge, cfg.judge_rollout, res, cfg.run)
