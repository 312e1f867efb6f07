"""Schedules on hand-built data with a known expected order."""

from types import SimpleNamespace

import pytest

from currydpo.curriculum.difficulty import measure_static
from currydpo.curriculum.schedules import _cyclical_fractions, admit, check_section, plan, updates_per_stage
from currydpo.data.pairs import build_pairs
from currydpo.data.records import Record, Response
from currydpo.errors import CurryError


def four(scores=(5, 4, 3, 2)):
    return Record("p", "prompt", [Response(f"r{j}", score=float(s)) for j, s in enumerate(scores)])


def pairs_of(records, strategy="best-vs-rest"):
    pairs = build_pairs(records, strategy)
    for m in ("score-gap", "rank-gap", "length-gap"):
        measure_static(m, pairs, records)
    return pairs


def as_tuples(stages, pairs):
    return [[(pairs[i].chosen, pairs[i].rejected) for i in s.pairs] for s in stages]


def test_iterative_score_gap_gives_r4_then_r3_then_r2():
    recs = [four()]
    pairs = pairs_of(recs)
    stages = plan(pairs, "iterative", "score-gap", stages=3)
    assert as_tuples(stages, pairs) == [[(0, 3)], [(0, 2)], [(0, 1)]]


def test_iterative_quantile_split_matches_rank_split_on_clean_scores():
    recs = [four(), four((4, 5, 1, 3))]
    pairs = pairs_of(recs)
    by_rank = plan(pairs, "iterative", "score-gap", stages=3, split_by="rank")
    assert [sorted(pairs[i].rejected_position for i in s.pairs) for s in by_rank] == [[4, 4], [3, 3], [2, 2]]
    by_q = plan(pairs, "iterative", "score-gap", stages=3, split_by="quantile")
    gaps = [[pairs[i].score_gap for i in s.pairs] for s in by_q]
    assert all(min(a) >= max(b) for a, b in zip(gaps, gaps[1:]))  # easy (big gap) first


def test_anti_reverses_iterative():
    pairs = pairs_of([four()])
    assert as_tuples(plan(pairs, "anti", "score-gap", stages=3), pairs) == [[(0, 1)], [(0, 2)], [(0, 3)]]


def test_single_pass_orders_easy_to_hard_and_random_is_seeded_shuffle():
    recs = [four(), four((5, 1, 3, 2))]
    pairs = pairs_of(recs)
    (sp,) = plan(pairs, "single-pass", "score-gap")
    diffs = [pairs[i].difficulty["score-gap"] for i in sp.pairs]
    assert diffs == sorted(diffs)
    r1 = plan(pairs, "random", "score-gap", seed=1)[0].pairs
    r2 = plan(pairs, "random", "score-gap", seed=1)[0].pairs
    r3 = plan(pairs, "random", "score-gap", seed=2)[0].pairs
    assert r1 == r2 and sorted(r1) == list(range(len(pairs))) and any(
        plan(pairs, "random", "score-gap", seed=s)[0].pairs != r1 for s in range(2, 6)) and sorted(r3) == sorted(r1)


def test_ref_logratio_ranks_pair_the_reference_prefers_as_easy():
    from currydpo.curriculum.difficulty import measure_from_response_values

    recs = [four((5, 3, 1, 0))]
    pairs = pairs_of(recs)
    # Reference loves the chosen response vs r3 (easy), and prefers r1 over the chosen one (hard).
    ref = {(0, 0): -10.0, (0, 1): -5.0, (0, 2): -12.0, (0, 3): -30.0}
    measure_from_response_values("ref-logratio", pairs, ref, sign=-1.0)
    (sp,) = plan(pairs, "single-pass", "ref-logratio")
    assert [pairs[i].rejected for i in sp.pairs] == [3, 2, 1]
    assert pairs[sp.pairs[0]].difficulty["ref-logratio"] == -20.0


def test_cyclical_fractions_grow_and_shrink():
    assert _cyclical_fractions(6, 0.25, 1.0, 2.0) == [0.25, 0.5, 1.0, 0.5, 0.25, 0.5]


def test_cyclical_samples_easy_pairs_more_often():
    recs = [four((5, 4, 3, 2)) for _ in range(40)]
    for k, r in enumerate(recs):
        r.id = str(k)
    pairs = pairs_of(recs)
    counts = {2: 0, 3: 0, 4: 0}
    for seed in range(10):
        for s in plan(pairs, "cyclical", "score-gap", stages=1, cyclical=(0.3, 0.3, 2.0), seed=seed):
            assert len(s.pairs) == round(0.3 * len(pairs)) and len(set(s.pairs)) == len(s.pairs)
            for i in s.pairs:
                counts[pairs[i].rejected_position] += 1
    assert counts[4] > counts[3] > counts[2]


