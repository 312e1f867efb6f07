import json

import pytest
import torch

from currydpo.errors import CurryError
from currydpo.evaluation.judges import (
    JUDGE_USER_TEMPLATE,
    GoldJudge,
    Judge,
    OpenAIJudge,
    make_judge,
    parse_verdict,
    retry_after_seconds,
)
from currydpo.evaluation.winrate import win_rate_report

from http_judge_server import JudgeServer

FAST = dict(max_attempts=3, backoff_s=0.001, max_backoff_s=0.01, timeout_s=5.0, concurrency=3)

PROMPTS = ["q1", "q2", "q3", "q4", "q5"]
CAND = ["long answer", "longer answer here", "x", "same", "a much longer answer"]
BASE = ["short", "short", "longer one", "emas", "tiny"]
# longer wins: win, win, loss, tie (equal length), win
EXPECTED = [1.0, 1.0, 0.0, 0.5, 1.0]


def length_reward(prompt: str, response: str) -> float:
    return float(len(response))


# ------------------------------------------------------------------------ spec parsing


def test_unknown_spec_lists_valid_forms():
    for bad in ["gpt4", "foo:bar", "openai:", "gold:"]:
        with pytest.raises(CurryError, match="valid forms|gold:MODULE"):
            make_judge(bad)


def test_openai_spec_needs_http_url():
    with pytest.raises(CurryError, match="http://"):
        make_judge("openai:localhost:8000#m")


def test_gold_judge_from_module_and_file(tmp_path):
    j = make_judge(f"gold:{__name__}:length_reward", tie_tolerance=0.0)
    assert isinstance(j, GoldJudge) and isinstance(j, Judge)
    assert j.score(["p", "p"], ["ab", "abcd"]) == [2.0, 4.0]
    assert j.compare(PROMPTS, CAND, BASE) == EXPECTED
    f = tmp_path / "myreward.py"
    f.write_text("def r(prompt, response):\n    return -len(response)\n")
    j2 = make_judge(f"gold:{f}:r")
    assert j2.compare(["p"], ["a"], ["bb"]) == [1.0]
    with pytest.raises(CurryError, match="no function"):
        make_judge(f"gold:{__name__}:nope")
    with pytest.raises(CurryError, match="cannot import"):
        make_judge("gold:no_such_module_xyz:f")


def test_pointwise_tie_tolerance():
    j = GoldJudge(length_reward, "gold:x", tie_tolerance=1.0)
    assert j.compare(["p"] * 3, ["abc", "abc", "abcdef"], ["ab", "abcde", "a"]) == [0.5, 0.0, 1.0]


def test_parse_verdict_takes_last_tag():
    assert parse_verdict("[[A]] ... on reflection [[B]]") == "B"
    assert parse_verdict("tie: [[C]]") == "C"
    assert parse_verdict("no verdict [A]") is None


# ------------------------------------------------------------------------ reward model


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_dir):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg)
    path = tmp_path_factory.mktemp("rm") / "rm"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_reward_model_judge_batched_equals_single(reward_model_dir):
    j = make_judge(f"reward-model:{reward_model_dir}", batch_size=3)
    responses = ["the cat sat", "a", "hello, how are you today? i am fine", "the dog ran in the park", "four"]
    batched = j.score(PROMPTS, responses)
    single = [j.score([p], [r])[0] for p, r in zip(PROMPTS, responses)]
    assert len(batched) == 5 and len(set(batched)) > 1
    assert batched == pytest.approx(single, abs=1e-5)
    # the chat template is used: the score equals a direct forward pass on the templated text
    text = j.tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]},
                                            {"role": "assistant", "content": responses[0]}], tokenize=False)
    ids = j.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        direct = j.model(input_ids=ids).logits[0, 0].item()
    assert batched[0] == pytest.approx(direct, abs=1e-5)
    rep = win_rate_report(j, PROMPTS, responses, BASE, seed=0)
    assert {"mean_score_candidate", "mean_score_baseline"} <= set(rep) and rep["n"] == 5


def test_reward_model_bad_path(tmp_path):
    with pytest.raises(CurryError, match="cannot load"):
        make_judge(f"reward-model:{tmp_path / 'missing'}")


# ------------------------------------------------------------------------ OpenAI-compatible


