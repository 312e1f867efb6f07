"""`--format curri-dpo`: the Curry-DPO authors' released pairs (ServiceNow-AI/Curriculum_DPO_preferences).

Hand-written files in exactly the released layout: each entry holds ``easy``, ``medium`` and
``hard``, each ``{"conversation": [turns..., {"role": "assistant", "chosen_content",
"rejected_content"}]}``.
"""

import json

import pytest

from currydpo.curriculum.difficulty import measure_static
from currydpo.curriculum.schedules import plan
from currydpo.data.formats import detect_format
from currydpo.data.loading import load_records
from currydpo.data.pairs import build_pairs
from currydpo.errors import CurryError


def level(prompt_turns, chosen, rejected):
    return {"conversation": [*prompt_turns, {"role": "assistant", "chosen_content": chosen,
                                             "rejected_content": rejected}]}


def entry(prompt_turns, chosen, easy, medium, hard):
    return {"easy": level(prompt_turns, chosen, easy), "medium": level(prompt_turns, chosen, medium),
            "hard": level(prompt_turns, chosen, hard)}


USER = [{"role": "user", "content": "What is two plus two?"}]
MULTI = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Name a fruit."}]
ENTRIES = [
    entry(USER, "Four.", "Banana.", "Two plus two is five.", "It is 4, I think."),
    entry(MULTI, "An apple.", "I cannot help.", "A carrot.", "Apple!!"),
]


def write(tmp_path, rows, layout):
    path = tmp_path / ("pairs.json" if layout == "array" else "pairs.jsonl")
    text = json.dumps(rows) if layout == "array" else "\n".join(json.dumps(r) for r in rows) + "\n"
    path.write_text(text)
    return path


@pytest.mark.parametrize("layout", ["array", "jsonl"])
def test_merged_entries_rebuild_the_released_pairs_in_easy_medium_hard_order(tmp_path, layout):
    path = write(tmp_path, ENTRIES, layout)
    res = load_records(str(path), "auto")
    assert res.format == "curri-dpo" and len(res.records) == 2
    multi = res.records[1]
    assert multi.prompt == MULTI  # every turn before the last assistant turn is the prompt
    assert [r.text for r in multi.responses] == ["An apple.", "Apple!!", "A carrot.", "I cannot help."]
    assert multi.positions() == [1, 2, 3, 4]  # chosen R1, hard R2, medium R3, easy R4
    pairs = build_pairs(res.records, "best-vs-rest")
    measure_static("score-gap", pairs, res.records)
    stages = plan(pairs, "iterative", "score-gap", stages=3)
    released = []
    for s in stages:
        got = {(res.records[pairs[i].record].id, res.records[pairs[i].record].responses[pairs[i].rejected].text)
               for i in s.pairs}
        released.append(got)
    assert released == [{("1", "Banana."), ("2", "I cannot help.")},                # easy
                        {("1", "Two plus two is five."), ("2", "A carrot.")},       # medium
                        {("1", "It is 4, I think."), ("2", "Apple!!")}]             # hard
    assert all(res.records[pairs[i].record].responses[pairs[i].chosen].text in ("Four.", "An apple.")
               for s in stages for i in s.pairs)


def test_levels_that_disagree_stay_pairs_of_their_level_and_stages_split_by_level(tmp_path):
    split = entry(USER, "Four.", "Banana.", "Five.", "4?")
    split["hard"] = level(USER, "4.", "Four, or five.")  # the hard level has another chosen answer
    path = write(tmp_path, [split, ENTRIES[0]], "jsonl")
    recs = load_records(str(path), "curri-dpo").records
    assert [r.id for r in recs] == ["1:easy", "1:medium", "1:hard", "2"]
    assert [r.meta["level"] for r in recs[:3]] == [1, 2, 3]
    pairs = build_pairs(recs, "best-vs-rest")
    measure_static("score-gap", pairs, recs)
    stages = plan(pairs, "iterative", "score-gap", stages=3)
    labels = [[(recs[pairs[i].record].id, recs[pairs[i].record].responses[pairs[i].rejected].text)
               for i in sorted(s.pairs)] for s in stages]
    # the merged entry's (R1,R4) and the lone easy pair share stage 1, and so on: level by level
    assert [sorted(x) for x in labels] == [sorted([("1:easy", "Banana."), ("2", "Banana.")]),
                                           sorted([("1:medium", "Five."), ("2", "Two plus two is five.")]),
                                           sorted([("1:hard", "Four, or five."), ("2", "It is 4, I think.")])]
    only_levels = [p for p in pairs if "level" in recs[p.record].meta]
    measure_static("column:level", only_levels, recs)
    assert [s.label for s in plan(only_levels, "iterative", "column:level", stages=3)] == \
        ["difficulty 1", "difficulty 2", "difficulty 3"]


def test_detection_needs_two_levels_and_names_the_format():
    assert detect_format(ENTRIES[0]) == "curri-dpo"
    assert detect_format({"easy": ENTRIES[0]["easy"], "hard": ENTRIES[0]["hard"]}) == "curri-dpo"


@pytest.mark.parametrize("mutate, expect", [
    (lambda e: e.pop("hard"), "row 1 field 'hard': missing field"),
    (lambda e: e["easy"]["conversation"][-1].pop("chosen_content"),
     "row 1 field 'easy.conversation[1].chosen_content': missing field"),
    (lambda e: e["medium"]["conversation"][-1].update(rejected_content="Four."),
     "row 1 field 'medium.conversation[1].rejected_content': chosen equals rejected"),
    (lambda e: e["hard"].update(conversation=[{"role": "user", "content": "q"}]),
     "row 1 field 'hard.conversation': no assistant turn"),
    (lambda e: e["hard"].update(conversation=e["hard"]["conversation"][1:]),
     "row 1 field 'hard.conversation': no prompt"),
    (lambda e: e["easy"]["conversation"][0].update(role="bot"),  # checked by records.check_messages
     "row 1 field 'easy.conversation[0].role': bad role (got 'bot', expected one of system, user, assistant, tool)"),
])
def test_bad_entries_name_file_row_and_field(tmp_path, mutate, expect):
    bad = json.loads(json.dumps(ENTRIES[0]))
    mutate(bad)
    path = write(tmp_path, [bad], "jsonl")
    with pytest.raises(CurryError) as err:
        load_records(str(path), "curri-dpo")
    assert str(err.value).startswith(f"{path} {expect}"), str(err.value)
    assert "\n" not in str(err.value)
