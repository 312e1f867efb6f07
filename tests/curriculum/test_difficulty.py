import math
from types import SimpleNamespace

import pytest

from currydpo.curriculum.difficulty import check_measure, check_section, measure_static
from currydpo.data.pairs import build_pairs
from currydpo.data.records import Record, Response
from currydpo.errors import CurryError


def rec(scores, texts=None, meta=None):
    texts = texts or [f"response {j}" for j in range(len(scores))]
    return Record("p", "q", [Response(t, score=s) for t, s in zip(texts, scores)], meta=meta or {}, source="d.jsonl",
                  row=3)


def test_score_and_rank_gap_are_negated_gaps():
    recs = [rec([5.0, 3.5, 1.0])]
    pairs = build_pairs(recs, "best-vs-rest")
    measure_static("score-gap", pairs, recs)
    measure_static("rank-gap", pairs, recs)
    assert [p.difficulty["score-gap"] for p in pairs] == [-4.0, -1.5]
    assert [p.difficulty["rank-gap"] for p in pairs] == [-2.0, -1.0]


def test_score_gap_falls_back_to_rank_gap_without_scores():
    recs = [Record("p", "q", [Response("a", rank=0), Response("b", rank=1), Response("c", rank=2)])]
    pairs = build_pairs(recs, "best-vs-rest")
    measure_static("score-gap", pairs, recs)
    assert [p.difficulty["score-gap"] for p in pairs] == [-2.0, -1.0]


def test_length_gap_column_and_function():
    recs = [rec([3.0, 1.0, 2.0], ["aaaa", "a", "aaaaaaaaaa"], meta={"hardness": 0.7})]
    pairs = build_pairs(recs, "best-vs-rest")
    measure_static("length-gap", pairs, recs)
    assert sorted(p.difficulty["length-gap"] for p in pairs) == [-6.0, -3.0]
    measure_static("column:hardness", pairs, recs)
    assert all(p.difficulty["column:hardness"] == 0.7 for p in pairs)
    measure_static("function:math:fabs", pairs[:0], recs)  # resolves the import even on no pairs
    with pytest.raises(CurryError, match="row 3 field 'nope'"):
        measure_static("column:nope", pairs, recs)


def user_difficulty(pair):
    return len(pair["rejected"]) - pair["rejected_position"]


def test_user_function_gets_plain_pair_and_non_finite_is_an_error():
    recs = [rec([3.0, 1.0], ["xx", "yyy"])]
    pairs = build_pairs(recs, "best-vs-rest")
    measure_static(f"function:{__name__}:user_difficulty", pairs, recs)
    assert pairs[0].difficulty[f"function:{__name__}:user_difficulty"] == 3 - 2
    recs[0].meta["bad"] = math.nan
    with pytest.raises(CurryError, match="finite"):
        measure_static("column:bad", pairs, recs)


def two_argument_difficulty(pair, records):
    return 0.0


def test_a_difficulty_function_with_the_wrong_signature_is_named():
    recs = [rec([3.0, 1.0], ["xx", "yyy"])]
    with pytest.raises(CurryError, match=r"must take one argument .* two_argument_difficulty\(pair, records\)"):
        measure_static(f"function:{__name__}:two_argument_difficulty", build_pairs(recs, "best-vs-rest"), recs)


def test_unknown_measure_lists_valid_ones():
    with pytest.raises(CurryError, match="score-gap"):
        check_measure("gap")
    with pytest.raises(CurryError, match="cannot import"):
        measure_static("function:no_such_module:f", [], [])


def test_column_difficulty_from_a_data_file(tmp_path):
    import json

    from currydpo.data.loading import load_records

    path = tmp_path / "d.jsonl"
    rows = [{"prompt": f"q{i}", "hardness": h, "responses": [{"text": "a", "score": 2}, {"text": "b", "score": 1}]}
            for i, h in enumerate([0.9, 0.1])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = load_records(str(path)).records
    pairs = build_pairs(recs, "best-vs-rest")
    measure_static("column:hardness", pairs, recs)
    assert [p.difficulty["column:hardness"] for p in pairs] == [0.9, 0.1]


def test_function_difficulty_from_a_file(tmp_path):
    from currydpo.data.pairs import build_pairs
    from currydpo.data.records import Record, Response

    f = tmp_path / "mydifficulty.py"
    f.write_text("def chosen_length(pair):\n    return float(len(pair['chosen']))\n")
    recs = [Record("0", "p", [Response("long answer", score=3.0), Response("b", score=1.0), Response("c", 2.0)])]
    pairs = build_pairs(recs, "best-vs-rest")
    measure_static(f"function:{f}:chosen_length", pairs, recs)
    assert [p.difficulty[f"function:{f}:chosen_length"] for p in pairs] == [11.0, 11.0]
    with pytest.raises(CurryError, match="no function 'nope'"):
        measure_static(f"function:{f}:nope", pairs, recs)


@pytest.mark.parametrize("section,message", [
    ({"difficulty": "vibes", "reward_model": None},
     "config: unknown difficulty measure 'vibes'; choose one of: score-gap, rank-gap, length-gap, ref-logratio, "
     "reward-margin, dynamic, column:NAME, function:MODULE:FN"),
    ({"difficulty": "column:", "reward_model": None}, "config: unknown difficulty measure 'column:'"),
    ({"difficulty": "reward-margin", "reward_model": None},
     "config: difficulty 'reward-margin' needs 'curriculum.reward_model' (a model path)"),
])
def test_check_section_names_the_key(section, message):
    check_section(SimpleNamespace(difficulty="reward-margin", reward_model="rm/"))  # a duck-typed section
    with pytest.raises(CurryError) as e:
        check_section(SimpleNamespace(**section))
    assert str(e.value).startswith(message)