def test_openai_judge_longer_wins_both_orders(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with JudgeServer("longer") as srv:
        j = make_judge(f"openai:{srv.url}#judge-model", **FAST)
        out = j.compare(PROMPTS, CAND, BASE)
        assert out == EXPECTED
        assert srv.received == 2 * len(PROMPTS)  # every comparison asked in both orders
        assert {b["model"] for b in srv.bodies} == {"judge-model"}
        assert set(srv.auth) == {"Bearer sk-test"}
        users = [b["messages"][-1]["content"] for b in srv.bodies]
        assert JUDGE_USER_TEMPLATE.format(question="q1", answer_a=CAND[0], answer_b=BASE[0]) in users
        assert JUDGE_USER_TEMPLATE.format(question="q1", answer_a=BASE[0], answer_b=CAND[0]) in users
        assert j.stats["inconsistent"] == 0 and j.stats["unparseable"] == 0


def test_openai_judge_position_bias_gives_ties():
    with JudgeServer("always_a") as srv:
        j = make_judge(f"openai:{srv.url}#m", **FAST)
        assert j.compare(PROMPTS, CAND, BASE) == [0.5] * 5
        assert j.stats["inconsistent"] == 5


@pytest.mark.parametrize("kind", ["500", "drop"])
def test_openai_judge_retries_transient_failures(kind):
    with JudgeServer("longer", fail_first=4, fail_kind=kind) as srv:
        j = make_judge(f"openai:{srv.url}#m", **{**FAST, "max_attempts": 5, "concurrency": 1})
        assert j.compare(PROMPTS, CAND, BASE) == EXPECTED
        assert srv.received == 2 * len(PROMPTS) + 4
        assert j.stats["retries"] == 4


def test_openai_judge_gives_up_with_curry_error(tmp_path):
    with JudgeServer("longer", fail_first=10**6) as srv:
        j = make_judge(f"openai:{srv.url}#m", cache_dir=tmp_path, **FAST)
        with pytest.raises(CurryError, match="failed 3 times"):
            j.compare(PROMPTS[:1], CAND[:1], BASE[:1])


def test_openai_judge_client_error_is_not_retried():
    with JudgeServer("longer") as srv:
        j = OpenAIJudge(srv.url.replace("/v1", "/wrong"), "m", **FAST)
        with pytest.raises(CurryError, match="HTTP 404"):
            j.compare(["q"], ["a"], ["b"])
        assert srv.received <= 2 and j.stats["retries"] == 0  # at most the two orders, never retried


@pytest.mark.parametrize("mode", ["garbage", "no_verdict"])
def test_openai_judge_unparseable_is_a_counted_abstention_never_cached(tmp_path, mode):
    with JudgeServer(mode) as srv:
        j = make_judge(f"openai:{srv.url}#m", cache_dir=tmp_path, **FAST)
        assert j.compare(PROMPTS[:1], CAND[:1], BASE[:1]) == [None]  # not a tie
        with pytest.raises(CurryError, match="no readable verdict on any of the 2 comparisons"):
            win_rate_report(j, PROMPTS[:2], CAND[:2], BASE[:2])
        assert j.stats["unparseable"] == 2 + 4  # per order
        assert srv.received == 6 * FAST["max_attempts"]  # each retried, then given up
        assert not (tmp_path / "judge_verdicts.jsonl").exists() or not (tmp_path / "judge_verdicts.jsonl").read_text()
        # fixed endpoint: the same cache asks again and gets real verdicts
        srv.mode = "longer"
        j2 = make_judge(f"openai:{srv.url}#m", cache_dir=tmp_path, **FAST)
        rep = win_rate_report(j2, PROMPTS[:2], CAND[:2], BASE[:2])
        assert rep["win_rate"] == 1.0 and rep["abstained"] == 0 and j2.stats["cached"] == 0


def test_openai_judge_partly_unparseable_abstentions_counted_apart():
    def reply(req):  # no verdict for q2, "longer wins" otherwise
        content = req["messages"][-1]["content"]
        return "hmm" if "q2" in content else JudgeServer().decide(content)

    with JudgeServer(reply=reply) as srv:
        j = make_judge(f"openai:{srv.url}#m", **FAST)
        rep = win_rate_report(j, PROMPTS, CAND, BASE)
        assert srv.received > 0
    judged = [e for i, e in enumerate(EXPECTED) if i != 1]
    assert rep["abstained"] == 1 and rep["n"] == 4
    assert rep["win_rate"] == pytest.approx(sum(judged) / 4)
    assert (rep["wins"], rep["ties"], rep["losses"]) == (2, 1, 1)


def test_openai_judge_honours_retry_after_on_429():
    with JudgeServer("longer", fail_first=1, fail_kind="429", retry_after="1") as srv:
        j = make_judge(f"openai:{srv.url}#m", **{**FAST, "concurrency": 1})  # back-off cap 0.01 s: not used
        assert j.compare(PROMPTS[:1], CAND[:1], BASE[:1]) == EXPECTED[:1]
        assert srv.received == 3 and j.stats["retries"] == 1
        assert srv.arrivals[1] - srv.arrivals[0] >= 0.9  # waited what the server asked, not the back-off
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and retry_after_seconds("2.5") == 2.5
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_openai_judge_retries_timeouts_then_one_line_error():
    with JudgeServer("longer", fail_first=1, fail_kind="slow", delay=1.0) as srv:
        j = make_judge(f"openai:{srv.url}#m", **{**FAST, "timeout_s": 0.3, "concurrency": 1})
        assert j.compare(PROMPTS[:1], CAND[:1], BASE[:1]) == EXPECTED[:1]
        assert j.stats["retries"] == 1
    with JudgeServer("longer", fail_first=10**6, fail_kind="slow", delay=1.0) as srv:
        j = make_judge(f"openai:{srv.url}#m", **{**FAST, "timeout_s": 0.2, "concurrency": 1})
        with pytest.raises(CurryError, match=r"failed 3 times \(last: .*timed out") as e:
            j.compare(PROMPTS[:1], CAND[:1], BASE[:1])
        assert "\n" not in str(e.value)


def test_openai_judge_cache_second_run_is_free(tmp_path):
    with JudgeServer("longer") as srv:
        j = make_judge(f"openai:{srv.url}#m", cache_dir=tmp_path, **FAST)
        assert j.compare(PROMPTS, CAND, BASE) == EXPECTED
        assert srv.received == 10
    lines = (tmp_path / "judge_verdicts.jsonl").read_text().splitlines()
    assert len(lines) == 10 and all(len(json.loads(x)["key"]) == 64 for x in lines)
    with JudgeServer("longer") as srv2:  # a new server on another port: same model name, same cache
        j2 = make_judge(f"openai:{srv2.url}#m", cache_dir=tmp_path, **FAST)
        assert j2.compare(PROMPTS, CAND, BASE) == EXPECTED
        assert srv2.received == 0 and j2.stats["cached"] == 10
        # another judge model does not reuse those verdicts
        j3 = make_judge(f"openai:{srv2.url}#other", cache_dir=tmp_path, **FAST)
        j3.compare(PROMPTS[:1], CAND[:1], BASE[:1])
        assert srv2.received == 2


def test_openai_judge_interrupted_run_resumes(tmp_path):
    prompts = [f"q{i}" for i in range(8)]
    cand = ["x" * (i + 2) for i in range(8)]
    base = ["y" * (8 - i) for i in range(8)]
    with JudgeServer("longer", die_after=5) as srv:
        j = make_judge(f"openai:{srv.url}#m", cache_dir=tmp_path, **FAST)
        with pytest.raises(CurryError, match="re-run to resume"):
            j.compare(prompts, cand, base)
        paid = srv.answered
        assert 5 <= paid < 16
    # simulate a torn last line from a kill mid-write: it must be skipped, not crash
    with open(tmp_path / "judge_verdicts.jsonl", "a") as f:
        f.write('{"key": "abc", "verd')
    with JudgeServer("longer") as srv2:
        j2 = make_judge(f"openai:{srv2.url}#m", cache_dir=tmp_path, **FAST)
        out = j2.compare(prompts, cand, base)
        assert srv2.answered == 16 - paid
        j3 = make_judge(f"openai:{srv2.url}#m", cache_dir=tmp_path, **FAST)
        assert j3.compare(prompts, cand, base) == out and srv2.answered == 16 - paid
    expected = [1.0 if len(c) > len(b) else 0.0 if len(c) < len(b) else 0.5 for c, b in zip(cand, base)]
    assert out == expected
