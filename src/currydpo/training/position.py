"""Where a run stands, and the machinery that saves it and picks it up again: the `Position` in
``state/position.json``, the ``state/`` checkpoint (`save_position`), ``--resume`` (`check_same_run`,
`check_same_data`, `restore_mid_stage`) and a stop on SIGTERM/SIGINT at an update boundary
(`stop_if_signalled`). Non-finite weights are never saved (`ensure_finite`)."""

from __future__ import annotations

import dataclasses
import os
import signal
from dataclasses import dataclass, field

import torch
import yaml

from .. import lifetime
from ..config import TrainConfig, changed_keys, from_dict
from ..errors import CurryError
from . import checkpoint as ckpt
from . import sharding
from .sharding import is_sharded

# Keys that may change between a kill and --resume: they do not change what is trained.
RESUME_HARMLESS = ("run.progress", "run.report_to", "run.output_dir", "run.cache_dir", "run.logging_steps",
                   "run.eval_steps", "run.push_to_hub", "run.hub_model_id", "run.hub_private_repo", "run.hub_revision")


@dataclass
class Position:
    """Where a run stands; saved in ``state/position.json`` and loaded once by ``--resume``.

    ``stage``/``update``: the next update to run (0-based). ``order``: the stage's pair order,
    fixed when the stage starts (self-paced admits pairs then), None before. ``log_lines``:
    metric lines logged up to here. ``stages_done``: the summaries (held-out metrics included)
    of the completed stages, so a resumed run reports them as an uninterrupted one does.
    ``fingerprint``: the data's content hash, so a resume cannot continue on other data.
    """

    stage: int = 0
    update: int = 0
    global_step: int = 0
    order: list[int] | None = None
    log_lines: int = 0
    stages_done: list[dict] = field(default_factory=list)
    fingerprint: str = ""
    tokens: int = 0  # tokens trained so far (TRL's num_tokens)

    @classmethod
    def load(cls, output_dir: str) -> "Position | None":
        saved = ckpt.read_position(output_dir)
        return None if saved is None else cls(**saved)


def check_same_run(output_dir: str, cfg: TrainConfig) -> None:
    """--resume continues the run in ``output_dir`` only with the config it was started with."""
    with open(os.path.join(output_dir, ckpt.STATE_DIR, "config.yaml")) as f:
        saved = from_dict(yaml.safe_load(f) or {})
    changed = [k for k in changed_keys(saved, cfg) if k not in RESUME_HARMLESS]
    if changed:
        raise CurryError(f"--resume: {output_dir} was trained with a different config ({', '.join(changed)} "
                         f"changed); resume with the same config, or start a new run.output_dir")


def check_same_data(position: Position, fingerprint: str, output_dir: str) -> None:
    """--resume continues only on the data it was checkpointed with; a fresh position takes ``fingerprint``."""
    if position.fingerprint not in ("", fingerprint):
        raise CurryError(f"--resume: the data changed since {output_dir} was checkpointed (content hash "
                         f"{fingerprint[:12]}, was {position.fingerprint[:12]}); resume with the same data, or "
                         f"start a new run.output_dir")
    position.fingerprint = fingerprint


def restore_mid_stage(run, progress, k: int, optimizer, scheduler) -> None:
    """--resume inside stage ``k``: its optimiser, scheduler and RNG as checkpointed (a restarted stage's
    optimiser starts fresh when the kill came before its first update)."""
    if progress.resumed_from is None or k + 1 != progress.resumed_from["stage"]:
        return
    if run.resolved.across_stages == "continue" or progress.position.update > 0:
        ckpt.load_optim(run.cfg.run.output_dir, optimizer, scheduler, run.model)
    ckpt.load_rng(run.cfg.run.output_dir)


def save_position(run, progress, optimizer, scheduler) -> None:
    """Checkpoint ``state/``: weights, optimiser and scheduler (None: not saved), RNG, the position."""
    pos = progress.position
    ensure_finite(run, f"stage {pos.stage + 1}, update {pos.update}" if pos.update else f"the end of stage {pos.stage}")
    pos.log_lines = len(progress.log)
    run.accelerator.wait_for_everyone()
    model = run.accelerator.unwrap_model(run.model)
    if run.accelerator.is_main_process or is_sharded(model):  # sharded: every process writes its shards
        ckpt.save_state(run.cfg.run.output_dir, model, optimizer, scheduler, dataclasses.asdict(pos), run.cfg)
    run.accelerator.wait_for_everyone()


def weights_finite(run) -> bool:
    """Whether every weight is finite; with FSDP2 each process checks its shards and the verdict is all-reduced."""
    bad = sum(int(not torch.isfinite(sharding.local(p)).all()) for p in run.model.parameters())
    if is_sharded(run.model):
        bad = run.accelerator.reduce(torch.tensor([bad], device=run.accelerator.device), "sum").item()
    return bad == 0


def ensure_finite(run, at: str) -> None:
    """Before a save: non-finite weights are never written (they would pass for a trained model)."""
    if not weights_finite(run):
        raise CurryError(f"non-finite values: the weights are non-finite at {at}; nothing was saved, the last "
                         f"checkpoint is in {run.cfg.run.output_dir}/state (lower optim.lr or loss.beta, or check the "
                         f"data)")


def stop_if_signalled(run, progress, optimizer, scheduler, saved: bool) -> None:
    """After an update: on SIGTERM/SIGINT (on any process) write ``state/`` and stop with one line saying how to
    resume. The verdict is all-reduced, so every process stops at the same update."""
    signum = lifetime.stop_requested() or 0
    if run.accelerator.num_processes > 1:
        signum = int(run.accelerator.gather(torch.tensor([signum], device=run.accelerator.device)).max())
    if not signum:
        return
    if not saved:
        save_position(run, progress, optimizer, scheduler)
    pos, name = progress.position, signal.Signals(signum).name
    raise lifetime.Stopped(f"stopped by {name} after stage {pos.stage + 1}, update {pos.update} (step "
                           f"{pos.global_step}); {run.cfg.run.output_dir}/state is saved: run the same command with "
                           f"--resume to continue", signum)
