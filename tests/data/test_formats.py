"""Row converters: each source format -> validated Records, and format auto-detection."""

import math
from types import SimpleNamespace

import pytest

from currydpo.data.formats import check_section, convert_row, convert_rows, detect_format
from currydpo.data.records import validate_record
from currydpo.errors import BadRow, CurryError


def uf_completion(text, ratings, overall=None, fg=None):
    comp = {"response": text, "overall_score": overall, "fine-grained_score": fg}
    if ratings is not None:
        comp["annotations"] = {a: {"Rating": r, "Rationale": "."} for a, r in zip(
            ["helpfulness", "honesty", "instruction_following", "truthfulness"], ratings)}
    return comp


def records(rows, fmt, **kw):
    out = []
    for _, item in convert_rows(rows, fmt, source="t.jsonl", **kw):
        if isinstance(item, BadRow):
            raise item
        out.append(item)
    return out


# ----------------------------------------------------------------------------- ultrafeedback

def test_ultrafeedback_mean_aspects_skips_na_and_parses_numeric_strings():
    row = {"instruction": "q", "completions": [
        uf_completion("a", ["5", "4", "N/A", "3"], overall=8.5, fg=4.0),
        uf_completion("b", ["2", "2", "2", "1"], overall=3.0, fg=1.75)]}
    (rec,) = convert_row(row, "ultrafeedback", source="t.jsonl", rowno=1)
    assert [r.score for r in rec.responses] == [4.0, 1.75]
    assert rec.id == "1" and rec.prompt == "q" and (rec.source, rec.row) == ("t.jsonl", 1)


def test_ultrafeedback_overall_and_fine_grained_fallback():
    row = {"instruction": "q", "prompt_id": "abc", "completions": [
        uf_completion("a", None, overall=8.5, fg=4.25),
        uf_completion("b", ["N/A"] * 4, overall=3.0, fg=1.5)]}
    (rec,) = convert_row(row, "ultrafeedback", source="t.jsonl", rowno=1)
    assert [r.score for r in rec.responses] == [4.25, 1.5]  # fine-grained_score when no usable rating
    assert rec.id == "abc"
    (rec,) = convert_row(row, "ultrafeedback", source="t.jsonl", rowno=1, score="overall")
    assert [r.score for r in rec.responses] == [8.5, 3.0]


def test_ultrafeedback_string_score_names_field():
    row = {"instruction": "q", "completions": [uf_completion("a", ["5"] * 4), uf_completion("b", ["abc"] * 4)]}
    with pytest.raises(BadRow, match=r"t.jsonl row 7 field 'completions\[1\].annotations.helpfulness.Rating'") as e:
        convert_row(row, "ultrafeedback", source="t.jsonl", rowno=7)
    assert e.value.reason == "bad score" and "'abc'" in str(e.value)


def test_ultrafeedback_missing_response_field():
    row = {"instruction": "q", "completions": [uf_completion("a", ["5"] * 4), {"respons": "b", "overall_score": 1}]}
    with pytest.raises(BadRow, match=r"row 2 field 'completions\[1\].response': missing field.*respons"):
        convert_row(row, "ultrafeedback", source="t.jsonl", rowno=2)


# ----------------------------------------------------------------------------- nectar

def test_nectar_seven_ranked_answers():
    row = {"prompt": "\n\nHuman: hi\n\nAssistant:", "answers": [
        {"answer": f"answer {k}", "rank": float(k), "model": f"m{k}"} for k in (3, 1, 7, 2, 5, 4, 6)]}
    (rec,) = convert_row(row, "nectar", source="n.jsonl", rowno=1)
    validate_record(rec)
    assert [rec.responses[i].rank for i in rec.order()] == [1, 2, 3, 4, 5, 6, 7]
    assert rec.responses[0].meta["model"] == "m3"


def test_nectar_bad_rank():
    row = {"prompt": "p", "answers": [{"answer": "a", "rank": 1}, {"answer": "b", "rank": "second"}]}
    with pytest.raises(BadRow, match=r"field 'answers\[1\].rank': bad rank"):
        convert_row(row, "nectar", source="n.jsonl", rowno=3)


# ----------------------------------------------------------------------------- oasst

def msg(mid, role, text, rank=None, replies=(), parent=None):
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank, "replies": list(replies)}


TREE = {"message_tree_id": "t1", "prompt": msg("p1", "prompter", "Hello?", replies=[
    msg("a1", "assistant", "Hi there!", rank=0, replies=[
        msg("p2", "prompter", "Tell me a joke.", replies=[
            msg("a3", "assistant", "Why did the chicken...", rank=1),
            msg("a4", "assistant", "Knock knock.", rank=0),
            msg("a5", "assistant", "unranked", rank=None)])]),
    msg("a2", "assistant", "Go away.", rank=1)])}


