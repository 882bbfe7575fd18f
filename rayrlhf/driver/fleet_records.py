"""What the rollout fleet keeps track of (``rayrlhf.driver.fleet``): each worker and its state,
each job sent and not collected yet, each weight swap queued and not checked yet."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PLACING, STARTING, SERVING, DRAINING = "placing", "starting", "serving", "draining"


@dataclass(eq=False)
class Worker:
    """One rollout actor as the fleet tracks it; a replacement is a new Worker of the same rank."""

    rank: int
    actor: Any = None
    state: str = SERVING  # placing -> starting -> serving -> draining
    started: Any = None  # the ready() call of an actor that is starting

    @property
    def name(self) -> str:
        return f"rollout/{self.rank}"


@dataclass
class GenJob:
    step: int
    prompt_rows: list[int]  # indices into the prompt dataset
    prompt_ids: list[list[int]]
    version: int
    n: int = 1  # samples per prompt
    shards: list[list[int]] = field(default_factory=list)  # positions within prompt_rows
    workers: list[Worker] = field(default_factory=list)  # the worker of each shard
    refs: list = field(default_factory=list)
    submitted: float = 0.0
    result: tuple | None = None  # (samples, metrics) once collected ahead of use (a checkpoint)
    swaps_before: list = field(default_factory=list)  # activations queued on its workers before it


@dataclass
class Activation:
    """A staged version's swap into one worker's engine, queued behind its earlier generate
    calls; its probe is checked once it has run."""

    worker: Worker
    ref: Any
    version: int
    probe: tuple | None  # (probe ids, trainer logprobs, atol)
