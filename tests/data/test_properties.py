"""Property: any row, however malformed, becomes valid records/pairs or a CurryError — nothing else."""

import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from currydpo.data.formats import FORMATS, convert_rows
from currydpo.data.pairs import BUILDERS, build_pairs
from currydpo.data.records import Record, text_of
from currydpo.errors import BadRow, CurryError

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 9), st.floats(allow_nan=True),
                    st.sampled_from(["", " ", "4", "N/A", "abc", "x"]), st.text(max_size=5))
keys = st.sampled_from(["prompt", "chosen", "rejected", "responses", "text", "score", "rank", "instruction",
                        "completions", "response", "annotations", "Rating", "overall_score", "answers", "answer",
                        "role", "content", "replies", "message_id", "parent_id", "id", "helpfulness"])
values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                      st.dictionaries(keys, kids, max_size=5)), max_leaves=20)
rows = st.dictionaries(keys, values, max_size=6)


def check_record(rec: Record):
    assert len(rec.responses) >= 2
    assert text_of(rec.prompt).strip() if isinstance(rec.prompt, str) else rec.prompt
    for r in rec.responses:
        assert text_of(r.text).strip()
        assert r.score is None or (isinstance(r.score, float) and math.isfinite(r.score))


# derandomize: CI sees the same examples every run (a search that finds a new bug on a random
# day is a flaky suite); found bugs are pinned with @example.
@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rows, min_size=1, max_size=4), st.sampled_from(FORMATS), st.sampled_from(sorted(BUILDERS)),
       st.booleans())
@example([{"role": [], "message_id": []}], "oasst", "adjacent", False)  # unhashable role: was a TypeError
def test_rows_become_valid_pairs_or_curry_errors(batch, fmt, strategy, ties):
    records = []
    try:
        for _, item in convert_rows(batch, fmt, source="h.jsonl"):
            if isinstance(item, BadRow):
                assert item.reason and "\n" not in str(item)
                continue
            check_record(item)
            records.append(item)
        pairs = build_pairs(records, strategy, allow_ties=ties)
    except CurryError:
        return
    for p in pairs:
        rec = records[p.record]
        assert p.chosen != p.rejected
        assert rec.quality(p.chosen) >= rec.quality(p.rejected)
        assert ties or rec.quality(p.chosen) > rec.quality(p.rejected)


# Near-valid rows, so that many examples reach the pair builders.
score_values = st.one_of(st.integers(1, 5), st.floats(allow_nan=True, allow_infinity=True), st.none(),
                         st.sampled_from(["4", "N/A", "abc"]))
texts = st.sampled_from(["a", "b", "c", "", "  ", "d"])
prompts = st.sampled_from(["p", "", [{"role": "user", "content": "q"}], [{"role": "bot", "content": "q"}]])
responses = st.lists(st.fixed_dictionaries({"text": texts, "score": score_values}), max_size=6)
ranked_rows = st.fixed_dictionaries({"prompt": prompts, "responses": responses})
uf_rows = st.fixed_dictionaries({"instruction": st.sampled_from(["q", ""]), "completions": st.lists(
    st.fixed_dictionaries({"response": texts, "overall_score": score_values, "fine-grained_score": score_values,
                           "annotations": st.dictionaries(st.sampled_from(["helpfulness", "honesty"]),
                                                          st.fixed_dictionaries({"Rating": score_values}))}),
    max_size=5)})


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.one_of(st.tuples(st.lists(ranked_rows, min_size=1, max_size=4), st.just("ranked")),
                 st.tuples(st.lists(uf_rows, min_size=1, max_size=4), st.just("ultrafeedback"))),
       st.sampled_from(sorted(BUILDERS)), st.floats(0, 2))
def test_near_valid_rows(batch_fmt, strategy, min_gap):
    batch, fmt = batch_fmt
    records = []
    for _, item in convert_rows(batch, fmt, source="h.jsonl"):
        if isinstance(item, BadRow):
            assert item.row is not None and item.field
            continue
        check_record(item)
        records.append(item)
    for p in build_pairs(records, strategy, min_gap=min_gap):
        rec = records[p.record]
        assert p.score_gap is not None and p.score_gap > 0 and p.score_gap >= min_gap
        assert p.score_gap == rec.responses[p.chosen].score - rec.responses[p.rejected].score
