"""Online Curry-DPO stages: each stage's pairs drawn from the policy as it now is (issue #16).

Curry-DPO's stages are already rounds with a reference swap (Pattnaik et al. 2024,
Sec. 3.3); iterative / self-training DPO (Xu et al. 2023, "Some things are more CRINGE
than others"; Yuan et al. 2024, "Self-Rewarding Language Models") samples fresh answers
from the current policy between rounds and rates them. An online stage joins the two:

1. sample ``online.samples`` answers per training prompt from the current policy and
   score them with ``online.judge`` — the ``collect`` function `OnlineStages` is built with,
   handed in by the entry point (`evaluation.online.collect`; this layer does not import it);
2. ranked `Record`s -> pairs with the configured builder -> difficulty -> the stage
   ordered easy -> hard (or shuffled inside, ``shuffle_within_stage``) by the same
   `curriculum.schedules.plan`; ``online.mix`` adds a fraction of the offline pairs;
3. the new responses extend the `ResponseTable` (each tokenised once) and the
   `RefCache` (reference log-probs from the stage's reference: the previous policy) —
   `add_records`, the one place a run's data grows.

The stage keeps the number of updates the offline plan gave it (one LR schedule over
the run, comparable arms). A resumed run replays the finished online stages from their
files under ``OUTPUT/online/stage-K/``, so records, table rows and pair indices come out
exactly as before the kill.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Callable

from ..curriculum.schedules import Stage, plan
from ..data.pairs import build_pairs
from ..data.records import Record
from ..errors import CurryError
from ..io import write_json
from ..pipeline import measure_ref_logratio, measure_reward_margin, measure_static_all, plan_measure
from .model import load_model
from .references import reference_for, stage_name
from .tokenize import encode_for

ONLINE_DIR = "online"


def stage_dir(output_dir: str, k: int) -> str:
    return os.path.join(output_dir, ONLINE_DIR, stage_name(k))


def is_online(cfg, k: int) -> bool:
    """Stage ``k`` (0-based) is an online stage."""
    return cfg.online.enabled and k + 1 >= cfg.online.from_stage


class OnlineStages:
    """A `stages.StageSource`: offline stages from the plan, online ones built from ``collect``'s ranked records.

    ``collect(run, k, replay) -> (records, info)`` samples answers from the current policy and judges them
    (`evaluation.online.collect`; the entry point hands it in, this layer does not import sampling or judges).
    """

    def __init__(self, collect: Callable):
        self.collect = collect

    def stage(self, k: int, run, replay: bool = False) -> Stage:
        if not is_online(run.cfg, k):
            return run.stages[k]
        records, info = self.collect(run, k, replay)
        new = add_records(run, records)
        if not new:
            raise CurryError(f"online stage {k + 1}: no pairs from {info['online/prompts']} prompts (every prompt's "
                             f"answers tied or fewer than 2 distinct); raise online.samples or online.temperature")
        path = os.path.join(stage_dir(run.cfg.run.output_dir, k), "summary.json")
        if replay:  # already trained: only its data had to come back
            if not os.path.exists(path):
                return run.stages[k]
            with open(path, encoding="utf-8") as f:
                return dataclasses.replace(run.stages[k], info=json.load(f))
        measure_model_difficulty(run, k, new)
        stage = order_stage(run, k, new)
        stage.info = {**info, "online/pairs": len(new), "online/stage_pairs": len(stage.pairs)}
        if run.accelerator.is_main_process:
            write_json(path, stage.info)
        return stage


def add_records(run, records: list[Record]) -> list[int]:
    """Append ``records`` and their pairs to the run's data and response table; returns the new pair indices.
    Each new response is tokenised once; static difficulty is measured as `pipeline.prepare` measures it."""
    cfg, d = run.cfg, run.cfg.data
    first = len(run.data.records)
    run.data.records = run.data.records + records  # a new list: the caller's records stay as given
    pairs = build_pairs(records, d.strategy, d.min_gap, d.allow_ties, cfg.run.seed)
    for p in pairs:
        p.record += first
    measure_static_all(cfg, pairs, run.data.records)
    enc = encode_for(run.tokenizer, records, d, progress=False)
    run.table.extend(pairs, enc, first)
    start = len(run.data.train_pairs)
    run.data.train_pairs.extend(pairs)
    return list(range(start, start + len(pairs)))


def measure_model_difficulty(run, k: int, new: list[int]) -> None:
    """Reference log-probs of the new responses (cached: the loop reuses them) and the model-based measures."""
    cfg, acc = run.cfg, run.accelerator
    # The stage's reference; with a reference-free loss (any mode) the current policy, named for what it is.
    mode = run.resolved.reference
    key = reference_for(mode, k) if mode == "previous-stage" or k == 0 else stage_name(k - 1)
    model = acc.unwrap_model(run.model)
    if k == 0 and cfg.model.ref_model:  # stage 1's reference is the separate reference model
        model = load_model(cfg.model.ref_model, cfg.model, acc.device)
    pairs = [run.data.train_pairs[i] for i in new]
    rows = run.table.rows(pairs)[0]
    values = run.refs.ensure(key, model, run.table, rows, run.scorer)
    measure_ref_logratio(pairs, dict(zip([run.table.keys[r] for r in rows], values[rows].tolist())))
    if cfg.curriculum.difficulty == "reward-margin":
        measure_reward_margin(pairs, run.data.records, cfg.curriculum.reward_model, cfg.model.trust_remote_code)


def order_stage(run, k: int, new: list[int]) -> Stage:
    """The stage: the new pairs plus ``online.mix`` of the offline stage's pairs, easy -> hard."""
    cfg, offline = run.cfg, run.stages[k]
    mixed = []
    if cfg.online.mix > 0:
        rng = random.Random(cfg.run.seed * 1000 + k)
        mixed = sorted(rng.sample(offline.pairs, round(cfg.online.mix * len(offline.pairs))))
    idx = mixed + new
    inner = plan([run.data.train_pairs[i] for i in idx], "single-pass", plan_measure(cfg), seed=cfg.run.seed + k,
                 shuffle_within_stage=run.resolved.shuffle_within_stage)[0]
    label = f"online: {len(new)} pairs" + (f" + {len(mixed)} offline" if mixed else "")
    return Stage(k, [idx[j] for j in inner.pairs], label, admit_fraction=offline.admit_fraction)
