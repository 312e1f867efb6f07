"""records -> pairs -> difficulty -> stages: the data half of a run, the one place it is built.

`prepare` reads the records, holds out the eval prompts, builds the pairs and measures the static
difficulties; `plan` adds the model-based measures (from the reference log-probs the caller
computed), applies reference-guided selection and plans the stages. `train` (via
`training.setup.setup`), `currydpo pairs` and `currydpo.plan_stages` all call these two, so their
pairs and stages are the same for one config. A measure is written on a pair only when it was
measured: no placeholder values.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from dataclasses import dataclass, field

from .config import TrainConfig, resolve
from .curriculum.difficulty import STATIC, measure_from_response_values, measure_static
from .curriculum.schedules import Stage, auto_split
from .curriculum.schedules import plan as schedule
from .data.loading import load_mixture, load_records
from .data.pairs import Pair, build_pairs, response_keys
from .data.records import Record, text_of
from .errors import CurryError


@dataclass
class Prepared:
    records: list[Record]
    train_pairs: list[Pair]
    eval_pairs: list[Pair]
    rows_read: int = 0
    bad_rows: dict[str, int] = field(default_factory=dict)
    format: str = ""  # the data format read (auto: as detected)
    stages: list[Stage] = field(default_factory=list)  # filled by `plan`
    split_by: str | None = None  # curriculum.split_by as `plan` resolved it (None: the schedule does not split)


def prepare(cfg: TrainConfig, records: list[Record] | None = None, require_pairs: bool = True) -> Prepared:
    """Load the data (unless ``records`` is given), hold out eval prompts, build pairs, measure static difficulty.
    ``require_pairs``: no training pair is an error (training); `currydpo pairs` reports it instead."""
    d = cfg.data
    rows_read, bad, fmt = 0, {}, "records"
    reading = dict(score=d.score, on_bad_row=d.on_bad_row, limit=d.limit, trust_remote_code=cfg.model.trust_remote_code,
                   progress=cfg.run.progress)
    if records is None and d.mixture is not None:  # the handbook's dataset_mixture, TRL's datasets list
        res = load_mixture(d.mixture, d.format, seed=cfg.run.seed, **reading)
        records, rows_read, bad, fmt = res.records, res.rows_read, res.bad_rows, res.format
    elif records is None:
        res = load_records(d.path, d.format, split=d.split, subset=d.subset, **reading)
        records, rows_read, bad, fmt = res.records, res.rows_read, res.bad_rows, res.format
    if not records:
        raise CurryError(f"{d.path or 'data'}: no usable records")
    if d.sample_prompts is not None and d.sample_prompts < len(records):  # a seeded subset, file order kept
        keep = sorted(random.Random(f"sample-prompts-{cfg.run.seed}").sample(range(len(records)), d.sample_prompts))
        records = [records[i] for i in keep]
    held_out = held_out_records(cfg, len(records))
    if d.eval_path:  # held-out data of its own: every one of its records is held out
        extra = load_records(d.eval_path, d.format, split=d.eval_split, subset=d.subset, **reading).records
        held_out |= set(range(len(records), len(records) + len(extra)))
        records = records + extra
    train = [p for p in build_pairs(records, pair_strategy(cfg), d.min_gap, d.allow_ties, cfg.run.seed)
             if p.record not in held_out]
    evals = [p for p in build_pairs(records, d.strategy, d.min_gap, d.allow_ties, cfg.run.seed)
             if p.record in held_out]
    if not train and require_pairs:
        raise CurryError(f"{d.path or 'data'}: no training pairs (all responses tied, or min_gap {d.min_gap} "
                         f"too large); lower data.min_gap or set data.allow_ties")
    measure_static_all(cfg, train + evals, records)
    return Prepared(records, train, evals, rows_read, bad, fmt)


def measure_static_all(cfg: TrainConfig, pairs: list[Pair], records: list[Record]) -> None:
    """The measures that need no model: every built-in static one, and a user column or function when asked for."""
    for name in STATIC:
        measure_static(name, pairs, records)
    if cfg.curriculum.difficulty.startswith(("column:", "function:")):
        measure_static(cfg.curriculum.difficulty, pairs, records)


def plan(cfg: TrainConfig, data: Prepared, reference_logps: dict[tuple[int, int], float] | None = None) -> None:
    """The model-based measures, selection and the stage plan, into ``data`` (``train_pairs`` narrowed by
    ``data.select``, ``stages``). ``reference_logps``: the initial reference's summed log-prob of each
    (record, response) of the pairs, for ``ref-logratio`` and ``data.select``; None when no reference
    was run (then neither may be asked for)."""
    c, pairs = cfg.curriculum, data.train_pairs + data.eval_pairs
    if reference_logps is not None:
        measure_ref_logratio(pairs, reference_logps)
    elif c.difficulty == "ref-logratio" or cfg.data.select != "none":
        what = "difficulty ref-logratio" if c.difficulty == "ref-logratio" else "data.select ref-margin"
        raise CurryError(f"{what} needs the reference model's log-probs of every response: give a model")
    if c.difficulty == "reward-margin":
        measure_reward_margin(pairs, data.records, c.reward_model, cfg.model.trust_remote_code)
    data.train_pairs = select_pairs(data.train_pairs, cfg.data.select, cfg.data.select_fraction)
    data.split_by = split_rule(cfg, data.train_pairs)
    data.stages = stage_plan(cfg, data.train_pairs, data.split_by)
    warning = no_ordering_signal(cfg, data.train_pairs, len(data.stages))
    if warning:
        print(f"currydpo: WARNING: {warning}", file=sys.stderr, flush=True)


# Schedules that order or split pairs by their difficulty (random and single-pair do not; self-paced measures later).
ORDERED = ("iterative", "single-pass", "anti", "cyclical")


def no_ordering_signal(cfg: TrainConfig, pairs: list[Pair], n_stages: int) -> str | None:
    """Why the curriculum asked for cannot exist on these pairs, or None: every pair has the same difficulty
    (pairwise rows without scores, one pair per prompt), so there is no easy-to-hard order, and an iterative
    schedule gets fewer stages than curriculum.stages. Never silent: `plan` prints it."""
    c, measure = cfg.curriculum, plan_measure(cfg)
    if c.schedule not in ORDERED or len(pairs) < 2:
        return None
    values = {p.difficulty.get(measure) for p in pairs}
    if len(values) > 1:
        return None
    stages = f"; {n_stages} stage(s) instead of curriculum.stages {c.stages}" if n_stages < c.stages else ""
    return (f"curriculum {c.schedule} by {measure}: all {len(pairs)} training pairs have the same difficulty, so the "
            f"data gives no easy-to-hard order (pairwise rows without scores, one pair per prompt?){stages}. This "
            f"trains plain DPO. Give scores (score_chosen/score_rejected columns) or several ranked responses per "
            f"prompt, choose another curriculum.difficulty, or set curriculum.schedule random to say so")


def held_out_records(cfg: TrainConfig, n_records: int) -> set[int]:
    """The records held out for evaluation (``data.eval_fraction``, seeded by ``run.seed``): their pairs
    are never trained on. `currydpo pairs` excludes the same ones, so its stages are `train`'s."""
    order = list(range(n_records))
    random.Random(cfg.run.seed).shuffle(order)
    count = cfg.data.eval_prompts
    n = count if count is not None else int(round(cfg.data.eval_fraction * n_records))
    if count is not None and n >= n_records:
        raise CurryError(f"data.eval_prompts {n} holds out all {n_records} prompts, leaving none to train on; hold out "
                         f"fewer (the handbook's test_split_size is a count of examples)")
    return set(order[:n])


