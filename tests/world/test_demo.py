"""`currydpo demo --quick`: the whole pipeline on the embedded world, as a smoke test."""

import json

from currydpo.cli import main


def test_demo_quick_runs_every_arm_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    rows = {r["arm"]: r for r in res["rows"]}
    assert set(rows) == {"sft", "single-pair", "multi-pair-random", "curry-iterative", "curry-single-pass"}
    trained = [a for a in rows if a != "sft"]
    # Every trained arm: same loss, same number of updates and LR schedule (the fairness controls).
    assert len({rows[a]["fairness"]["updates"] for a in trained}) == 1
    assert len({rows[a]["fairness"]["lr_schedule"] for a in trained}) == 1
    assert rows["curry-iterative"]["fairness"]["reference"] == "previous-stage"
    assert rows["curry-iterative"]["fairness"]["stages"] == 3
    for a in rows:
        assert 0.0 <= rows[a]["judge_score"]["mean"] <= 1.0  # the gold reward is in [0, 1]
    for png in ("scores.png", "reward_vs_kl.png", "training_curves.png"):
        assert (out / png).exists()
    assert "| curry-iterative |" in printed and "What was held equal" in (out / "results.md").read_text()
