"""Pairwise data as the Hub ships it: ultrafeedback_binarized's layout and scores, flattened best-vs-rest rows
regrouped by their scores, NeMo-RL's and list layouts, and a curriculum the data cannot order said aloud."""

import json
import subprocess
import sys

import pytest

from currydpo.config import from_dict, validate
from currydpo.data.formats import convert_row, detect_format, regroup_pairwise
from currydpo.data.loading import load_records
from currydpo.data.records import validate_record
from currydpo.pipeline import plan, prepare

from conftest import ufb_rows

SCORES = (5.0, 4.0, 2.5, 1.0)


def test_ultrafeedback_binarized_row_reads_as_trl_does():
    (row,) = ufb_rows(1, 1)
    rec = validate_record(convert_row(row, "pairwise", source="ufb", rowno=1)[0])
    assert rec.prompt == [row["chosen"][0]]  # the shared user turn, not the prompt string beside it
    assert rec.responses[0].text == [row["chosen"][1]] and rec.responses[1].text == [row["rejected"][1]]
    assert [x.score for x in rec.responses] == [5.0, 4.0]  # score_chosen / score_rejected kept


def test_best_vs_rest_rows_with_scores_regroup_into_one_ranked_record():
    recs = [convert_row(row, "pairwise", source="ufb", rowno=i + 1)[0] for i, row in enumerate(ufb_rows(2))]
    out, kept_apart = regroup_pairwise(recs)
    assert kept_apart == 0 and len(out) == 2
    assert sorted(x.score for x in out[0].responses) == sorted(SCORES)  # R1>R2, R1>R3, R1>R4 with scores: all 4
    rows = ufb_rows(2, 3, scored=False)
    unscored = [convert_row(row, "pairwise", source="ufb", rowno=i + 1)[0] for i, row in enumerate(rows)]
    assert regroup_pairwise(unscored) == (unscored, 2)  # only a partial order without scores: rows kept apart


def test_contradicting_scores_do_not_regroup_by_score():
    rows = ufb_rows(1, 2)
    rows[1]["score_chosen"] = 4.5  # R1 scored 5 in one row and 4.5 in the other
    recs = [convert_row(row, "pairwise", source="ufb", rowno=i + 1)[0] for i, row in enumerate(rows)]
    assert regroup_pairwise(recs)[1] == 1


def test_nemo_rl_and_response_list_layouts_are_detected():
    nemo = {"context": [{"role": "user", "content": "hi"}],
            "completions": [{"rank": 1, "completion": [{"role": "assistant", "content": "meh"}]},
                            {"rank": 0, "completion": [{"role": "assistant", "content": "hello!"}]}]}
    assert detect_format(nemo) == "nemo-rl"
    rec = validate_record(convert_row(nemo, "nemo-rl", source="n", rowno=1)[0])
    assert rec.responses[rec.order()[0]].text[0]["content"] == "hello!"
    listed = {"prompt": "q", "responses": ["best", "middle", "worst"]}
    assert detect_format(listed) == "ranked"
    rec = validate_record(convert_row(listed, "ranked", source="l", rowno=1)[0])
    assert [rec.responses[i].text for i in rec.order()] == ["best", "middle", "worst"]


def _cfg(path, **curriculum):
    return validate(from_dict({"data": {"path": str(path)}, "curriculum": curriculum}))


def test_one_scored_pair_per_prompt_gives_a_score_gap_curriculum(tmp_path, capsys):
    rows = [row for i, row in enumerate(ufb_rows(9, 3)) if i % 3 == i // 3 % 3]  # one pair per prompt, gaps vary
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = prepare(_cfg(tmp_path / "d.jsonl"))
    plan(_cfg(tmp_path / "d.jsonl"), data)
    assert [len(s.pairs) for s in data.stages] == [3, 3, 3]  # gaps 4, 2.5, 1: easy to hard across prompts
    assert "WARNING" not in capsys.readouterr().err


def test_a_curriculum_without_ordering_signal_is_a_warning(tmp_path, capsys):
    rows = [row for row in ufb_rows(6, 1, scored=False)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = prepare(_cfg(tmp_path / "d.jsonl"))
    plan(_cfg(tmp_path / "d.jsonl"), data)
    err = capsys.readouterr().err
    assert "WARNING: curriculum iterative by score-gap: all 6 training pairs have the same difficulty" in err
    assert "1 stage(s) instead of curriculum.stages 3" in err


def test_scored_binarized_file_trains_as_three_iterative_stages(tmp_path, tiny_model_dir):
    (tmp_path / "ufb.jsonl").write_text("\n".join(json.dumps(r) for r in ufb_rows(8, 3)))
    assert load_records(str(tmp_path / "ufb.jsonl")).records[0].has_scores
    proc = subprocess.run([sys.executable, "-m", "currydpo", "train", "--model", str(tiny_model_dir), "--data",
                           str(tmp_path / "ufb.jsonl"), "--output", str(tmp_path / "run"), "--no-progress",
                           "--set", "optim.batch_size=4", "--set", "optim.lr=1e-3"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "24 pairwise rows sharing a prompt regrouped into 8 ranked records" in proc.stderr
    stages = json.loads((tmp_path / "run" / "summary.json").read_text())["stages"]
    assert [s["pairs"] for s in stages] == [8, 8, 8]  # (R1,R4), then (R1,R3), then (R1,R2) of every prompt
    assert [s["updates"] for s in stages] == [2, 2, 2]


@pytest.mark.parametrize("field", ["score_chosen"])
def test_a_bad_score_names_its_row_and_column(field, tmp_path):
    rows = ufb_rows(1, 2)
    rows[1][field] = "high"
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    from currydpo.errors import CurryError

    with pytest.raises(CurryError, match=rf"d.jsonl row 2 field '{field}': bad score"):
        load_records(str(tmp_path / "d.jsonl"))
