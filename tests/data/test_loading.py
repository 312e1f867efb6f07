"""load_records on real files: local layouts, broken files, skip counts, Hub fallback, shared real data."""

import json
from pathlib import Path

import pytest

from currydpo.data import loading
from currydpo.data.loading import load_records
from currydpo.data.pairs import build_pairs
from currydpo.errors import BadRow, CurryError

ROOT = Path(__file__).parents[2]
CORPUS = Path(__file__).parent / "corpus"
SHARED = Path(__file__).parents[3] / "shared" / "data"
EXAMPLE = ROOT / "examples" / "ultrafeedback_tiny.jsonl"


def ranked_row(prompt, *scores):
    return {"prompt": prompt, "responses": [{"text": f"{prompt} answer {k}", "score": s} for k, s in enumerate(scores)]}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_example_ultrafeedback():
    res = load_records(str(EXAMPLE))
    assert res.format == "ultrafeedback" and res.rows_read == 6 and res.bad_rows == {}
    assert len(res.records) == 6 and all(len(r.responses) == 4 for r in res.records)
    assert all(1 <= r.score <= 5 for rec in res.records for r in rec.responses)


def test_row_numbers_are_line_numbers(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(ranked_row("a", 1, 0)) + "\n\n\n" + json.dumps(ranked_row("b", 1, 1, 1, "x")) + "\n")
    with pytest.raises(BadRow, match=r"d.jsonl row 4 field 'responses\[3\].score': bad score"):
        load_records(str(f))


def test_json_csv_parquet_directory_and_glob(tmp_path):
    import datasets

    rows = [{"prompt": f"p{k}", "chosen": f"good {k}", "rejected": f"bad {k}"} for k in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "b.csv"), index=False)
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "c.parquet"))
    for name in ("a.json", "b.csv", "c.parquet"):
        res = load_records(str(tmp_path / name))
        assert res.format == "pairwise" and [r.prompt for r in res.records] == ["p0", "p1", "p2"], name
    res = load_records(str(tmp_path))
    assert len(res.records) == 9 and res.rows_read == 9
    assert res.records[0].id == "a.json:1"  # row ids are made unique across files
    assert len(load_records(str(tmp_path / "*.csv")).records) == 3


def test_no_cache_left_beside_data(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [ranked_row("a", 1, 0)])
    load_records(str(tmp_path / "d.jsonl"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


@pytest.mark.parametrize("name,pattern", [
    ("invalid_utf8.jsonl", r"invalid_utf8.jsonl line 2: invalid UTF-8 \(byte 0xe9"),
    ("truncated.jsonl", r"truncated.jsonl line 3: invalid JSON"),
    ("empty.jsonl", r"empty.jsonl: file is empty"),
    ("misspelled_field.jsonl", r"misspelled_field.jsonl row 2 field 'instruction': missing field "
                               r"\(found 'instrucion', did you mean 'instruction'\?\)"),
    ("string_score.jsonl", r"string_score.jsonl row 1 field 'completions\[1\].annotations.helpfulness.Rating': "
                           r"bad score \(got 'abc'"),
    ("nan_score.jsonl", r"nan_score.jsonl row 2 field 'responses\[0\].score': non-finite score"),
    ("bad_role.jsonl", r"bad_role.jsonl row 1 field 'prompt\[0\].role': bad role \(got 'robot'"),
])
def test_corpus_errors_name_file_and_line(name, pattern):
    with pytest.raises(CurryError, match=pattern) as e:
        load_records(str(CORPUS / name))
    assert "\n" not in str(e.value)


def test_skip_counts_bad_rows_by_reason(tmp_path):
    rows = [ranked_row("ok1", 2, 1), ranked_row("tie", 2, 2), ranked_row("one", 1), ranked_row("s", 1, "abc"),
            {"prompt": "m"}, {"prompt": "p", "responses": 3}, ranked_row("ok2", 3, 1, 2)]
    f = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.raises(BadRow, match="row 3 field 'responses': fewer than 2 responses"):
        load_records(str(f))
    res = load_records(str(f), on_bad_row="skip")
    assert [r.prompt for r in res.records] == ["ok1", "tie", "ok2"]  # all tied is a record, not an error
    assert res.rows_read == 7
    assert res.bad_rows == {"fewer than 2 responses": 1, "bad score": 1, "missing field": 1, "bad type": 1}


def test_limit(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [ranked_row(f"p{k}", 1, 0) for k in range(10)])
    res = load_records(str(f), limit=4)
    assert len(res.records) == 4 and res.rows_read == 4
    with pytest.raises(CurryError, match="limit must be >= 1"):
        load_records(str(f), limit=0)


def test_user_errors(tmp_path):
    with pytest.raises(CurryError, match=r"nope/missing.jsonl: file not found"):
        load_records("nope/missing.jsonl")
    f = write_jsonl(tmp_path / "d.jsonl", [ranked_row("a", 1, 0)])
    with pytest.raises(CurryError, match="unknown data format 'hh'; choose one of: auto, ultrafeedback"):
        load_records(str(f), "hh")
    with pytest.raises(CurryError, match="unknown on_bad_row 'ignore'"):
        load_records(str(f), on_bad_row="ignore")
    with pytest.raises(CurryError, match="unknown score 'max'"):
        load_records(str(f), score="max")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(CurryError, match="unsupported file type"):
        load_records(str(tmp_path / "d.txt"))
    with pytest.raises(CurryError, match="no files match"):
        load_records(str(tmp_path / "*.parquet"))


def test_hub_name_unreachable_is_a_curry_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/prefs' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CurryError, match="someone/prefs: not a local file, and the Hugging Face Hub is unreachable"):
        load_records("someone/prefs")


def test_hub_rows_are_converted(monkeypatch):
    import datasets

    seen = {}

    def fake(name, subset, split, **kw):
        seen.update(name=name, subset=subset, split=split)
        return datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}])

    monkeypatch.setattr(datasets, "load_dataset", fake)
    res = loading.load_records("someone/prefs", split="test", subset="en")
    assert seen == {"name": "someone/prefs", "subset": "en", "split": "test"}
    assert res.records[0].source == "someone/prefs[test]" and res.records[0].row == 1


