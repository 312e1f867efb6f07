"""`currydpo report`: reports and README blocks re-rendered from a results.json alone."""

import shutil

import pytest
from test_frontier import synthetic

from currydpo.cli import main
from currydpo.errors import CurryError
from currydpo.experiments.regenerate import stale_blocks
from currydpo.experiments.report import write_report


def with_sft(results):
    sft = [{"arm": "sft", "seed": s, "metrics": {"kl": 0.0, "judge_score": 0.4}, "train": None,
            "fairness": {"updates": 0, "schedule": "none (base model)", "reference": "-", "lr_schedule": "-",
                         "optimizer_resets": 0}} for s in (1, 2, 3)]
    return sft + [{**r, "train": None, "fairness": {**r["fairness"], "schedule": "random", "lr_schedule": "linear",
                                                    "optimizer_resets": 0}} for r in results]


def test_report_rerenders_every_markdown_from_results_json_alone(tmp_path, capsys):
    results = with_sft(synthetic())
    run = tmp_path / "run"
    write_report(str(run), results, list(dict.fromkeys(r["arm"] for r in results)), notes={"budget": "lr 1"})
    shipped = tmp_path / "docs"
    shipped.mkdir()
    shutil.copy(run / "results.json", shipped / "results.json")  # only the file we ship
    assert main(["report", str(shipped)]) == 0
    for name in ("results.md", "frontier.md"):
        assert (shipped / name).read_text() == (run / name).read_text(), name
    assert (shipped / "frontier.png").exists()
    capsys.readouterr()
    assert main(["report", str(shipped), "--block", "budget"]) == 0
    assert capsys.readouterr().out.startswith("### Best gold reward measured within a KL budget")


def test_generated_blocks_are_synced_and_a_changed_number_is_found(tmp_path, monkeypatch):
    results = with_sft(synthetic())
    run = tmp_path / "run"
    write_report(str(run), results, list(dict.fromkeys(r["arm"] for r in results)))
    doc = tmp_path / "README.md"
    doc.write_text("intro\n<!-- generated: currydpo report run --block table -->\nold\n<!-- end generated -->\n"
                   "between\n<!-- generated: currydpo report run --block budget -->\n<!-- end generated -->\nend\n")
    assert stale_blocks(str(doc), root=str(tmp_path)) == ["run --block table", "run --block budget"]
    monkeypatch.chdir(tmp_path)  # block directories are relative to where the command runs (the repo root)
    assert main(["report", "--sync", "README.md"]) == 0
    text = doc.read_text()
    assert stale_blocks(str(doc), root=str(tmp_path)) == [] and text.startswith("intro\n") and "between" in text
    assert "| dense |" in text and "| sft |" in text
    row = next(line for line in text.splitlines() if line.startswith("| dense | 0."))
    doc.write_text(text.replace(row, row.replace("| dense | 0.", "| dense | 1.", 1)))  # one number edited by hand
    assert stale_blocks(str(doc), root=str(tmp_path)) == ["run --block budget"]


def test_report_without_results_json_is_one_line(tmp_path):
    with pytest.raises(CurryError, match="results.json: not found"):
        from currydpo.experiments.regenerate import rerender

        rerender(str(tmp_path))
    assert main(["report", str(tmp_path / "nothing")]) == 2
