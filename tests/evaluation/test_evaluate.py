"""`currydpo eval` scores held-out pairs with the run's tokenisation rule (training/tokenize.encode_for)."""

import json

import pytest

from currydpo.cli import main
from currydpo.pipeline import prepare
from currydpo.training.loop import train

from conftest import make_records, tiny_config

KEYS = ["rewards/accuracies", "rewards/margins", "ranking_accuracy", "ranking_accuracy_normalised"]


def test_eval_reports_the_heldout_metrics_training_logged(tiny_model_dir, tmp_path):
    # The tiny tokenizer has a chat template; the run says never use it, and cuts prompts to 6 tokens.
    recs = make_records(12)
    data = {"eval_fraction": 0.34, "chat_template": "never", "max_length": 24, "max_prompt_length": 6}
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", data=data, optim={"total_updates": 3})
    logged = train(cfg, records=recs)["stages"][-1]
    held = sorted({p.record for p in prepare(cfg, recs).eval_pairs})
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps({"prompt": recs[r].prompt, "responses": [
        {"text": x.text, "score": x.score} for x in recs[r].responses]}) + "\n" for r in held))

    def evaluate(*extra):
        out = tmp_path / f"eval{len(extra)}"
        assert main(["eval", str(tmp_path / "run" / "final"), "--reference", tiny_model_dir, "--data", str(path),
                     "--out", str(out), "--no-progress", *extra]) == 0
        return json.loads((out / "eval.json").read_text())["preference"]

    same = evaluate("--config", str(tmp_path / "run" / "config.yaml"))
    assert same["rewards/margins"] != 0.0
    for k in KEYS:
        assert same[k] == pytest.approx(logged[f"eval/{k}"], rel=1e-5, abs=1e-6), k
    # Under eval's old rule (template whenever the tokenizer has one, its own limits) the numbers move.
    other = evaluate("--set", "data.chat_template=auto")
    assert other["rewards/margins"] != pytest.approx(logged["eval/rewards/margins"], rel=1e-3)


def test_eval_set_takes_only_data_keys(tiny_model_dir, capsys):
    assert main(["eval", tiny_model_dir, "--set", "loss.beta=0.2", "--data", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "data.* keys" in err and "model.fused_logprobs" in err and "loss.beta" in err


def test_eval_scores_with_the_runs_lm_head_and_matches_its_last_heldout_line(tiny_model_dir, tmp_path):
    # The fused (chunked) LM head on: eval --config takes model.fused_logprobs from the run, scores through
    # the same Scorer rule, and gives the last held-out line of metrics.jsonl to float tolerance.
    recs = make_records(12)
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", data={"eval_fraction": 0.34},
                      model={"fused_logprobs": "chunked"}, optim={"total_updates": 3})
    summary = train(cfg, records=recs)
    assert summary["resolved"]["lm_head"] == "chunked"
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [x for x in lines if "eval/rewards/margins" in x][-1]
    held = sorted({p.record for p in prepare(cfg, recs).eval_pairs})
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps({"prompt": recs[r].prompt, "responses": [
        {"text": x.text, "score": x.score} for x in recs[r].responses]}) + "\n" for r in held))

    def evaluate(out, *extra):
        assert main(["eval", str(tmp_path / "run" / "final"), "--reference", tiny_model_dir, "--data", str(path),
                     "--config", str(tmp_path / "run" / "config.yaml"), "--out", str(tmp_path / out),
                     "--no-progress", *extra]) == 0
        return json.loads((tmp_path / out / "eval.json").read_text())

    got = evaluate("e1")
    assert got["lm_head"] == "chunked"
    assert logged["eval/rewards/margins"] != 0.0
    for k in ("rewards/accuracies", "rewards/margins"):
        assert got["preference"][k] == pytest.approx(logged[f"eval/{k}"], rel=1e-5, abs=1e-6), k
    plain = evaluate("e2", "--set", "model.fused_logprobs=off")  # the plain head: the same numbers, another kernel
    assert plain["lm_head"] == "off"
    assert plain["preference"]["rewards/margins"] == pytest.approx(got["preference"]["rewards/margins"], rel=1e-5)
