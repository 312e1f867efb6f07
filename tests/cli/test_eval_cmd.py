import json
import random

from currydpo.cli import main
from currydpo.training import loop

from conftest import make_records, tiny_config


def distinct_words(prompt, response):
    return float(len(set(response.split())))


def good_fraction(prompt, response):
    """The gold reward of the trained-model case: the share of words that are "good"."""
    words = response.split()
    return sum(w == "good" for w in words) / max(len(words), 1)


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
    # The model is its own reference and baseline: no implicit reward (n/a, not 0), KL 0, every comparison a tie.
    assert m["preference"]["rewards/margins"] is None and m["preference"]["rewards/accuracies"] is None
    assert m["preference"]["n"] == 18
    assert abs(m["kl"]) < 1e-6
    assert m["win_rate"]["win_rate"] == 0.5 and m["win_rate"]["ties"] == 6
    assert "bucket=4/ranking_accuracy" in m["preference"]
    alpaca = json.loads((out / "alpaca_eval.json").read_text())
    assert len(alpaca) == 6 and set(alpaca[0]) == {"instruction", "output", "generator"}
    assert len((out / "mt_bench_answers.jsonl").read_text().splitlines()) == 6
    out_text = capsys.readouterr().out
    assert "adjusted win rate" in out_text and "| held-out rewards/accuracies | n/a (the model is its own" in out_text


def test_eval_of_a_trained_model_against_its_sft_model_is_not_trivial(tiny_model_dir, tmp_path):
    # Ranked data whose gold reward is known: the k-th best answer has 6 - 2k "good" among 6 words.
    rng = random.Random(0)
    words = "the cat sat on mat dog ran park bad answer clear kind sea sky poem".split()
    data = tmp_path / "d.jsonl"
    with open(data, "w") as f:
        for _ in range(12):
            answers = []
            for k in range(4):
                w = ["good"] * (6 - 2 * k) + [rng.choice(words) for _ in range(2 * k)]
                rng.shuffle(w)
                answers.append({"text": " ".join(w), "score": float(4 - k)})
            f.write(json.dumps({"prompt": " ".join(rng.choice(words) for _ in range(4)), "responses": answers}) + "\n")
    # DPO + NLL on the chosen answer (rpo_alpha): 40 updates move this random tiny model's samples.
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", data={"path": str(data), "format": "ranked"},
                      curriculum={"schedule": "single-pass"}, loss={"rpo_alpha": 1.0},
                      optim={"lr": 1e-2, "batch_size": 12, "total_updates": 40})
    loop.train(cfg)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"the dog {w}"}) + "\n" for w in words))
    out = tmp_path / "ev"
    assert main(["eval", str(tmp_path / "run" / "final"), "--reference", tiny_model_dir, "--data", str(data),
                 "--prompts", str(prompts), "--judge", f"gold:{__name__}:good_fraction", "--baseline", tiny_model_dir,
                 "--max-new-tokens", "8", "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "eval.json").read_text())
    pref = m["preference"]
    assert pref["n"] == 36 and pref["rewards/margins"] > 1.0 and pref["rewards/accuracies"] > 0.9  # training pairs
    assert m["win_rate"]["ci_low"] > 0.6  # the gold judge prefers the trained model's answers, CI clear of 0.5
    assert m["judge_score"] > m["win_rate"]["mean_score_baseline"]
    assert m["kl"] > 1.0  # it moved away from the SFT model


def test_eval_needs_something_to_do(tiny_model_dir, capsys):
    assert main(["eval", tiny_model_dir]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_eval_without_reference_gives_the_reference_free_ranking_accuracies(tiny_model_dir, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recs = make_records(8, seed=3)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": r.prompt, "responses": [{"text": x.text, "score": x.score}
                                                                          for x in r.responses]}) + "\n"
                            for r in recs))
    out = tmp_path / "ev"
    assert main(["eval", tiny_model_dir, "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    m = json.loads((out / "eval.json").read_text())["preference"]
    assert "rewards/accuracies" not in m and m["n"] == 24

    # The same accuracies computed by hand: summed log-probs of each response after its chat-formatted prompt.
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)

    def logp(prompt, response):
        user = [{"role": "user", "content": prompt}]
        head = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
        n, ids = len(tok(head, add_special_tokens=False)["input_ids"]), tok(full, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1].double().log_softmax(-1)
        tokens = torch.tensor(ids[1:])
        return logits[torch.arange(len(tokens)), tokens][n - 1:].sum().item(), len(ids) - n

    right, by_rank = [], {}
    for r in recs:
        best, others = logp(r.prompt, r.responses[0].text)[0], r.responses[1:]
        for k, x in enumerate(others):
            ok = best >= logp(r.prompt, x.text)[0]
            right.append(ok)
            by_rank.setdefault(k + 2, []).append(ok)  # scores 4..1: responses[1] is rank 2, ... [3] rank 4
    assert 0 < sum(right) < len(right)  # a non-trivial value
    assert m["ranking_accuracy"] == sum(right) / len(right)
    for rank, oks in by_rank.items():
        assert m[f"bucket={rank}/ranking_accuracy"] == sum(oks) / len(oks)
    assert {f"bucket={b}/idealised_ranking_accuracy" for b in (2, 3, 4)} <= set(m)
    assert "ranking acc / normalised / idealised" in capsys.readouterr().out


def test_eval_prompts_with_two_turn_questions_writes_no_one_turn_mt_bench_file(tiny_model_dir, tmp_path, capsys):
    prompts = tmp_path / "q.jsonl"
    prompts.write_text("".join(json.dumps({"question_id": i, "turns": [f"the dog {i}", "and then?"]}) + "\n"
                               for i in range(2)))
    out = tmp_path / "ev"
    assert main(["eval", tiny_model_dir, "--prompts", str(prompts), "--max-new-tokens", "3", "--out", str(out),
                 "--no-progress"]) == 0
    assert (out / "alpaca_eval.json").exists() and not (out / "mt_bench_answers.jsonl").exists()
    assert "use --mt-bench" in capsys.readouterr().err


def test_model_names_of_answer_files():
    from currydpo.cli.eval_cmd import model_name

    assert [model_name(p) for p in ("runs/curry/final", "runs/x/stage-2/", "/tmp/model", "Org/zephyr-7b", "a/b.jsonl",
                                    "final")] == ["curry-final", "x-stage-2", "model", "zephyr-7b", "b", "final"]


def test_eval_out_is_held_by_one_process(tiny_model_dir, tmp_path, capsys):
    import os
    import subprocess
    import sys

    out = tmp_path / "eval-out"
    src = os.path.join(os.path.dirname(__file__), "..", "..", "src")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from currydpo.lifetime import "
                               "hold_output_dir\nwith hold_output_dir(sys.argv[1]):\n print('held', flush=True)\n "
                               "time.sleep(60)", str(out)], env={**os.environ, "PYTHONPATH": os.path.abspath(src)},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["eval", tiny_model_dir, "--data", str(tmp_path / "d.jsonl"), "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == (f"currydpo eval: error: {out} is in use by another currydpo "
                                                   f"process (PID {holder.pid}); wait for it to finish, or write to "
                                                   f"another directory")
    finally:
        holder.kill()
        holder.wait()
