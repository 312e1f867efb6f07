"""Evaluation along a run: the reward–KL curve one training run traces (compare's ``eval: {points: K}``).

KL to the initial model grows as a run trains, so one run gives a whole curve of (KL, reward) points,
as Gao et al. 2022 (arXiv 2210.10760) and Rafailov et al. 2024 (arXiv 2406.02900) draw over-optimisation.
A frontier built from these measured points needs no straight lines across wide KL gaps.

`TrajectoryHook` is an ``on_batch`` hook: at K evenly spaced global updates (the last included) it evaluates
the policy in memory, exactly as every checkpoint is evaluated (the same prompts, sampling seed, judge, SFT
answers and initial model for KL), with no extra training and no save/reload. Sampling runs inside its own
forked RNG, so the run trains the same weights with or without the hook (tested). Each point is written
atomically to ``trajectory/update-U.json`` beside the run, so a resumed run keeps the points it measured.
The last point is the run's final evaluation when ``final/`` is the last update's model; with
``run.final_model: best`` the hook measures the last update itself.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..io import write_json

TRAJECTORY_DIR = "trajectory"
POINT_KEYS = ("kl", "judge_score", "win_rate", "answer_chars")  # what a point keeps of an evaluation's metrics


def point_updates(total: int, points: int) -> list[int]:
    """``points`` evenly spaced global updates in 1..``total``, the last one included (fewer if total is small)."""
    return sorted({max(1, round(total * i / points)) for i in range(1, points + 1)})


def trajectory_point(update: int, metrics: dict) -> dict:
    """One point: the update it was measured after and the evaluation's generation metrics (win rate: its value)."""
    point = {"update": update}
    for key in POINT_KEYS:
        value = metrics.get(key)
        if isinstance(value, dict):  # win_rate: the report (value, CI, counts); the curve needs the value
            value = value.get("win_rate")
        if value is not None:
            point[key] = value
    return point


@dataclass
class TrajectoryHook:
    """Evaluate the in-memory policy at `point_updates` (see the module docstring).

    ``evaluate(policy) -> metrics`` is the caller's evaluation (compare's, shared with its checkpoints);
    ``skip_last``: the final evaluation supplies the last point (``final/`` is the last update's model)."""

    directory: str  # ARM/seed-S/trajectory
    points: int
    evaluate: Callable[[torch.nn.Module], dict]
    skip_last: bool = True
    measured: list[int] = field(default_factory=list)  # updates this hook evaluated (tests count them)

    def __call__(self, run, update) -> None:
        total = sum(run.stage_updates)
        step = update.step
        if step not in point_updates(total, self.points) or (self.skip_last and step == total):
            return
        path = os.path.join(self.directory, f"update-{step}.json")
        if os.path.exists(path):  # measured before a resume
            return
        model = run.accelerator.unwrap_model(run.model)
        model.eval()
        state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
                with torch.no_grad():
                    metrics = self.evaluate(model)
        finally:
            random.setstate(state)
            model.train()
        self.measured.append(step)
        if run.accelerator.is_main_process:
            write_json(path, trajectory_point(step, metrics))


def read_trajectory(directory: str) -> list[dict]:
    """The points a run's hook wrote, in update order."""
    if not os.path.isdir(directory):
        return []
    points = []
    for name in os.listdir(directory):
        if name.startswith("update-") and name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
                points.append(json.load(f))
    return sorted(points, key=lambda p: p["update"])
