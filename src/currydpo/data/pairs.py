"""Pair builders: turn a record's ranked responses into (chosen, rejected) index pairs.

Curry-DPO (Pattnaik et al. 2024, arXiv 2403.07230, Sec. 3) keeps the best response as
chosen and pairs it with every other one (`best-vs-rest`, N-1 pairs). The rest are
the usual alternatives and the single-pair baselines (`best-vs-random` is the
UltraFeedback-binarized / Zephyr recipe).

A tie (equal quality) never makes a pair unless `allow_ties=True`; `min_gap` drops
pairs whose score gap is smaller.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from ..errors import CurryError, check_positive
from .records import Record


@dataclass
class Pair:
    """Indices into ``records[record].responses`` plus what the curriculum needs to know.

    ``rejected_position`` is the 1-based rank of the rejected response (N for the
    worst of N): best-vs-rest stages are split on it. ``difficulty`` holds every
    measure computed so far (higher = harder).
    """

    record: int
    chosen: int
    rejected: int
    chosen_score: float | None
    rejected_score: float | None
    score_gap: float | None
    rank_gap: int
    rejected_position: int
    difficulty: dict[str, float] = field(default_factory=dict)


def _make(rec_idx: int, rec: Record, w: int, l: int, pos: list[int]) -> Pair:
    cs, rs = rec.responses[w].score, rec.responses[l].score
    gap = (cs - rs) if (cs is not None and rs is not None) else None
    return Pair(rec_idx, w, l, cs, rs, gap, pos[l] - pos[w], pos[l])


def _keep(rec: Record, w: int, l: int, min_gap: float, allow_ties: bool) -> bool:
    gap = rec.quality(w) - rec.quality(l)
    if gap < 0:
        return False
    if gap == 0 and not allow_ties:
        return False
    if min_gap > 0 and rec.has_scores and gap < min_gap:
        return False
    return True


def best_vs_rest(rec: Record, rng: random.Random) -> list[tuple[int, int]]:
    order = rec.order()
    return [(order[0], i) for i in reversed(order[1:])]  # (R1,RN) ... (R1,R2)


def all_pairs(rec: Record, rng: random.Random) -> list[tuple[int, int]]:
    order = rec.order()
    return [(order[a], order[b]) for a in range(len(order)) for b in range(a + 1, len(order))]


def adjacent(rec: Record, rng: random.Random) -> list[tuple[int, int]]:
    order = rec.order()
    return [(order[k], order[k + 1]) for k in range(len(order) - 1)]


def best_vs_worst(rec: Record, rng: random.Random) -> list[tuple[int, int]]:
    order = rec.order()
    return [(order[0], order[-1])]


def best_vs_random(rec: Record, rng: random.Random) -> list[tuple[int, int]]:
    order = rec.order()
    strictly_worse = [i for i in order[1:] if rec.quality(i) < rec.quality(order[0])]
    return [(order[0], rng.choice(strictly_worse))] if strictly_worse else []


BUILDERS: dict[str, Callable[[Record, random.Random], list[tuple[int, int]]]] = {
    "best-vs-rest": best_vs_rest,
    "all-pairs": all_pairs,
    "adjacent": adjacent,
    "best-vs-worst": best_vs_worst,
    "best-vs-random": best_vs_random,
}


def check_strategy(name: str) -> str:
    if name not in BUILDERS:
        raise CurryError(f"unknown pair strategy {name!r}; choose one of: {', '.join(BUILDERS)}")
    return name


def check_section(data) -> None:
    """The ``data:`` keys of the pair builders (``config.DataConfig``, or any object with these fields)."""
    try:
        check_strategy(data.strategy)
    except CurryError as e:
        raise CurryError(f"config: {e}") from None
    check_positive("data.min_gap", data.min_gap, allow_zero=True)


def build_pairs(records: list[Record], strategy: str = "best-vs-rest", min_gap: float = 0.0,
                allow_ties: bool = False, seed: int = 0) -> list[Pair]:
    """All pairs of all records, record by record, in the builder's order."""
    builder = BUILDERS[check_strategy(strategy)]
    if min_gap < 0:
        raise CurryError(f"min_gap must be >= 0, got {min_gap}")
    rng = random.Random(seed)
    pairs: list[Pair] = []
    for k, rec in enumerate(records):
        pos = rec.positions()
        for w, l in builder(rec, rng):
            if _keep(rec, w, l, min_gap, allow_ties):
                pairs.append(_make(k, rec, w, l, pos))
    return pairs


def response_keys(pairs) -> list[tuple[int, int]]:
    """Every (record, response) the pairs use, each once, sorted: the rows of a response table."""
    return sorted({(p.record, p.chosen) for p in pairs} | {(p.record, p.rejected) for p in pairs})
