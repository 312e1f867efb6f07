"""What a run is and what it has done: the frozen `Run` (built once by `setup.setup`, never edited) and the
`Progress` the stage loop owns (position, log, counters, the stages as trained); the `Hooks` that watch it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from accelerate import Accelerator

from ..config import Resolved, TrainConfig
from ..curriculum.schedules import Stage
from ..pipeline import Prepared
from .objective import ListObjective, PairObjective
from .position import Position
from .responses import RefCache, ResponseTable, Scorer
from .stages import OfflineStages, StageSource


@dataclass
class Update:
    """What an ``on_batch`` hook sees after each optimiser update (already logged, not yet checkpointed)."""

    stage: int  # 0-based
    update: int  # 0-based, within the stage
    step: int  # global, 1-based: the ``step`` of its metrics.jsonl line
    micro: list[list[int]]  # this process's micro-batches: item indices (`Objective.items`)
    metrics: dict
    seconds: float  # wall time of the update itself (forwards, backwards, optimiser step)


@dataclass
class Hooks:
    """Callbacks for code that watches a run (benchmarks, tests, loggers) instead of patching the loop.
    ``on_batch(run, Update)`` after every update; ``on_stage_end(run, k, info)`` once ``stage-K/`` is saved.
    A hook that raises stops the run there, as a crash would (``state/`` holds the last checkpoint)."""

    on_batch: list[Callable] = field(default_factory=list)
    on_stage_end: list[Callable] = field(default_factory=list)


@dataclass(frozen=True)
class Run:
    """What the run is: built once by `setup.setup`, then read, never reassigned. The model's weights train
    in place; an online stage grows ``data``, ``table`` and ``refs`` through `online.add_records`."""

    cfg: TrainConfig
    resolved: Resolved  # every auto of cfg, resolved once (logged in summary.json)
    accelerator: Accelerator
    model: torch.nn.Module  # prepared by the accelerator
    tokenizer: object
    data: Prepared  # records, pairs and the stage plan (``data.stages``)
    table: ResponseTable
    refs: RefCache
    scorer: Scorer  # the one log-prob function: policy, references, held-out metrics, dynamic difficulty
    objective: PairObjective | ListObjective
    stage_updates: list[int]
    memory: dict = field(default_factory=dict)  # what memory_policy chose (in summary.json)
    source: StageSource = field(default_factory=OfflineStages)
    hooks: Hooks = field(default_factory=Hooks)

    @property
    def stages(self) -> list[Stage]:
        """The offline plan, indexing the objective's items (an online source builds its stages as they come)."""
        return self.data.stages

    @property
    def pairs_per_update(self) -> int:
        optim = self.cfg.optim
        return optim.batch_size * optim.grad_accum * self.accelerator.num_processes

    @property
    def save_dtype(self) -> torch.dtype | None:
        """``run.save_dtype`` as resolved: ``stage-K/`` and ``final/`` are written in it."""
        return getattr(torch, self.resolved.save_dtype or "", None)


@dataclass
class Progress:
    """What the run has done, owned by the stage loop: where it stands (saved in ``state/``), the metric lines
    logged, the updates run by this launch and each stage as its source gave it."""

    position: Position
    stages: list[Stage]
    log: list[dict] = field(default_factory=list)
    updates_run: int = 0  # by this launch (fewer than the total after a resume)
    resumed_from: dict | None = None  # where --resume picked the run up
