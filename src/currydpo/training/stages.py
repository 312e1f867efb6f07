"""Where each stage's training items come from: a `StageSource`.

The stage loop asks ``source.stage(k, run)`` for stage ``k`` just before training it, with the
policy as it stands then. `OfflineStages` hands out the plan made before training (the paper's
method: every stage from the same multi-pair data). `online.OnlineStages` builds a stage from
answers sampled from the current policy and judged. The entry point picks the source and passes
it to `loop.train`.
"""

from __future__ import annotations

from typing import Protocol

from ..curriculum.schedules import Stage


class StageSource(Protocol):
    def stage(self, k: int, run, replay: bool = False) -> Stage:
        """Stage ``k`` (0-based) as it will be trained. ``replay``: stage ``k`` finished before a resume;
        rebuild whatever it added to the run from saved files only, so later indices match."""
        ...


class OfflineStages:
    """The offline plan: stage ``k`` is ``run.stages[k]``, planned once from the data (`pipeline.stage_plan`)."""

    def stage(self, k: int, run, replay: bool = False) -> Stage:
        return run.stages[k]
