"""MT-bench single-answer grading: what the judge is sent, the rating rule, abstentions, the cache, eval --mt-bench."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from currydpo.cli import main
from currydpo.errors import CurryError
from currydpo.evaluation.grading_prompt import grading_messages, parse_rating
from currydpo.evaluation.mt_bench import SingleGrader, load_references, missing_references, summarise
from currydpo.generation.generate import Prompt

from conftest import SHARED_DATA
from http_judge_server import JudgeServer

FAST = dict(max_attempts=3, backoff_s=0.001, max_backoff_s=0.01, timeout_s=5.0)


def test_parse_rating_rule():
    assert parse_rating("quoting the scale [[1]] to [[10]] ... Rating: [[7]]") == 7.0
    assert parse_rating("Rating: [[ 8.5 ]]") == 8.5
    assert parse_rating("Rating: [[11]]") is None and parse_rating("Rating: [[0]]") is None  # asked again
    assert parse_rating("Rating: 7") is None and parse_rating("[[A]]") is None and parse_rating("") is None


def test_grading_messages_show_the_conversation_and_references():
    msgs = grading_messages(["q1", "q2"], ["a1", "a2"], ["r1", "r2"])
    assert msgs[0]["role"] == "system" and "[[5]]" in msgs[0]["content"]
    user = msgs[1]["content"]
    assert [user.index(x) for x in ("q1", "a1", "q2", "a2", "r1", "r2")] == sorted(
        user.index(x) for x in ("q1", "a1", "q2", "a2", "r1", "r2"))
    assert "turn 2" in user.splitlines()[-1]
    assert "reference" not in grading_messages(["q1"], ["a1"], None)[1]["content"]


def ratings_by_text(table):
    """A server reply function: the rating of the turn graded, looked up by (first user turn, turn graded)."""
    def reply(req):
        content = req["messages"][-1]["content"]
        turn = len(re.findall(r"<<assistant, turn \d+>>", content))
        for (q, t), rating in table.items():
            if q in content and t == turn:
                return "reasons ... Rating: [[%s]]" % rating if rating is not None else "no rating here, sorry"
        raise AssertionError(f"unexpected grading request: {content[:200]}")
    return reply


QS = [Prompt(1, "add 2 and 3", turns=["add 2 and 3", "now times 4"], category="math"),
      Prompt(2, "write a poem", turns=["write a poem", "shorter please"], category="writing"),
      Prompt(3, "be a pirate", turns=["be a pirate", "say more"], category="roleplay")]
ANSWERS = [["5", "20"], ["roses are red", "roses"], ["arr", "arr arr"]]
REFS = {1: ["2 + 3 = 5", "5 * 4 = 20"]}


def test_grader_abstentions_are_counted_never_cached_and_asked_again(tmp_path):
    table = {("add 2", 1): 2, ("add 2", 2): 4, ("write a poem", 1): 8, ("write a poem", 2): 9,
             ("be a pirate", 1): None, ("be a pirate", 2): 6}
    with JudgeServer(reply=ratings_by_text(table)) as srv:
        g = SingleGrader(f"openai:{srv.url}#judge", cache_dir=tmp_path, concurrency=2, **FAST)
        ratings = g.grade(QS, ANSWERS, REFS)
        assert ratings == [[2, 4], [8, 9], [None, 6]]
        assert srv.received == 5 + FAST["max_attempts"] and g.stats["unparseable"] == 1
        s = summarise(QS, ratings)
        assert s["abstained"] == 1 and s["n_ratings"] == 5 and s["n_questions"] == 3
        assert s["score"] == pytest.approx((2 + 4 + 8 + 9 + 6) / 5) and s["turn_1"] == pytest.approx(5.0)
        assert s["categories"] == {"math": 3.0, "writing": 8.5, "roleplay": 6.0}
        assert 1.0 <= s["score_ci"][0] <= s["score"] <= s["score_ci"][1] <= 10.0
        # the judge is fixed: a new grader on the same cache asks for the abstained turn only
        table[("be a pirate", 1)] = 3
        before = srv.received
        g2 = SingleGrader(f"openai:{srv.url}#judge", cache_dir=tmp_path, **FAST)
        assert g2.grade(QS, ANSWERS, REFS) == [[2, 4], [8, 9], [3, 6]]
        assert srv.received == before + 1 and g2.stats["cached"] == 5
    with pytest.raises(CurryError, match="no readable rating for any of the 2 turns"):
        summarise(QS[:1], [[None, None]])


def test_judge_prompt_file_swaps_the_prompt_and_the_rating_rule(tmp_path):
    f = tmp_path / "my_prompt.py"
    f.write_text("def grading_messages(turns, answers, references):\n"
                 "    return [{'role': 'user', 'content': 'MINE ' + turns[-1] + ' / ' + answers[-1]}]\n\n"
                 "def parse_rating(text):\n"
                 "    return float(text.split('score=')[1]) if 'score=' in text else None\n")
    with JudgeServer(reply=lambda req: "score=" + str(len(req["messages"][0]["content"]) % 9 + 1)) as srv:
        g = SingleGrader(f"openai:{srv.url}#judge", prompt_file=str(f), **FAST)
        got = g.grade(QS[:1], ANSWERS[:1], REFS)
        sent = sorted(b["messages"][0]["content"] for b in srv.bodies)  # the two turns are graded concurrently
        assert sent == ["MINE add 2 and 3 / 5", "MINE now times 4 / 20"] and all(len(b["messages"]) == 1
                                                                                 for b in srv.bodies)
    assert got == [[len("MINE add 2 and 3 / 5") % 9 + 1, len("MINE now times 4 / 20") % 9 + 1]]
    with pytest.raises(CurryError, match="has no function 'parse_rating'"):
        (tmp_path / "half.py").write_text("def grading_messages(t, a, r):\n    return []\n")
        SingleGrader("openai:http://127.0.0.1:1/v1#j", prompt_file=str(tmp_path / "half.py"))


def test_references_and_missing_references(tmp_path):
    f = tmp_path / "ref.jsonl"
    f.write_text(json.dumps({"question_id": 1, "choices": [{"index": 0, "turns": ["r1", "r2"]}]}) + "\n"
                 + json.dumps({"question_id": 2, "choices": []}) + "\n")
    with pytest.raises(CurryError, match="ref.jsonl row 2: not a FastChat answer row"):
        load_references(f)
    assert missing_references(QS, {}) == [1] and missing_references(QS, REFS) == []


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED_DATA, "mt_bench")), reason="shared data absent")
def test_real_reference_file_covers_the_real_math_reasoning_coding_questions():
    from currydpo.evaluation.mt_bench import default_reference_path
    from currydpo.generation.generate import load_prompts

    q = os.path.join(SHARED_DATA, "mt_bench", "question.jsonl")
    refs = load_references(default_reference_path(q))
    assert len(refs) == 30 and missing_references(load_prompts(q), refs) == []


def write_questions(d):
    """Two two-turn questions in FastChat's layout, with FastChat's reference_answer/gpt-4.jsonl beside them."""
    os.makedirs(d / "reference_answer")
    rows = [{"question_id": 101, "category": "math", "turns": ["What is 2 plus 3?", "And that times 4?"]},
            {"question_id": 81, "category": "writing", "turns": ["Write a haiku on the sea.", "Now on the sky."]}]
    (d / "question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ref = {"question_id": 101, "answer_id": "x", "model_id": "gpt-4",
           "choices": [{"index": 0, "turns": ["REF-ONE: 2 + 3 = 5.", "REF-TWO: 5 * 4 = 20."]}]}
    (d / "reference_answer" / "gpt-4.jsonl").write_text(json.dumps(ref) + "\n")
    return d / "question.jsonl"


@pytest.fixture(scope="module")
def talkative_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with no special-token argmax and larger weights, so its answers are never empty."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight[:8] = 0
        for p in model.parameters():
            p.mul_(3)
    path = tmp_path_factory.mktemp("talkative") / "model"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def test_eval_mt_bench_two_turns_end_to_end(tmp_path, talkative_model_dir):
    tiny_model_dir = talkative_model_dir
    questions = write_questions(tmp_path)
    table = {("2 plus 3", 1): 2, ("2 plus 3", 2): 4, ("haiku", 1): 8, ("haiku", 2): 9}
    baseline = tmp_path / "other-model.jsonl"
    baseline.write_text("".join(json.dumps({"question_id": q, "choices": [{"index": 0, "turns": [f"b{q}1", f"b{q}2"]}]})
                                + "\n" for q in (101, 81)))
    out = tmp_path / "out"
    with JudgeServer(reply=ratings_by_text(table)) as srv:
        code = main(["eval", str(tiny_model_dir), "--mt-bench", str(questions), "--judge", f"openai:{srv.url}#judge",
                     "--baseline", str(baseline), "--max-new-tokens", "6", "--out", str(out), "--no-progress"])
        assert code == 0
        bodies = [b["messages"][-1]["content"] for b in srv.bodies]
        first = (out / "mt_bench.json").read_text()
        # the same command again: the same answers (seeded), every rating from the cache, nothing asked
        assert main(["eval", str(tiny_model_dir), "--mt-bench", str(questions), "--judge", f"openai:{srv.url}#judge",
                     "--baseline", str(baseline), "--max-new-tokens", "6", "--out", str(out), "--no-progress"]) == 0
        assert srv.received == 8 and json.loads((out / "mt_bench.json").read_text()) == json.loads(first)
    res = json.loads((out / "mt_bench.json").read_text())
    assert {"score", "turn_1", "turn_2", "categories", "n_questions"} <= set(res)
    assert res["score"] == pytest.approx(5.75) and res["turn_1"] == pytest.approx(5.0)
    assert res["turn_2"] == pytest.approx(6.5) and res["n_questions"] == 2 and res["abstained"] == 0
    assert res["categories"] == {"math": 3.0, "writing": 8.5}
    assert set(res["models"]) == {"model", "other-model"}
    # what the judge was sent: both turns, the reference answers for the math question, turn 2 after turn 1
    answers = {json.loads(x)["question_id"]: json.loads(x)["choices"][0]["turns"]
               for x in (out / "model_answer" / "model.jsonl").read_text().splitlines()}
    assert all(len(t) == 2 and all(t) for t in answers.values())
    mine = [b for b in bodies if "b1011" not in b and "b811" not in b]  # our model's four requests
    assert len(mine) == 4 and len(bodies) == 8
    math2 = next(b for b in mine if "2 plus 3" in b and "<<assistant, turn 2>>" in b)
    assert "REF-ONE" in math2 and "REF-TWO" in math2 and "And that times 4?" in math2
    assert math2.index("What is 2 plus 3?") < math2.index(answers[101][0]) < math2.index("And that times 4?")
    math1 = next(b for b in mine if "2 plus 3" in b and "<<assistant, turn 2>>" not in b)
    assert "REF-ONE" in math1 and "REF-TWO" not in math1 and "And that times 4?" not in math1
    assert not any("REF-" in b for b in mine if "haiku" in b)  # writing: no reference
    assert "Now on the sky." in next(b for b in mine if "haiku" in b and "<<assistant, turn 2>>" in b)
    md = (out / "eval.md").read_text()
    assert "## MT-bench" in md and "| model | 5.75 (" in md and "| other-model |" in md
    assert (out / "mt_bench_categories.png").stat().st_size > 1000
    other = [json.loads(x) for x in (out / "model_answer" / "other-model.jsonl").read_text().splitlines()]
    assert other[0]["choices"][0]["turns"] == ["b1011", "b1012"]


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED_DATA, "mt_bench")), reason="shared data absent")
def test_eval_mt_bench_on_the_real_80_questions(tmp_path, talkative_model_dir):
    """The README's command on FastChat's question.jsonl; its flat reference file beside it is found."""
    def reply(req):  # 1 or 2 (by the parity of the request's length) times the turn graded
        content = req["messages"][-1]["content"]
        turn = len(re.findall(r"<<assistant, turn \d+>>", content))
        return f"Rating: [[{(1 + (len(content) % 2)) * turn}]]"

    out = tmp_path / "out"
    with JudgeServer(reply=reply) as srv:
        assert main(["eval", str(talkative_model_dir), "--mt-bench", os.path.join(SHARED_DATA, "mt_bench",
                     "question.jsonl"), "--judge", f"openai:{srv.url}#judge", "--max-new-tokens", "3",
                     "--batch-size", "40", "--out", str(out), "--no-progress"]) == 0
        with_ref = [b for b in srv.bodies if "<<reference answer, turn 1>>" in b["messages"][-1]["content"]]
    res = json.loads((out / "mt_bench.json").read_text())
    assert res["n_questions"] == 80 and res["n_ratings"] == 160 and len(res["categories"]) == 8
    assert len(with_ref) == 60  # 30 math/reasoning/coding questions x 2 turns
    assert 1.0 <= res["turn_1"] <= 2.0 and 2.0 <= res["turn_2"] <= 4.0
    rows = [json.loads(x) for x in (out / "model_answer" / "model.jsonl").read_text().splitlines()]
    assert len(rows) == 80 and all(len(r["choices"][0]["turns"]) == 2 for r in rows)


def test_eval_mt_bench_needs_an_openai_judge(tmp_path, tiny_model_dir, capsys):
    questions = write_questions(tmp_path)
    assert main(["eval", str(tiny_model_dir), "--mt-bench", str(questions), "--out", str(tmp_path / "o")]) == 2
    assert "--judge openai:URL#MODEL" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), "--mt-bench", str(questions), "--judge", "openai:http://x/v1#j",
                 "--category-temperature", "writing=hot", "--out", str(tmp_path / "o")]) == 2
    assert "expected CATEGORY=T" in capsys.readouterr().err
    assert main(["eval", str(tiny_model_dir), "--prompts", str(questions), "--baseline", str(questions),
                 "--out", str(tmp_path / "o")]) == 2
    assert "a FastChat answer file is a baseline for --mt-bench" in capsys.readouterr().err


GRADE_SCRIPT = """
import json, sys
from currydpo.generation.generate import Prompt
from currydpo.evaluation.mt_bench import SingleGrader
url, cache = sys.argv[1], sys.argv[2]
qs = [Prompt(i, f"question {i}", turns=[f"question {i}", f"follow-up {i}"], category="writing") for i in range(6)]
g = SingleGrader("openai:" + url + "#judge", cache_dir=cache, concurrency=1, max_attempts=2, backoff_s=0.01)
print(json.dumps(g.grade(qs, [[f"a{i}", f"b{i}"] for i in range(6)])))
"""


def test_killed_grading_run_resumes_without_repeating_a_request(tmp_path):
    def reply(req):
        content = req["messages"][-1]["content"]
        i = int(re.search(r"question (\d)", content).group(1))
        return f"Rating: [[{i + (2 if '<<assistant, turn 2>>' in content else 1)}]]"

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with JudgeServer(reply=reply, hang_after=5) as srv:
        proc = subprocess.Popen([sys.executable, "-c", GRADE_SCRIPT, srv.url, str(tmp_path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while srv.received < 6 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert srv.received == 6 and srv.answered == 5, proc.stderr.read() if proc.poll() is not None else ""
            proc.send_signal(signal.SIGKILL)  # killed while the sixth request waits for the judge
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        srv.hang_after = None
        srv.release.set()
        resumed = subprocess.run([sys.executable, "-c", GRADE_SCRIPT, srv.url, str(tmp_path)], env=env,
                                 capture_output=True, text=True, timeout=60)
        assert resumed.returncode == 0, resumed.stderr
        sent = [json.dumps(b["messages"]) for b in srv.bodies]
    assert json.loads(resumed.stdout) == [[i + 1, i + 2] for i in range(6)]
    assert len(sent) == 12 and len(set(sent)) == 12  # every turn answered by the judge exactly once
