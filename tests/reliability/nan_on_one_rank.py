"""Launched by test_multiprocess.py under `accelerate launch`: `currydpo train` with the loss
made NaN on process 1 only, at its 2nd micro-batch (a data or numerics fault on one GPU)."""

import math
import os
import sys

from currydpo.cli import main
from currydpo.training.objective import PairObjective

real_loss = PairObjective.loss
calls = {"n": 0}


def nan_on_rank_one(self, x):
    loss, metrics, per_pair = real_loss(self, x)
    calls["n"] += 1
    if os.environ.get("RANK") == "1" and calls["n"] == 2:
        loss = loss * math.nan
    return loss, metrics, per_pair


PairObjective.loss = nan_on_rank_one
sys.exit(main(sys.argv[1:]))
