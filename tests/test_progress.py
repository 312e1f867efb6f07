"""Progress off a terminal: plain lines (phase, done/total, rate, ETA) every 10% or 30 s; --no-progress silences."""

import re
from pathlib import Path

import pytest

from currydpo import progress
from currydpo.progress import progress_bar

from conftest import make_records, tiny_config

LINE = re.compile(r"^currydpo: (?P<desc>[^:]+(?:\([^)]*\))?): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\), "
                  r"[\d.e+]+ \w+/s, (ETA )?\d+", re.M)


@pytest.fixture(autouse=True)
def no_quiet_start(monkeypatch):
    """These phases take milliseconds; the lines a long phase prints are what is tested."""
    monkeypatch.setattr(progress, "QUIET_FOR_S", 0.0)


def lines(err: str, desc: str) -> list[re.Match]:
    return [m for m in LINE.finditer(err) if m["desc"] == desc]


def test_lines_every_tenth_when_stderr_is_not_a_terminal(capsys):
    assert list(progress_bar(range(50), desc="work", unit="row")) == list(range(50))
    got = lines(capsys.readouterr().err, "work")
    assert [int(m["done"]) for m in got] == list(range(5, 51, 5)) and got[-1]["pct"] == "100"
    assert all("ETA" in m.group(0) for m in got[:-1])
    list(progress_bar(range(50), desc="work", enabled=False))
    assert capsys.readouterr().err == ""
    progress.QUIET_FOR_S = 60.0  # a short phase prints nothing at all
    list(progress_bar(range(50), desc="work"))
    assert capsys.readouterr().err == ""


def test_a_run_logs_its_phases_when_stderr_is_a_file(tiny_model_dir, tmp_path, capsys):
    """Under pytest's capture stderr is not a terminal, as under nohup or SLURM: tokenising, the reference
    pass and the updates each print plain lines while they run."""
    from currydpo.training import loop

    cfg = tiny_config(tiny_model_dir, tmp_path / "run", run={"progress": True},
                      optim={"batch_size": 2, "total_updates": 6})
    loop.train(cfg, records=make_records(12))
    err = capsys.readouterr().err
    ref = lines(err, "reference log-probs (initial)")
    assert len(ref) >= 2 and ref[-1]["pct"] == "100" and int(ref[0]["done"]) < int(ref[0]["total"])
    assert lines(err, "tokenising") and any(m["desc"].startswith("stage 1/") for m in LINE.finditer(err))
    assert "\r" not in err  # no bar escape codes in a log file


def test_pairs_takes_no_progress(tiny_model_dir, tmp_path, capsys):
    from currydpo.cli import main

    src = Path(__file__).parents[1] / "examples" / "ultrafeedback_tiny.jsonl"
    args = ["pairs", str(src), "--out", str(tmp_path / "p.jsonl"), "--difficulty", "ref-logratio", "--model",
            tiny_model_dir, "--schedule", "single-pass"]
    assert main(args) == 0
    assert lines(capsys.readouterr().err, "reference log-probs")
    assert main(args + ["--no-progress"]) == 0
    assert "currydpo: reference" not in capsys.readouterr().err

