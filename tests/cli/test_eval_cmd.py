import json

from currydpo.cli import main

from conftest import make_records


def distinct_words(prompt, response):
    return float(len(set(response.split())))


def test_eval_gives_preference_metrics_win_rate_kl_and_exports(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    with open(data, "w") as f:
        for r in make_records(6):
            f.write(json.dumps({"prompt": r.prompt, "responses": [{"text": x.text, "score": x.score}
                                                                  for x in r.responses]}) + "\n")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"question_id": i, "turns": [f"the dog {i}"]}) + "\n" for i in range(6)))
    out = tmp_path / "ev"
    rc = main(["eval", tiny_model_dir, "--reference", tiny_model_dir, "--data", str(data), "--prompts", str(prompts),
               "--judge", f"gold:{__name__}:distinct_words", "--baseline", tiny_model_dir, "--max-new-tokens", "6",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    m = json.loads((out / "eval.json").read_text())
    # The model is its own reference and baseline: zero margins, KL 0, and every comparison a tie.
    assert m["preference"]["rewards/margins"] == 0.0 and m["preference"]["n"] == 18
    assert abs(m["kl"]) < 1e-6
    assert m["win_rate"]["win_rate"] == 0.5 and m["win_rate"]["ties"] == 6
    assert "bucket=4/ranking_accuracy" in m["preference"]
    alpaca = json.loads((out / "alpaca_eval.json").read_text())
    assert len(alpaca) == 6 and set(alpaca[0]) == {"instruction", "output", "generator"}
    assert len((out / "mt_bench_answers.jsonl").read_text().splitlines()) == 6
    assert "adjusted win rate" in capsys.readouterr().out


def test_eval_needs_something_to_do(tiny_model_dir, capsys):
    assert main(["eval", tiny_model_dir]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
