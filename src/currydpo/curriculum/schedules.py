"""Schedules: turn pairs (with a difficulty each) into an ordered list of training stages.

- ``iterative`` (Curry-DPO, Pattnaik et al. 2024, Sec. 3.3): K stages, easy to hard.
  For best-vs-rest pairs the split is by the rejected response's rank — stage 1 all
  (R1, RN), ..., last stage all (R1, R2) — otherwise K difficulty quantiles; when the
  difficulty takes at most K values (labelled levels, as in the authors' released
  easy/medium/hard pairs) one stage per value. Each
  next stage starts from the previous policy and uses it as the reference (trainer).
- ``single-pass``: one stage, all pairs ordered easy -> hard (ties broken by seed).
- ``random``: one stage, all pairs shuffled (the usual multi-pair DPO baseline).
- ``anti``: the iterative stages in reverse, hard -> easy (anti-curriculum).
- ``single-pair``: one pair per prompt (built by the single-pair builder), shuffled.
- ``cyclical`` (Kesgin & Amasyali 2023, "Cyclical Curriculum Learning"): stage k uses
  a data fraction that grows by a factor per stage from start to end and shrinks back,
  cyclically; pairs are sampled without replacement in proportion to easiness.
- ``self-paced`` (Kumar et al. 2010): stage k admits the easiest fraction of pairs by
  the *current* policy's loss; the fraction grows linearly to 1. The trainer measures
  and filters at the start of the stage (``Stage.admit_fraction``).

Order inside a stage is explicit: easy -> hard unless ``shuffle_within_stage``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Sequence

from ..data.pairs import Pair
from ..errors import CurryError, check_choice, check_positive


@dataclass
class Stage:
    """Pair indices in training order, and what the trainer must do with them."""

    index: int
    pairs: list[int]
    label: str
    admit_fraction: float | None = None  # self-paced: keep this easiest fraction, measured at stage start
    info: dict = field(default_factory=dict)  # what its source reports in the stage summary (online: ``online/*``)

    def difficulty_range(self, pairs: Sequence[Pair], measure: str) -> tuple[float, float]:
        vals = [pairs[i].difficulty[measure] for i in self.pairs if measure in pairs[i].difficulty]
        return (min(vals), max(vals)) if vals else (math.nan, math.nan)


def _easy_to_hard(idx: Sequence[int], pairs: Sequence[Pair], measure: str, rng: random.Random) -> list[int]:
    tiebreak = {i: rng.random() for i in idx}
    return sorted(idx, key=lambda i: (pairs[i].difficulty[measure], tiebreak[i]))


def _split(pairs: Sequence[Pair], measure: str, k: int, by: str, rng: random.Random) -> list[tuple[list[int], str]]:
    """K groups easy -> hard, each ordered easy -> hard."""
    ordered = _easy_to_hard(range(len(pairs)), pairs, measure, rng)
    if by == "value":  # one stage per distinct difficulty value (labelled levels), easiest first
        values = sorted({pairs[i].difficulty[measure] for i in ordered})
        return [([i for i in ordered if pairs[i].difficulty[measure] == v], f"difficulty {v:g}") for v in values]
    if by == "rank":
        # Rejected rank N (worst) is easiest; rank 2 (runner-up) is hardest and comes last.
        # Ranks beyond K+1 share the first stage.
        groups: list[list[int]] = [[] for _ in range(k)]
        for i in ordered:
            groups[k - 1 - min(pairs[i].rejected_position - 2, k - 1)].append(i)
        return [(g, f"rejected rank {'>=' if j == 0 and k > 1 else ''}{k + 1 - j}") for j, g in enumerate(groups)
                if g]
    # Quantiles of difficulty; equal values never straddle a boundary.
    out, start = [], 0
    for j in range(k):
        end = round(len(ordered) * (j + 1) / k)
        while 0 < end < len(ordered) and pairs[ordered[end]].difficulty[measure] == \
                pairs[ordered[end - 1]].difficulty[measure]:
            end += 1
        if end > start:
            out.append((ordered[start:end], f"difficulty quantile {j + 1}/{k}"))
        start = max(start, end)
    return out


def auto_split(pairs: Sequence[Pair], measure: str, k: int, strategy: str) -> str:
    """``split_by: auto``: rank for best-vs-rest, quantiles otherwise — but one stage per value when the
    difficulty takes at most K values (labelled levels) and ranks would group the pairs otherwise
    (the curri-dpo format, where merged 4-response entries and lone level pairs mix)."""
    values = {p.difficulty[measure] for p in pairs}
    levels = len(values) <= k
    if strategy != "best-vs-rest":
        return "value" if levels else "quantile"
    if levels:
        by_rank: dict[int, set[int]] = {}
        by_value: dict[float, set[int]] = {}
        for i, p in enumerate(pairs):
            by_rank.setdefault(min(p.rejected_position - 2, k - 1), set()).add(i)
            by_value.setdefault(p.difficulty[measure], set()).add(i)
        if {frozenset(g) for g in by_rank.values()} != {frozenset(g) for g in by_value.values()}:
            return "value"
    if len({min(p.rejected_position - 2, k - 1) for p in pairs}) == 1 and len(values) > 1:
        return "value" if levels else "quantile"  # one pair per prompt: ranks cannot split, the measure can
    return "rank"


def _cyclical_fractions(k: int, start: float, end: float, factor: float) -> list[float]:
    fracs, f, growing = [], start, end >= start
    for _ in range(k):
        fracs.append(min(max(f, min(start, end)), max(start, end)))
        nxt = f * factor if growing else f / factor
        if (growing and nxt > max(start, end)) or (not growing and nxt < min(start, end)):
            growing = not growing
            nxt = f / factor if not growing else f * factor
        f = nxt
    return fracs


def _weighted_sample(idx: list[int], weights: list[float], n: int, rng: random.Random) -> list[int]:
    # Efraimidis-Spirakis: key u^(1/w), take the n largest — sampling without replacement by weight.
    keys = [(rng.random() ** (1.0 / w), i) for i, w in zip(idx, weights)]
    return [i for _, i in sorted(keys, reverse=True)[:n]]


def plan(pairs: Sequence[Pair], schedule: str, measure: str, *, stages: int = 3, split_by: str = "auto",
         strategy: str = "best-vs-rest", seed: int = 0, shuffle_within_stage: bool = False,
         cyclical: tuple[float, float, float] = (0.25, 1.0, 2.0), self_paced_start: float = 0.5) -> list[Stage]:
    """The stage plan for ``schedule``. ``measure`` must already be in every pair's ``difficulty``
    (for ``dynamic``/self-paced, the static measure used to order candidates)."""
    if not isinstance(shuffle_within_stage, bool):  # a config string ("false" is truthy) must be resolved first
        raise TypeError(f"shuffle_within_stage must be a bool (config.shuffle_within_stage), got "
                        f"{shuffle_within_stage!r}")
    rng = random.Random(seed)
    n = len(pairs)
    if schedule in ("iterative", "anti"):
        by = split_by if split_by != "auto" else auto_split(pairs, measure, stages, strategy)
        groups = _split(pairs, measure, stages, by, rng)
        if schedule == "anti":
            groups = [(list(reversed(g)), label) for g, label in reversed(groups)]
        out = [Stage(j, g, label) for j, (g, label) in enumerate(groups)]
    elif schedule == "single-pass":
        out = [Stage(0, _easy_to_hard(range(n), pairs, measure, rng), "easy to hard")]
    elif schedule in ("random", "single-pair"):
        idx = list(range(n))
        rng.shuffle(idx)
        out = [Stage(0, idx, "shuffled")]
    elif schedule == "cyclical":
        ordered = _easy_to_hard(range(n), pairs, measure, rng)
        easiness = {i: (n - r) / n for r, i in enumerate(ordered)}  # in (0, 1], easiest = 1
        out = []
        for j, frac in enumerate(_cyclical_fractions(stages, *cyclical)):
            chosen = _weighted_sample(list(range(n)), [easiness[i] for i in range(n)], max(1, round(frac * n)), rng)
            out.append(Stage(j, _easy_to_hard(chosen, pairs, measure, rng), f"fraction {frac:.2f}"))
    elif schedule == "self-paced":
        out = []
        for j in range(stages):
            frac = 1.0 if stages == 1 else self_paced_start + (1 - self_paced_start) * j / (stages - 1)
            out.append(Stage(j, list(range(n)), f"easiest {frac:.0%} by current loss", admit_fraction=frac))
    else:
        raise ValueError(schedule)  # unreachable: validated by check_section
    if shuffle_within_stage:
        for s in out:
            random.Random(seed * 1000 + s.index).shuffle(s.pairs)
    return out


def admit(stage: Stage, pairs: Sequence[Pair], seed: int, shuffle: bool) -> list[int]:
    """Self-paced: the easiest ``admit_fraction`` of the stage by ``dynamic`` difficulty, easy -> hard."""
    rng = random.Random(seed * 1000 + stage.index)
    ordered = _easy_to_hard(stage.pairs, pairs, "dynamic", rng)
    kept = ordered[: max(1, round(len(ordered) * stage.admit_fraction))]
    if shuffle:
        rng.shuffle(kept)
    return kept


def updates_per_stage(sizes: Sequence[int], updates_per_pass: Sequence[int], epochs: float,
                      total_updates: int | None) -> list[int]:
    """How many optimiser updates each stage gets.

    Default: ``ceil(epochs * updates_per_pass)``. With ``total_updates`` (the fairness
    control of Weber et al. 2024: every arm gets the same number of updates) the total is
    split over stages in proportion to their sizes, each stage getting at least one.
    """
    if total_updates is None:
        return [max(1, math.ceil(epochs * u)) for u in updates_per_pass]
    total_size = sum(sizes)
    raw = [total_updates * s / total_size for s in sizes]
    out = [max(1, int(r)) for r in raw]
    # Largest remainders get the leftover updates so the sum is exact.
    for j in sorted(range(len(raw)), key=lambda j: raw[j] - int(raw[j]), reverse=True):
        if sum(out) >= total_updates:
            break
        out[j] += 1
    while sum(out) > total_updates and max(out) > 1:
        out[out.index(max(out))] -= 1
    return out


SCHEDULES = {
    "iterative": "K stages easy -> hard, reference swapped to the previous stage's policy",
    "single-pass": "one stage, all pairs easy -> hard, fixed reference",
    "random": "one stage, all pairs shuffled",
    "anti": "the iterative stages reversed: hard -> easy",
    "single-pair": "one pair per prompt (single-pair builder), shuffled",
    "cyclical": "data fraction cycles between start and end, sampled by easiness",
    "self-paced": "admit the easiest pairs by the current policy's loss, growing each stage",
}
# curriculum.split_by (see `auto_split`) and the builders the single-pair baseline may use.
SPLIT_BY = ("auto", "rank", "value", "quantile")
SINGLE_PAIR_STRATEGIES = ("best-vs-random", "best-vs-worst")


def check_section(curriculum) -> None:
    """The ``curriculum:`` keys of the schedules (``config.CurriculumConfig``, or any object with them)."""
    c = curriculum
    check_choice("curriculum.schedule", c.schedule, tuple(SCHEDULES))
    if c.stages < 1:
        raise CurryError(f"config key 'curriculum.stages' must be >= 1, got {c.stages}")
    check_choice("curriculum.shuffle_within_stage", str(c.shuffle_within_stage).lower(), ("auto", "true", "false"))
    check_choice("curriculum.split_by", c.split_by, SPLIT_BY)
    check_choice("curriculum.single_pair_strategy", c.single_pair_strategy, SINGLE_PAIR_STRATEGIES)
    for key in ("cyclical_start", "cyclical_end", "self_paced_start"):
        v = getattr(c, key)
        if not 0 < v <= 1:
            raise CurryError(f"config key 'curriculum.{key}' must be in (0, 1], got {v}")
    check_positive("curriculum.cyclical_factor", c.cyclical_factor)
