"""Ranked lists from a stage plan: how each schedule applies to a listwise loss."""

from currydpo.curriculum.difficulty import measure_static
from currydpo.curriculum.lists import stage_lists
from currydpo.curriculum.schedules import plan
from currydpo.data.pairs import build_pairs

from conftest import make_records


def lists_for(schedule, records, strategy="best-vs-rest", shuffle=False, stages=3):
    pairs = build_pairs(records, strategy)
    measure_static("score-gap", pairs, records)
    st = plan(pairs, schedule, "score-gap", stages=stages, strategy=strategy, shuffle_within_stage=shuffle)
    return stage_lists(records, pairs, st, schedule, "score-gap", shuffle)


def test_iterative_lists_grow_from_the_extremes_inward():
    lists, stages = lists_for("iterative", make_records(5))  # scores 4,3,2,1: responses 0..3 best first
    sets = [{tuple(lists[i].responses) for i in s.pairs} for s in stages]
    assert sets == [{(0, 3)}, {(0, 2, 3)}, {(0, 1, 2, 3)}]
    assert [len(s.pairs) for s in stages] == [5, 5, 5]  # batch size counts lists
    assert [lists[s.pairs[0]].n_pairs for s in stages] == [1, 2, 3]  # pairs-equivalent
    assert lists[stages[2].pairs[0]].ranks == [1, 2, 3, 4]
    anti_lists, anti = lists_for("anti", make_records(5))
    assert [{tuple(anti_lists[i].responses) for i in s.pairs} for s in anti] == [{(0, 1)}, {(0, 1, 2)}, {(0, 1, 2, 3)}]


def test_single_pass_orders_lists_by_their_smallest_score_gap():
    records = make_records(3)
    for rec, scores in zip(records, ([5.0, 4.0, 2.0, 1.0], [5.0, 3.0, 2.5, 1.0], [5.0, 3.0, 2.0, 0.0])):
        for r, s in zip(rec.responses, scores):
            r.score = s
    lists, (stage,) = lists_for("single-pass", records)
    assert [lists[i].record for i in stage.pairs] == [2, 0, 1]  # smallest gaps 1, 1 (tie: first seen), 0.5
    assert [lists[i].difficulty["score-gap"] for i in stage.pairs] == [-1.0, -1.0, -0.5]


def test_ties_share_a_rank_and_labels_come_from_ranks_without_scores():
    records = make_records(2, scores=[3.0, 2.0, 2.0, 1.0])
    lists, (stage,) = lists_for("single-pass", records)
    assert lists[stage.pairs[0]].ranks == [1, 2, 2, 3]
    rank_only = make_records(2)
    for rec in rank_only:
        for k, r in enumerate(rec.responses):
            r.score, r.rank = None, k
    lists, (stage,) = lists_for("random", rank_only)
    assert lists[stage.pairs[0]].labels == [3.0, 2.0, 1.0, 0.0]


def test_single_pair_lists_are_pairs_and_cyclical_lists_hold_the_stage_sample():
    records = make_records(6)
    lists, stages = lists_for("cyclical", records)
    for s in stages:
        assert all(len(lists[i].responses) >= 2 for i in s.pairs)
    lists, (stage,) = lists_for("single-pair", records, strategy="best-vs-random")
    assert all(len(lists[i].responses) == 2 for i in stage.pairs)
