"""`currydpo pairs` end to end through the dispatcher."""

import json
from pathlib import Path

import pytest

from currydpo.cli import build_parser, main

EXAMPLES = Path(__file__).parents[2] / "examples"
ASPECTS = ["helpfulness", "honesty", "instruction_following", "truthfulness"]


def uf_row(k, ratings):
    return {"instruction": f"question {k}", "completions": [
        {"response": f"answer {k}.{j}", "overall_score": 1.0, "fine-grained_score": None, "model": "m",
         "annotations": {a: {"Rating": str(r), "Rationale": ""} for a, r in zip(ASPECTS, rs)}}
        for j, rs in enumerate(ratings)]}


@pytest.fixture
def uf_file(tmp_path):
    # Means per completion: 5, 2.5, 4, 1 -> best-vs-rest gaps 4, 2.5, 1 (easy to hard).
    ratings = [(5, 5, 5, 5), (2, 3, 2, 3), (4, 4, 4, 4), (1, 1, 1, 1)]
    f = tmp_path / "uf.jsonl"
    f.write_text("".join(json.dumps(uf_row(k, ratings)) + "\n" for k in range(3)))
    return f


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_best_vs_rest_three_pairs_per_prompt(uf_file, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert main(["pairs", str(uf_file), "--strategy", "best-vs-rest", "--out", str(out)]) == 0
    rows = read(out)
    assert len(rows) == 9
    first = rows[:3]
    assert {r["prompt_id"] for r in first} == {"1"} and {r["chosen"] for r in first} == {"answer 0.0"}
    assert [r["rejected"] for r in first] == ["answer 0.3", "answer 0.1", "answer 0.2"]
    assert [r["score_gap"] for r in first] == [4.0, 2.5, 1.0]
    assert [r["rank_gap"] for r in first] == [3, 2, 1] and [r["rejected_position"] for r in first] == [4, 3, 2]
    assert [(r["chosen_score"], r["rejected_score"]) for r in first] == [(5.0, 1.0), (5.0, 2.5), (5.0, 4.0)]
    text = capsys.readouterr().out
    assert "prompts read     3" in text and "pairs total      9" in text and "min 3 / mean 3.00 / max 3" in text
    assert "score gap" in text and "#" in text


def test_trl_columns_string_and_chat(uf_file, tmp_path):
    out = tmp_path / "trl.jsonl"
    assert main(["pairs", str(uf_file), "--strategy", "best-vs-worst", "--trl", "--out", str(out)]) == 0
    assert read(out)[0] == {"prompt": "question 0", "chosen": "answer 0.0", "rejected": "answer 0.3"}
    assert main(["pairs", str(EXAMPLES / "ranked_tiny.jsonl"), "--trl", "--out", str(out)]) == 0
    chat = [r for r in read(out) if isinstance(r["prompt"], list)]
    assert chat and set(chat[0]) == {"prompt", "chosen", "rejected"}
    assert chat[0]["prompt"] == [{"role": "user", "content": "Is 7 prime?"}]
    assert chat[0]["chosen"] == [{"role": "assistant", "content": "Yes, 7 is prime: its only divisors are 1 and 7."}]


def test_example_file_and_options(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["pairs", str(EXAMPLES / "ultrafeedback_tiny.jsonl"), "--strategy", "best-vs-rest", "--out",
                 str(out)]) == 0
    assert len(read(out)) == 18
    assert main(["pairs", str(EXAMPLES / "ultrafeedback_tiny.jsonl"), "--strategy", "all-pairs", "--min-gap", "2",
                 "--score", "overall", "--limit", "2", "--out", str(out)]) == 0
    rows = read(out)
    assert rows and all(r["score_gap"] >= 2 for r in rows) and {r["prompt_id"] for r in rows} == {"1", "2"}


def test_bad_input_exit_2_one_line_no_output(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(uf_row(0, [(5,) * 4, (1,) * 4])) + "\n" + '{"instruction": "q", "completions": [\n')
    out = tmp_path / "out" / "pairs.jsonl"
    assert main(["pairs", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.jsonl line 2: invalid JSON" in err
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))
    assert main(["pairs", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err


def test_skip_prints_bad_row_counts(tmp_path, capsys):
    f = tmp_path / "d.jsonl"
    rows = [uf_row(0, [(5,) * 4, (1,) * 4]), {"instruction": "q", "completions": []}, {"instrucion": "q"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "p.jsonl"
    assert main(["pairs", str(f), "--on-bad-row", "skip", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bad rows         2" in text and "fewer than 2 responses: 1" in text and "missing field: 1" in text
    assert len(read(out)) == 1


def test_every_flag_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["pairs"]
    for action in sub._actions:
        assert action.help, action.dest


# ------------------------------------------------------------------ curriculum inspection

def test_pairs_schedule_prints_stage_plan_and_writes_histogram(tmp_path, capsys):
    src = Path(__file__).parents[2] / "examples" / "ultrafeedback_tiny.jsonl"
    out = tmp_path / "p.jsonl"
    assert main(["pairs", str(src), "--out", str(out), "--schedule", "anti", "--difficulty", "score-gap"]) == 0
    text = capsys.readouterr().out
    assert "stage 1:" in text and "rejected rank 2" in text.split("stage 1:")[1].splitlines()[0]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["stage"] for r in rows} == {1, 2, 3}
    assert all(r["rejected_position"] == 2 for r in rows if r["stage"] == 1)  # anti: hardest first
    assert (tmp_path / "p.stages.png").stat().st_size > 1000


def test_pairs_ref_logratio_uses_the_model(tmp_path, tiny_model_dir, capsys):
    src = Path(__file__).parents[2] / "examples" / "ultrafeedback_tiny.jsonl"
    out = tmp_path / "p.jsonl"
    assert main(["pairs", str(src), "--out", str(out), "--difficulty", "ref-logratio"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["pairs", str(src), "--out", str(out), "--difficulty", "ref-logratio", "--model", tiny_model_dir,
                  "--schedule", "single-pass"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    values = [r["difficulty"]["ref-logratio"] for r in rows]
    assert len(set(values)) > 1 and all(isinstance(v, float) for v in values)


def test_pairs_schedule_shows_the_stages_train_runs(tmp_path, capsys):
    """`pairs` plans through pipeline.stage_plan: the single-pair builder swap and config keys apply."""
    from currydpo.config import from_dict, validate
    from currydpo.data.loading import load_records
    from currydpo.pipeline import prepare, stage_plan

    src = Path(__file__).parents[2] / "examples" / "ultrafeedback_tiny.jsonl"
    out = tmp_path / "p.jsonl"
    assert main(["pairs", str(src), "--out", str(out), "--schedule", "single-pair", "--seed", "3"]) == 0
    rows = read(out)
    records = load_records(str(src), "auto").records
    cfg = validate(from_dict({"data": {"path": str(src)}, "curriculum": {"schedule": "single-pair"},
                              "run": {"seed": 3}}))
    trained = prepare(cfg, records).train_pairs
    assert len(rows) == len(records) == len(trained)  # one pair per prompt, as train builds them
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        (records[p.record].responses[p.chosen].text, records[p.record].responses[p.rejected].text) for p in trained]
    # a config key without a flag reaches the plan: quantile split of best-vs-rest pairs into 2 stages
    config = tmp_path / "run.yaml"
    config.write_text("curriculum:\n  schedule: iterative\n  split_by: quantile\n  stages: 2\n")
    assert main(["pairs", str(src), "--out", str(out), "--config", str(config)]) == 0
    cfg = validate(from_dict({"curriculum": {"split_by": "quantile", "stages": 2}}))
    plan = stage_plan(cfg, prepare(cfg, records).train_pairs)
    assert sorted(r["stage"] for r in read(out)) == sorted(s.index + 1 for s in plan for _ in s.pairs)
    assert "stage 2:" in capsys.readouterr().out


def test_pairs_select_marks_kept_pairs_per_stage(tmp_path, tiny_model_dir, capsys):
    src = EXAMPLES / "ultrafeedback_tiny.jsonl"
    out = tmp_path / "p.jsonl"
    assert main(["pairs", str(src), "--out", str(out), "--select"]) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main(["pairs", str(src), "--out", str(out), "--select", "--model", tiny_model_dir, "--schedule",
                 "iterative", "--difficulty", "ref-logratio", "--set", "data.select_fraction=0.5"]) == 0
    text = capsys.readouterr().out
    rows = read(out)
    kept = [r for r in rows if r["selected"]]
    assert len(kept) == round(0.5 * len(rows))
    assert f"{len(kept)}/{len(rows)} pairs kept" in text and text.count(" kept (") == 3  # one line per stage
    # the kept pairs are those with the largest reference margin (smallest c)
    c = sorted(r["difficulty"]["ref-logratio"] for r in rows)
    assert max(r["difficulty"]["ref-logratio"] for r in kept) <= c[len(kept) - 1]


def test_pairs_config_without_data_gives_the_stages_train_trains(tmp_path, capsys):
    """`pairs --config run.yaml` reads data.path from the config and holds out data.eval_fraction, as
    `train` does (before: DATA was demanded and the held-out prompts' pairs were planned too)."""
    from currydpo import plan_stages

    recs = [{"prompt": f"q{i}", "responses": [{"text": f"a{i}-{j}", "score": float(4 - j)} for j in range(4)]}
            for i in range(20)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: {{path: {data}, eval_fraction: 0.2}}\ncurriculum: {{schedule: iterative, stages: 3}}\n")
    out = tmp_path / "pairs.jsonl"
    assert main(["pairs", "--config", str(cfg), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    plan = plan_stages(str(cfg))
    assert len(rows) == len(plan.pairs) == 16 * 3  # 4 of 20 prompts held out
    assert [sum(r["stage"] == k + 1 for r in rows) for k in range(3)] == [len(s.pairs) for s in plan.stages]
    held = {plan.records[p.record].id for p in plan.eval_pairs}
    assert held and not held & {r["prompt_id"] for r in rows}
    assert all(set(r["difficulty"]) >= {"score-gap"} and "ref-logratio" not in r["difficulty"] for r in rows)


def test_pairs_reward_margin_writes_only_what_was_measured(tmp_path, tiny_model_dir):
    """--difficulty reward-margin scores each response with the reward model; no ref-logratio column is
    made up (before: every row carried ref-logratio -0.0 without a reference pass)."""
    from conftest import save_reward_model

    rm = save_reward_model(tiny_model_dir, tmp_path / "rm")
    out = tmp_path / "p.jsonl"
    assert main(["pairs", str(EXAMPLES / "ultrafeedback_tiny.jsonl"), "--out", str(out), "--difficulty",
                 "reward-margin", "--reward-model", rm]) == 0
    rows = read(out)
    assert rows and all("ref-logratio" not in r["difficulty"] for r in rows)
    margins = [r["difficulty"]["reward-margin"] for r in rows]
    assert len(set(margins)) > 1 and all(isinstance(v, float) for v in margins)
