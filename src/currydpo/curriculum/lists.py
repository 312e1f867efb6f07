"""Ranked lists for listwise losses, built from a stage's pairs.

A list is one prompt's responses in one stage, best first, each an index into
``records[record].responses`` (so it reuses the response table and the reference cache of
the pairs). Every schedule still plans *pairs*; a stage's lists are then the responses its
pairs touch, grouped by prompt (our rule, so that every schedule applies unchanged):

- ``iterative`` / ``anti``: cumulative — the list of a prompt in stage k holds the responses of
  its pairs in stages 1..k. With best-vs-rest pairs split by rank, iterative lists grow from
  the extremes inward: {R1, R4} → {R1, R3, R4} → {R1..R4}; anti grows outward.
- ``single-pass`` / ``random`` / ``single-pair`` / ``cyclical``: the responses of the stage's
  own pairs (single-pass: each prompt's whole list; single-pair: a list of two, i.e. a pair).
- ``self-paced`` admits single pairs by their loss and is not defined for lists.

A list's difficulty under ``score-gap`` is minus the smallest gap between adjacent scores in
it (the closest call it asks the model to make); under any other measure, the hardest of the
pairs it was built from. Lists are ordered easy → hard inside a stage (hard → easy for anti),
or kept in the stage's pair order when that is shuffled. ``n_pairs`` counts the pairs a list
stands for, so a fair comparison can report pairs-equivalent updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from ..data.pairs import Pair
from ..data.records import Record
from .schedules import Stage


@dataclass
class RankedList:
    """One prompt's responses for a stage, best first; ``ranks`` 1-based, ties sharing a rank."""

    record: int
    responses: list[int]
    ranks: list[int]
    labels: list[float]  # ψ: the score, or (rank-only data) the number of rank groups below
    n_pairs: int
    difficulty: dict[str, float] = field(default_factory=dict)


def make_list(rec_idx: int, rec: Record, pairs: Sequence[Pair], measure: str) -> RankedList:
    """The list of the responses ``pairs`` (all of record ``rec_idx``) touch."""
    members = sorted({i for p in pairs for i in (p.chosen, p.rejected)}, key=lambda i: (-rec.quality(i), i))
    levels = sorted({rec.quality(i) for i in members}, reverse=True)
    ranks = [levels.index(rec.quality(i)) + 1 for i in members]
    labels = [rec.responses[i].score if rec.has_scores else float(len(levels) - k) for i, k in zip(members, ranks)]
    if measure == "score-gap" and rec.has_scores and len(levels) > 1:
        hardness = -min(a - b for a, b in zip(levels, levels[1:]))
    else:
        hardness = max((p.difficulty.get(measure, math.nan) for p in pairs), default=math.nan)
    return RankedList(rec_idx, members, ranks, labels, len(pairs), {measure: hardness})


def stage_lists(records: Sequence[Record], pairs: Sequence[Pair], stages: Sequence[Stage], schedule: str,
                measure: str, shuffled: bool) -> tuple[list[RankedList], list[Stage]]:
    """All lists, and the stages re-expressed over list indices (``Stage.pairs`` then holds list indices)."""
    if not isinstance(shuffled, bool):  # a config string ("false" is truthy) must be resolved first
        raise TypeError(f"shuffled must be a bool (config.shuffle_within_stage), got {shuffled!r}")
    lists: list[RankedList] = []
    out: list[Stage] = []
    earlier: dict[int, list[Pair]] = {}
    cumulative = schedule in ("iterative", "anti")
    for stage in stages:
        by_record: dict[int, list[Pair]] = {}
        for i in stage.pairs:  # first occurrence keeps the stage's (possibly shuffled) order
            by_record.setdefault(pairs[i].record, []).append(pairs[i])
        made = []
        for r, own in by_record.items():
            members = earlier.get(r, []) + own if cumulative else own
            made.append(make_list(r, records[r], members, measure))
        if cumulative:
            for r, own in by_record.items():
                earlier[r] = earlier.get(r, []) + own
        if not shuffled and schedule not in ("random", "single-pair"):
            made.sort(key=lambda x: x.difficulty[measure], reverse=schedule == "anti")  # stable: ties keep order
        out.append(Stage(stage.index, list(range(len(lists), len(lists) + len(made))), stage.label))
        lists.extend(made)
    return lists, out