# ----------------------------------------------------------------------------- shared real data

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared real data not present")


@needs_shared
def test_real_oasst_tree():
    res = load_records(str(SHARED / "oasst_en_100_tree.jsonl"))
    assert res.format == "oasst" and res.rows_read == 100 and len(res.records) == 212
    sizes = [len(r.responses) for r in res.records]
    assert min(sizes) == 2 and max(sizes) == 9
    assert all(r.is_chat and r.prompt[-1]["role"] == "user" for r in res.records)


@needs_shared
def test_real_hh_rlhf():
    res = load_records(str(SHARED / "hh_rlhf_harmless_base_test.jsonl.gz"), on_bad_row="skip")
    assert res.format == "pairwise" and res.rows_read == 2312
    assert len(res.records) + sum(res.bad_rows.values()) == 2312
    assert len(res.records) > 2250
    assert all(r.prompt.endswith("\n\nAssistant:") and r.prompt.startswith("\n\nHuman:") for r in res.records)


# ----------------------------------------------------------------------------- TRL pairwise rows regrouped

def _pairwise_file(tmp_path, rows):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


def test_pairwise_rows_sharing_a_prompt_become_one_ranked_record(tmp_path, capsys):
    rows = [{"prompt": f"q{i}", "chosen": f"{w}{i}", "rejected": f"{lo}{i}"}
            for i in range(6) for w, lo in (("B", "C"), ("A", "B"), ("A", "C"))]
    recs = load_records(_pairwise_file(tmp_path, rows)).records
    assert len(recs) == 6
    assert [(r.text, r.rank) for r in recs[0].responses] == [("A0", 0), ("B0", 1), ("C0", 2)]
    assert recs[0].meta["rows"] == [1, 2, 3] and recs[0].row == 1
    assert "18 pairwise rows sharing a prompt regrouped into 6 ranked records" in capsys.readouterr().err
    pairs = build_pairs(recs, "best-vs-rest")
    assert sorted((p.chosen, p.rejected_position) for p in pairs if p.record == 0) == [(0, 2), (0, 3)]


def test_inconsistent_pairwise_rows_stay_pairs_with_one_warning(tmp_path, capsys):
    rows = [{"prompt": "cycle", "chosen": "x", "rejected": "y"}, {"prompt": "cycle", "chosen": "y", "rejected": "z"},
            {"prompt": "cycle", "chosen": "z", "rejected": "x"},
            {"prompt": "partial", "chosen": "a", "rejected": "b"},
            {"prompt": "partial", "chosen": "a", "rejected": "c"},
            {"prompt": "alone", "chosen": "p", "rejected": "q"}]
    recs = load_records(_pairwise_file(tmp_path, rows)).records
    assert len(recs) == 6 and all(len(r.responses) == 2 for r in recs)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "2 prompt(s) have pairwise rows whose preferences do not give one total" in err


def test_hh_rlhf_rows_regroup_only_where_consistent(capsys):
    path = SHARED / "hh_rlhf_harmless_base_test.jsonl.gz"
    if not path.exists():
        pytest.skip("shared HH-RLHF file absent")
    res = load_records(str(path), on_bad_row="skip")
    # 2 prompts occur twice, each with two disjoint pairs (never compared): no total order, kept as 4 pairs
    assert len(res.records) == res.rows_read - sum(res.bad_rows.values())
    assert "2 prompt(s) have pairwise rows" in capsys.readouterr().err


# ----------------------------------------------------------------------------- in-memory datasets

def test_a_dataset_a_datasetdict_and_a_saved_folder_load_like_a_file(tmp_path):
    import datasets

    rows = [{"prompt": f"p{i}", "responses": [{"text": f"good {i}", "score": 2.0}, {"text": f"bad {i}", "score": 1.0}]}
            for i in range(5)]
    ds = datasets.Dataset.from_list(rows)
    a = load_records(ds, "ranked").records
    b = load_records(datasets.DatasetDict({"train": ds, "test": ds.select([0])}), "ranked", split="test").records
    ds.save_to_disk(str(tmp_path / "saved"))
    c = load_records(str(tmp_path / "saved")).records
    assert [r.prompt for r in a] == [r.prompt for r in c] == [f"p{i}" for i in range(5)] and len(b) == 1
    with pytest.raises(CurryError, match=r"DatasetDict\[?.*no split 'validation'; it has train, test"):
        load_records(datasets.DatasetDict({"train": ds, "test": ds}), split="validation")
