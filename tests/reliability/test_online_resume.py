"""Online stages lose nothing paid for: SIGKILL during sampling, during judging (a real localhost
HTTP judge) and inside a later online stage, resume each time; nothing already written is
re-sampled, nothing already answered is re-asked, and the final weights are bitwise those of
an uninterrupted run (CPU, fp32, one thread)."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from _reliability import env, final_weights, losses, run_until_paused, train_cmd, write_config, write_ranked

from currydpo.api import train
from currydpo.config import load_config

sys.path.insert(0, str(Path(__file__).parents[1] / "evaluation"))
from http_judge_server import JudgeServer  # noqa: E402


def mtimes(d: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted(d.iterdir())}


def verdicts_needed(stage: Path) -> tuple[int, int]:
    """(ordered verdicts an all-pairs judge needs, distinct answers) for one online stage's samples."""
    answers = [a for c in sorted((stage / "samples").iterdir()) for a in json.loads(c.read_text())["answers"]]
    distinct = [len({x for x in a if x.strip()}) for a in answers]
    return sum(n * (n - 1) for n in distinct), sum(distinct)


def test_kills_during_sampling_judging_and_a_later_stage_then_resume(tiny_model_dir, tmp_path):
    data = write_ranked(tmp_path / "data.jsonl", n_prompts=8)
    out, ref_out = tmp_path / "run", tmp_path / "ref"
    with JudgeServer(mode="longer") as srv:
        config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, out, optim={"epochs_per_stage": 1},
                              generation={"batch_size": 4},
                              online={"enabled": True, "samples": 3, "max_new_tokens": 5,
                                      "judge": f"openai:{srv.url}#judge-model"})
        s2, s3 = out / "online" / "stage-2", out / "online" / "stage-3"
        # 1. Killed after the first chunk of stage 2's samples (4 prompts x 3 answers) is written.
        run_until_paused(train_cmd(config), "online-sample:1", tmp_path / "kill1.log")
        assert sorted(p.name for p in (s2 / "samples").iterdir()) == ["chunk-00000.json"]
        first = mtimes(s2 / "samples")
        assert srv.received == 0
        # 2. Resumed, killed in the middle of judging chunk 2: after its first prompt, before its file.
        run_until_paused(train_cmd(config, "--resume"), "online-judge:5", tmp_path / "kill2.log")
        assert mtimes(s2 / "samples")["chunk-00000.json"] == first["chunk-00000.json"]  # not re-sampled
        assert sorted(p.name for p in (s2 / "judged").iterdir()) == ["chunk-00000.json"]
        asked_before = srv.received
        sampled = mtimes(s2 / "samples")
        # 3. Resumed, killed in stage 3 (online too) after its 2nd update: stage 2 is replayed from its files.
        run_until_paused(train_cmd(config, "--resume"), "update:4", tmp_path / "kill3.log")
        assert json.loads((out / "state" / "position.json").read_text())["stage"] == 2
        stage3 = mtimes(s3 / "samples")
        # 4. Resumed to the end.
        done = subprocess.run(train_cmd(config, "--resume"), env=env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "online: 24 samples of 8 prompts, judge mean score" in done.stdout  # stages 2 and 3
        assert mtimes(s2 / "samples") == sampled and mtimes(s3 / "samples") == stage3  # nothing re-sampled
        # Every (prompt, first, second) verdict was asked exactly once over the four processes.
        (need2, judged2), (need3, _) = verdicts_needed(s2), verdicts_needed(s3)
        cache = [json.loads(line) for line in open(out / "online" / "judge-cache" / "judge_verdicts.jsonl")]
        assert srv.received == need2 + need3 == len(cache) == len({c["key"] for c in cache})
        assert asked_before < need2
        asked = srv.received
        # The same run without kills (its own judge cache): the same samples and bitwise the same weights.
        train(load_config(str(config), [f"run.output_dir={ref_out}"]))
        assert srv.received - asked == need2 + need3
    for k in (2, 3):
        for kind in ("samples", "judged"):
            for p in sorted((ref_out / "online" / f"stage-{k}" / kind).iterdir()):
                got = json.loads((out / "online" / f"stage-{k}" / kind / p.name).read_text())
                want = json.loads(p.read_text())
                key = "answers" if kind == "samples" else "scores"
                assert got[key] == want[key], (k, kind, p.name)
    a, b = final_weights(ref_out), final_weights(out)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert losses(out) == losses(ref_out)
    summary = json.loads((out / "summary.json").read_text())["stages"][1]
    calls = summary["online/judge_calls"]
    # The killed prompt's verdicts were paid for in run 2 and came from the cache in run 3.
    assert calls["requests"] + calls["cached"] == need2 and calls["cached"] > 0
    assert summary["online/judge_usage"]["prompt_tokens"] == calls["requests"]  # the server's usage: 1 token each
    assert summary["online/samples"] == 24 and summary["online/judged_answers"] == judged2
    assert 0.0 <= summary["online/judge_mean_score"] <= 1.0  # pairwise: share of comparisons won