def test_oasst_tree_every_prompter_turn_with_two_ranked_replies():
    recs = records([TREE], "oasst")
    assert [r.id for r in recs] == ["p1", "p2"]
    assert recs[0].prompt == [{"role": "user", "content": "Hello?"}]
    assert recs[1].prompt == [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi there!"},
                              {"role": "user", "content": "Tell me a joke."}]
    assert [r.text for r in recs[1].responses] == ["Why did the chicken...", "Knock knock."]  # rank-null dropped
    assert recs[1].responses[recs[1].order()[0]].text == "Knock knock."


def flatten(node, parent=None):
    row = {k: v for k, v in node.items() if k != "replies"}
    row["parent_id"], row["lang"] = parent, "en"
    yield row
    for r in node["replies"]:
        yield from flatten(r, node["message_id"])


def test_oasst_flat_layout_matches_tree():
    flat = list(flatten(TREE["prompt"]))
    assert detect_format(flat[0]) == "oasst"
    tree_recs, flat_recs = records([TREE], "oasst"), records(flat, "oasst")
    assert [(r.id, r.prompt, [x.text for x in r.responses]) for r in flat_recs] == \
           [(r.id, r.prompt, [x.text for x in r.responses]) for r in tree_recs]
    assert flat_recs[1].row == 3  # the prompter message's own row


def test_oasst_bad_role():
    tree = {"prompt": msg("p1", "prompter", "Hi", replies=[msg("a1", "robot", "x", rank=0)])}
    with pytest.raises(BadRow, match=r"field 'prompt.replies\[0\].role': bad role.*'robot'"):
        convert_row(tree, "oasst", source="o.jsonl", rowno=5)


# ----------------------------------------------------------------------------- pairwise

def test_pairwise_standard():
    (rec,) = convert_row({"prompt": "p", "chosen": "good", "rejected": "bad"}, "pairwise", source="x", rowno=1)
    assert rec.prompt == "p" and [(r.text, r.score) for r in rec.responses] == [("good", 1.0), ("bad", 0.0)]


def test_pairwise_conversational():
    row = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello"}],
           "rejected": [{"role": "assistant", "content": "go"}]}
    rec = validate_record(convert_row(row, "pairwise", source="x", rowno=1)[0])
    assert rec.is_chat and rec.responses[0].text == [{"role": "assistant", "content": "hello"}]


def test_pairwise_implicit_hh_string():
    common = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:"
    row = {"chosen": common + " Fine, thanks.", "rejected": common + " Fine. Go away."}
    (rec,) = convert_row(row, "pairwise", source="hh", rowno=1)
    assert rec.prompt == common
    assert [r.text for r in rec.responses] == [" Fine, thanks.", " Fine. Go away."]


def test_pairwise_implicit_messages_back_off_to_user_turn():
    u, a = {"role": "user", "content": "q"}, {"role": "assistant", "content": "same start"}
    row = {"chosen": [u, a], "rejected": [u, {"role": "assistant", "content": "other"}]}
    (rec,) = convert_row(row, "pairwise", source="x", rowno=1)
    assert rec.prompt == [u] and rec.responses[0].text == [a]
    # the shared assistant turn is not the prompt: replies must start with the assistant
    row = {"chosen": [u, a, {"role": "user", "content": "x"}], "rejected": [u, a]}
    (rec,) = convert_row(row, "pairwise", source="x", rowno=1)
    assert rec.prompt == [u]


def test_pairwise_no_shared_prompt():
    with pytest.raises(BadRow, match="no shared prompt"):
        convert_row({"chosen": "abc", "rejected": "xyz"}, "pairwise", source="x", rowno=2)


# ----------------------------------------------------------------------------- ranked

def test_ranked_scores_and_ranks():
    row = {"id": "r1", "prompt": "p", "responses": [{"text": "a", "score": 2}, {"text": "b", "score": 4}]}
    (rec,) = convert_row(row, "ranked", source="x", rowno=1)
    assert rec.id == "r1" and rec.order() == [1, 0]
    row = {"prompt": "p", "responses": [{"text": "a", "rank": 1}, {"text": "b", "rank": 0}]}
    (rec,) = convert_row(row, "ranked", source="x", rowno=3)
    assert rec.id == "3" and rec.order() == [1, 0]


@pytest.mark.parametrize("value,reason", [("abc", "bad score"), (float("nan"), "non-finite score"),
                                          (math.inf, "non-finite score"), (True, "bad score")])
