"""Pair builders in pairs.py: order, ties, min-gap, N=2, N=7 (Nectar ranks), seeded best-vs-random."""

from types import SimpleNamespace

import pytest

from currydpo.data.pairs import BUILDERS, build_pairs, check_section
from currydpo.data.records import Record, Response, validate_record
from currydpo.errors import CurryError


def rec(*scores, ranks=False):
    resp = [Response(f"r{k}", **({"rank": s} if ranks else {"score": s})) for k, s in enumerate(scores)]
    return validate_record(Record("x", "p", resp))


def idx(pairs):
    return [(p.chosen, p.rejected) for p in pairs]


def test_best_vs_rest_easy_to_hard():
    pairs = build_pairs([rec(3.0, 5.0, 1.0, 4.0)], "best-vs-rest")
    assert idx(pairs) == [(1, 2), (1, 0), (1, 3)]  # (R1,R4), (R1,R3), (R1,R2)
    assert [p.score_gap for p in pairs] == [4.0, 2.0, 1.0]
    assert [p.rejected_position for p in pairs] == [4, 3, 2] and [p.rank_gap for p in pairs] == [3, 2, 1]


def test_all_pairs_adjacent_worst():
    r = rec(4, 3, 2, 1)
    assert len(build_pairs([r], "all-pairs")) == 6
    assert idx(build_pairs([r], "adjacent")) == [(0, 1), (1, 2), (2, 3)]
    assert idx(build_pairs([r], "best-vs-worst")) == [(0, 3)]


def test_n2_every_strategy_gives_one_pair():
    for name in BUILDERS:
        assert idx(build_pairs([rec(0.0, 1.0)], name)) == [(1, 0)], name


def test_ties_dropped_unless_allowed():
    r = rec(5, 3, 3)
    assert idx(build_pairs([r], "all-pairs")) == [(0, 1), (0, 2)]
    assert len(build_pairs([r], "all-pairs", allow_ties=True)) == 3
    tied = rec(2, 2, 2)
    for name in BUILDERS:
        assert build_pairs([tied], name) == [], name  # all tied: no pairs, not an error
    assert [p.score_gap for p in build_pairs([tied], "best-vs-rest", allow_ties=True)] == [0.0, 0.0]


def test_min_gap():
    r = rec(5.0, 4.5, 2.0)
    assert idx(build_pairs([r], "best-vs-rest", min_gap=1.0)) == [(0, 2)]
    with pytest.raises(CurryError, match="min_gap must be >= 0"):
        build_pairs([r], min_gap=-1)


def test_nectar_seven_ranks():
    r = rec(3, 1, 7, 2, 5, 4, 6, ranks=True)  # rank 1 = best
    pairs = build_pairs([r], "best-vs-rest")
    assert len(pairs) == 6 and {p.chosen for p in pairs} == {1}
    assert [p.rank_gap for p in pairs] == [6, 5, 4, 3, 2, 1] and pairs[0].score_gap is None
    assert len(build_pairs([r], "all-pairs")) == 21


def test_best_vs_random_is_seeded_and_skips_ties():
    recs = [rec(5, 4, 3, 2, 1) for _ in range(20)]
    a, b = build_pairs(recs, "best-vs-random", seed=1), build_pairs(recs, "best-vs-random", seed=1)
    assert idx(a) == idx(b) and all(p.chosen == 0 for p in a)
    assert len({p.rejected for p in a}) > 1
    assert idx(build_pairs(recs, "best-vs-random", seed=2)) != idx(a)
    assert idx(build_pairs([rec(5, 5, 1)], "best-vs-random")) == [(0, 2)]


def test_unknown_strategy():
    with pytest.raises(CurryError, match="unknown pair strategy 'best'; choose one of: best-vs-rest"):
        build_pairs([rec(1, 0)], "best")


@pytest.mark.parametrize("section,message", [
    ({"strategy": "best", "min_gap": 0.0}, "config: unknown pair strategy 'best'; choose one of: best-vs-rest, "
                                           "all-pairs, adjacent, best-vs-worst, best-vs-random"),
    ({"strategy": "adjacent", "min_gap": -0.5}, "config key 'data.min_gap' must be >= 0, got -0.5"),
])
def test_check_section_names_the_key(section, message):
    check_section(SimpleNamespace(strategy="all-pairs", min_gap=0.0))  # a duck-typed section; 0 gap is fine
    with pytest.raises(CurryError) as e:
        check_section(SimpleNamespace(**section))
    assert str(e.value) == message