def pair_strategy(cfg: TrainConfig) -> str:
    """The training pairs' builder: the single-pair baseline swaps in its own builder; held-out pairs
    always use ``data.strategy``."""
    c = cfg.curriculum
    return c.single_pair_strategy if c.schedule == "single-pair" else cfg.data.strategy


def select_pairs(pairs: list[Pair], select: str, fraction: float) -> list[Pair]:
    """Reference-guided pair selection ("Clear Preferences Leave Traces", 2024): keep the ``fraction`` of
    pairs whose reference log-prob margin log π_ref(y_w) − log π_ref(y_l) is largest, i.e. whose
    preference the reference already sees most clearly (the paper trains on 30–50%). The margin is
    −c, c the ``ref-logratio`` difficulty that `plan` measured from the reference log-probs,
    so selection needs no extra forward pass. Kept pairs stay in their order; ties keep the earlier."""
    if select == "none":
        return pairs
    if any("ref-logratio" not in p.difficulty for p in pairs):
        raise CurryError("data.select ref-margin needs the reference log-probs of every pair (see `plan`)")
    keep = max(1, round(fraction * len(pairs)))
    chosen = set(sorted(range(len(pairs)), key=lambda i: (pairs[i].difficulty["ref-logratio"], i))[:keep])
    return [p for i, p in enumerate(pairs) if i in chosen]