def test_ranked_bad_scores(value, reason):
    row = {"prompt": "p", "responses": [{"text": "a", "score": value}, {"text": "b", "score": 1}]}
    with pytest.raises(BadRow, match=r"t.jsonl row 4 field 'responses\[0\].score'") as e:
        records([row], "ranked", line_of=lambda i: 4)
    assert e.value.reason == reason


@pytest.mark.parametrize("row,field,reason", [
    ({"prompt": "p", "responses": [{"text": "a", "score": 1}]}, "responses", "fewer than 2 responses"),
    ({"prompt": "p", "responses": [{"text": "a", "score": 1}, {"text": "a", "score": 0}]}, "responses",
     "fewer than 2 distinct responses"),
    ({"prompt": "p", "responses": [{"text": "a", "score": 1}, {"text": "  \n", "score": 0}]}, "responses[1]",
     "empty text"),
    ({"prompt": "  ", "responses": [{"text": "a", "score": 1}, {"text": "b", "score": 0}]}, "prompt", "empty text"),
    ({"prompt": 5, "responses": [{"text": "a", "score": 1}, {"text": "b", "score": 0}]}, "prompt", "bad type"),
    ({"prompt": "p", "responses": "a, b"}, "responses", "bad type"),
    ({"prompt": "p", "respones": []}, "responses", "missing field"),
    ({"prompt": "p", "responses": [{"text": "a"}, {"text": "b", "score": 0}]}, "responses[0].score", "missing field"),
    ({"prompt": [{"role": "bot", "content": "x"}], "responses": [{"text": "a", "score": 1}, {"text": "b", "score": 0}]},
     "prompt[0].role", "bad role"),
])
def test_ranked_bad_rows(row, field, reason):
    with pytest.raises(BadRow) as e:
        records([row], "ranked", line_of=lambda i: 9)
    assert (e.value.source, e.value.row, e.value.field, e.value.reason) == ("t.jsonl", 9, field, reason)
    assert "\n" not in str(e.value)


def test_all_tied_is_a_valid_record():
    (rec,) = records([{"prompt": "p", "responses": [{"text": "a", "score": 3}, {"text": "b", "score": 3}]}], "ranked")
    assert rec.positions() == [1, 1]


def test_duplicate_responses_are_dropped():
    rows = [{"prompt": "p", "responses": [{"text": t, "score": s} for t, s in [("a", 3), ("b", 2), ("a", 1)]]}]
    (rec,) = records(rows, "ranked")
    assert [r.text for r in rec.responses] == ["a", "b"] and rec.meta["duplicates_dropped"] == 1


# ----------------------------------------------------------------------------- detection

@pytest.mark.parametrize("row,fmt", [
    ({"instruction": "q", "completions": []}, "ultrafeedback"),
    ({"prompt": "q", "answers": [], "turns": 1}, "nectar"),
    ({"message_tree_id": "t", "prompt": {"text": "x"}}, "oasst"),
    ({"prompt": {"text": "x", "replies": []}}, "oasst"),
    ({"message_id": "m", "parent_id": None, "role": "prompter", "text": "x"}, "oasst"),
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "pairwise"),
    ({"chosen": "a", "rejected": "b"}, "pairwise"),
    ({"prompt": "p", "responses": [], "id": 1}, "ranked"),
    ({"prompt": "p", "responses": [], "answers": None}, "ranked"),  # Arrow's None = absent
])
def test_detect_format(row, fmt):
    assert detect_format(row) == fmt


def test_detect_unknown_and_ambiguous():
    with pytest.raises(CurryError, match=r"keys \[question, text\].*no known format.*ultrafeedback, nectar"):
        detect_format({"question": "q", "text": "t"}, "f.jsonl")
    with pytest.raises(CurryError, match=r"several formats \(nectar, ranked\)"):
        detect_format({"prompt": "q", "answers": [], "responses": []})


def test_unknown_format_name():
    with pytest.raises(CurryError, match="unknown data format 'csv'.*ultrafeedback"):
        list(convert_rows([], "csv", source="x"))


# ----------------------------------------------------------------------------- config section

READING = {"format": "auto", "score": "mean-aspects", "on_bad_row": "error"}  # the data: keys formats.py owns


@pytest.mark.parametrize("key,value,valid", [
    ("format", "hh", "auto, ultrafeedback, nectar, oasst, pairwise, ranked, curri-dpo, nemo-rl"),
    ("score", "max", "mean-aspects, overall"),
    ("on_bad_row", "drop", "error, skip"),
])
def test_check_section_names_the_key(key, value, valid):
    check_section(SimpleNamespace(**READING))  # any object with the fields: formats does not import config
    with pytest.raises(CurryError) as e:
        check_section(SimpleNamespace(**{**READING, key: value}))
    assert str(e.value) == f"config key 'data.{key}': {value!r} is not valid; choose one of: {valid}"