def test_self_paced_admits_growing_easiest_fraction_by_dynamic_loss():
    recs = [four()]
    pairs = pairs_of(recs)
    stages = plan(pairs, "self-paced", "score-gap", stages=3, self_paced_start=1 / 3)
    assert [s.admit_fraction for s in stages] == pytest.approx([1 / 3, 2 / 3, 1.0])
    for p, loss in zip(pairs, [0.1, 0.9, 0.5]):
        p.difficulty["dynamic"] = loss
    assert admit(stages[0], pairs, seed=0, shuffle=False) == [0]
    assert admit(stages[1], pairs, seed=0, shuffle=False) == [0, 2]


def test_updates_per_stage_default_and_forced_total():
    assert updates_per_stage([10, 10, 10], [3, 3, 3], 1.0, None) == [3, 3, 3]
    assert updates_per_stage([10, 10, 10], [3, 3, 3], 2.0, None) == [6, 6, 6]
    forced = updates_per_stage([10, 20, 30], [1, 1, 1], 1.0, 12)
    assert sum(forced) == 12 and forced == [2, 4, 6]
    assert sum(updates_per_stage([1, 1, 50], [1, 1, 1], 1.0, 5)) == 5


def test_shuffle_within_stage_keeps_stage_membership():
    recs = [four() for _ in range(5)]
    for k, r in enumerate(recs):
        r.id = str(k)
    pairs = pairs_of(recs)
    plain = plan(pairs, "iterative", "score-gap", stages=3)
    shuffled = plan(pairs, "iterative", "score-gap", stages=3, shuffle_within_stage=True)
    assert [sorted(s.pairs) for s in plain] == [sorted(s.pairs) for s in shuffled]


def test_an_unresolved_config_string_for_shuffling_is_refused():
    """``shuffle_within_stage: "false"`` is truthy: a raw config string reaching the planner shuffled stages
    the user asked to keep ordered (online stages did); the planner takes resolved booleans only."""
    from currydpo.curriculum.lists import stage_lists

    with pytest.raises(TypeError, match="must be a bool"):
        plan([], "single-pass", "score-gap", shuffle_within_stage="false")
    with pytest.raises(TypeError, match="must be a bool"):
        stage_lists([], [], [], "iterative", "score-gap", "false")


# The curriculum: keys schedules.py owns, at their defaults.
SCHEDULE_KEYS = {"schedule": "iterative", "stages": 3, "shuffle_within_stage": "auto", "split_by": "auto",
                 "single_pair_strategy": "best-vs-random", "cyclical_start": 0.25, "cyclical_end": 1.0,
                 "cyclical_factor": 2.0, "self_paced_start": 0.5}


@pytest.mark.parametrize("key,value,message", [
    ("schedule", "linear", "config key 'curriculum.schedule': 'linear' is not valid; choose one of: iterative, "
                           "single-pass, random, anti, single-pair, cyclical, self-paced"),
    ("stages", 0, "config key 'curriculum.stages' must be >= 1, got 0"),
    ("shuffle_within_stage", "sometimes", "config key 'curriculum.shuffle_within_stage': 'sometimes' is not "
                                          "valid; choose one of: auto, true, false"),
    ("split_by", "median", "config key 'curriculum.split_by': 'median' is not valid; choose one of: auto, rank, "
                           "value, quantile"),
    ("single_pair_strategy", "all-pairs", "config key 'curriculum.single_pair_strategy': 'all-pairs' is not "
                                          "valid; choose one of: best-vs-random, best-vs-worst"),
    ("cyclical_start", 0.0, "config key 'curriculum.cyclical_start' must be in (0, 1], got 0.0"),
    ("cyclical_end", 1.5, "config key 'curriculum.cyclical_end' must be in (0, 1], got 1.5"),
    ("self_paced_start", -0.1, "config key 'curriculum.self_paced_start' must be in (0, 1], got -0.1"),
    ("cyclical_factor", 0.0, "config key 'curriculum.cyclical_factor' must be > 0, got 0.0"),
])
def test_check_section_names_the_key(key, value, message):
    check_section(SimpleNamespace(**{**SCHEDULE_KEYS, "shuffle_within_stage": True}))  # YAML's true is fine
    with pytest.raises(CurryError) as e:
        check_section(SimpleNamespace(**{**SCHEDULE_KEYS, key: value}))
    assert str(e.value) == message