def stage_plan(cfg: TrainConfig, pairs: list[Pair], split_by: str | None = None) -> list[Stage]:
    """The schedule's stages. Self-paced orders its candidates by score-gap until it measures the policy.
    ``split_by``: the resolved split (`split_rule`), when the caller has it already."""
    c = cfg.curriculum
    split_by = split_by or split_rule(cfg, pairs)
    return schedule(pairs, c.schedule, plan_measure(cfg), stages=c.stages, split_by=split_by or "auto",
                    strategy=cfg.data.strategy, seed=cfg.run.seed,
                    shuffle_within_stage=resolve(cfg).shuffle_within_stage,
                    cyclical=(c.cyclical_start, c.cyclical_end, c.cyclical_factor), self_paced_start=c.self_paced_start)


def plan_measure(cfg: TrainConfig) -> str:
    """The measure the plan orders by: ``curriculum.difficulty``, score-gap for dynamic (until it is measured)."""
    return "score-gap" if cfg.curriculum.difficulty == "dynamic" else cfg.curriculum.difficulty


def split_rule(cfg: TrainConfig, pairs: list[Pair]) -> str | None:
    """``curriculum.split_by`` resolved on these pairs (`schedules.auto_split` for auto); None for schedules that
    do not split (only iterative and anti do)."""
    c = cfg.curriculum
    if c.schedule not in ("iterative", "anti"):
        return None
    return c.split_by if c.split_by != "auto" else auto_split(pairs, plan_measure(cfg), c.stages, cfg.data.strategy)


def measure_ref_logratio(pairs: list[Pair], reference_logps: dict[tuple[int, int], float]) -> None:
    """``ref-logratio``: minus the reference's log-prob margin of each pair (a clear preference is easy)."""
    measure_from_response_values("ref-logratio", pairs, reference_logps, sign=-1.0)


def measure_reward_margin(pairs: list[Pair], records: list[Record], reward_model: str,
                          trust_remote_code: bool = False) -> None:
    """``reward-margin``: minus a reward model's margin of each pair, each response scored once."""
    from .curriculum.reward_model import RewardModel

    keys = response_keys(pairs)
    rm = RewardModel(reward_model, trust_remote_code=trust_remote_code, what=f"curriculum.reward_model {reward_model}")
    rewards = rm.score([text_of(records[r].prompt) for r, _ in keys],
                       [text_of(records[r].responses[i].text) for r, i in keys])
    measure_from_response_values("reward-margin", pairs, dict(zip(keys, rewards)), sign=-1.0)


def data_fingerprint(records: list[Record]) -> str:
    """A content hash of the records (prompts, response texts, scores, ranks), so `--resume` can tell
    that the data file was edited between the kill and the resume."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.prompt, [[x.text, x.score, x.rank] for x in r.responses]]).encode())
    return h.hexdigest()
