"""records -> pairs -> difficulty -> stages: the data half of a run, shared by `train`, `pairs` and `demo`."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field

from .config import TrainConfig, resolve
from .curriculum.difficulty import STATIC, measure_from_response_values, measure_static
from .curriculum.schedules import Stage, plan
from .data.loading import load_records
from .data.pairs import Pair, build_pairs
from .data.records import Record, text_of
from .errors import CurryError


@dataclass
class Prepared:
    records: list[Record]
    train_pairs: list[Pair]
    eval_pairs: list[Pair]
    rows_read: int = 0
    bad_rows: dict[str, int] = field(default_factory=dict)


def prepare(cfg: TrainConfig, records: list[Record] | None = None) -> Prepared:
    """Load the data (unless ``records`` is given), hold out eval prompts, build pairs, measure static difficulty."""
    d, c = cfg.data, cfg.curriculum
    rows_read, bad = 0, {}
    if records is None:
        res = load_records(d.path, d.format, split=d.split, subset=d.subset, score=d.score,
                           on_bad_row=d.on_bad_row, limit=d.limit, trust_remote_code=cfg.model.trust_remote_code)
        records, rows_read, bad = res.records, res.rows_read, res.bad_rows
    if not records:
        raise CurryError(f"{d.path or 'data'}: no usable records")
    if d.sample_prompts is not None and d.sample_prompts < len(records):  # a seeded subset, file order kept
        keep = sorted(random.Random(f"sample-prompts-{cfg.run.seed}").sample(range(len(records)), d.sample_prompts))
        records = [records[i] for i in keep]
    held_out = held_out_records(cfg, len(records))
    train = [p for p in build_pairs(records, pair_strategy(cfg), d.min_gap, d.allow_ties, cfg.run.seed)
             if p.record not in held_out]
    evals = [p for p in build_pairs(records, d.strategy, d.min_gap, d.allow_ties, cfg.run.seed)
             if p.record in held_out]
    if not train:
        raise CurryError(f"{d.path or 'data'}: no training pairs (all responses tied, or min_gap {d.min_gap} "
                         f"too large); lower data.min_gap or set data.allow_ties")
    for name in STATIC:
        measure_static(name, train + evals, records)
    if c.difficulty.startswith(("column:", "function:")):
        measure_static(c.difficulty, train + evals, records)
    return Prepared(records, train, evals, rows_read, bad)


def held_out_records(cfg: TrainConfig, n_records: int) -> set[int]:
    """The records held out for evaluation (``data.eval_fraction``, seeded by ``run.seed``): their pairs
    are never trained on. `currydpo pairs` excludes the same ones, so its stages are `train`'s."""
    order = list(range(n_records))
    random.Random(cfg.run.seed).shuffle(order)
    return set(order[: int(round(cfg.data.eval_fraction * n_records))])


def pair_strategy(cfg: TrainConfig) -> str:
    """The training pairs' builder: the single-pair baseline swaps in its own builder; held-out pairs
    always use ``data.strategy``."""
    c = cfg.curriculum
    return c.single_pair_strategy if c.schedule == "single-pair" else cfg.data.strategy


def select_pairs(pairs: list[Pair], select: str, fraction: float) -> list[Pair]:
    """Reference-guided pair selection ("Clear Preferences Leave Traces", 2024): keep the ``fraction`` of
    pairs whose reference log-prob margin log π_ref(y_w) − log π_ref(y_l) is largest, i.e. whose
    preference the reference already sees most clearly (the paper trains on 30–50%). The margin is
    −c, c the ``ref-logratio`` difficulty that `model_difficulty` computed from the reference cache,
    so selection needs no extra forward pass. Kept pairs stay in their order; ties keep the earlier."""
    if select == "none":
        return pairs
    if any("ref-logratio" not in p.difficulty for p in pairs):
        raise CurryError("data.select ref-margin needs the reference log-probs of every pair (model_difficulty)")
    keep = max(1, round(fraction * len(pairs)))
    chosen = set(sorted(range(len(pairs)), key=lambda i: (pairs[i].difficulty["ref-logratio"], i))[:keep])
    return [p for i, p in enumerate(pairs) if i in chosen]


def stage_plan(cfg: TrainConfig, pairs: list[Pair]) -> list[Stage]:
    """The schedule's stages. Self-paced orders its candidates by score-gap until it measures the policy."""
    c = cfg.curriculum
    measure = "score-gap" if c.difficulty == "dynamic" else c.difficulty
    return plan(pairs, c.schedule, measure, stages=c.stages, split_by=c.split_by, strategy=cfg.data.strategy,
                seed=cfg.run.seed, shuffle_within_stage=resolve(cfg).shuffle_within_stage,
                cyclical=(c.cyclical_start, c.cyclical_end, c.cyclical_factor), self_paced_start=c.self_paced_start)


def model_difficulty(pairs: list[Pair], records: list[Record], keys: list[tuple[int, int]],
                     reference_logps: list[float] | None, reward_model: str | None = None,
                     trust_remote_code: bool = False) -> None:
    """The model-based measures: ``ref-logratio`` from per-response reference log-probs
    (aligned with ``keys``), and ``reward-margin`` when a reward model path is given."""
    if reference_logps is not None:  # None: only the reward margin is asked for (no made-up ref-logratio)
        measure_from_response_values("ref-logratio", pairs, dict(zip(keys, reference_logps)), sign=-1.0)
    if reward_model:
        from .curriculum.reward_model import RewardModel

        rm = RewardModel(reward_model, trust_remote_code=trust_remote_code,
                         what=f"curriculum.reward_model {reward_model}")
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
