"""The synthetic language: prompts parse, the grammar accepts good answers, the gold reward is graded."""

import random

import pytest

from currydpo.world import language as L
from currydpo.world.language import corpus, gold_components, gold_reward, sample_prompt, sample_response

GOOD = {
    "list three fruits.": "here are three fruits: plum, pear and fig.",
    "describe the red fox in a happy tone.": "the red fox is warm and bright. it looks lovely.",
    "write a negative review of the lamp.": "this lamp is dull and weak. i do not like it. i would not buy it again.",
    "what is three plus four?": "three plus four is seven.",
}


@pytest.mark.parametrize("prompt,answer", GOOD.items())
def test_good_answers_score_one(prompt, answer):
    assert L.parse_prompt(prompt)[0] != "unknown"
    assert gold_reward(prompt, answer) == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in gold_components(prompt, answer).values())


@pytest.mark.parametrize("prompt,answer", GOOD.items())
def test_degenerate_answers_score_lower(prompt, answer):
    good = gold_reward(prompt, answer)
    other = [p for p in GOOD if p != prompt][0]
    degenerate = {
        "empty": "",
        "repetitive": " ".join([answer] * 5),
        "off-topic": GOOD[other],
        "truncated": answer[: len(answer) // 2],
        "rambling": answer + " i hope this helps. that is all i can say. it is what it is. let me say it again."
                    " thank you for asking. i think so. i hope this helps.",
        "word salad": "fox fox fox fox fox fox fox fox",
    }
    for kind, text in degenerate.items():
        assert gold_reward(prompt, text) < good - 0.2, kind
    assert gold_reward(prompt, "") == 0.0
    assert gold_reward(prompt, GOOD[other]) == 0.0


def test_reward_is_graded():
    p = "list four tools."
    scores = [gold_reward(p, "here are four tools: saw."),
              gold_reward(p, "here are four tools: saw and rope."),
              gold_reward(p, "here are four tools: saw, rope and drill."),
              gold_reward(p, "here are four tools: saw, rope, drill and knife.")]
    assert scores == sorted(scores) and len(set(scores)) == 4
    m = "what is six plus seven?"
    assert gold_reward(m, "six plus seven is thirteen.") > gold_reward(m, "six plus seven is twelve.") \
        > gold_reward(m, "six plus seven is two.")
    d = "describe the red fox in a happy tone."
    assert gold_reward(d, "the red fox is warm and bright. it looks lovely.") \
        > gold_reward(d, "the red fox is warm and grim. it looks lovely.") \
        > gold_reward(d, "the red fox is cold and grim. it looks ugly.")


def test_longer_is_not_better():
    p = "describe the red fox in a happy tone."
    base = "the red fox is warm and bright. it looks lovely."
    fillers = L.FILLERS
    scores = [gold_reward(p, " ".join([base] + fillers[:k])) for k in range(len(fillers) + 1)]
    assert scores[0] == 1.0 and scores[-1] < 0.8
    assert all(a >= b for a, b in zip(scores, scores[1:]))


def test_grammar():
    assert L.is_grammatical("three plus four is seven")
    assert L.is_grammatical("here are two fruits: plum and fig")
    assert not L.is_grammatical("three three plus four is seven")
    assert not L.is_grammatical("the red fox is warm and")


def test_samplers_are_seeded_and_in_range():
    def draw(seed):
        rng = random.Random(seed)
        out = []
        for _ in range(300):
            p = sample_prompt(rng)
            q = rng.random()
            r = sample_response(p, rng, q)
            out.append((p, r, gold_reward(p, r)))
        return out

    a, b = draw(3), draw(3)
    assert a == b and a != draw(4)
    assert all(0.0 <= g <= 1.0 for _, _, g in a)
    assert all(L.parse_prompt(p)[0] != "unknown" for p, _, _ in a)
    assert all(gold_reward(p, r) == g for p, r, g in a)  # deterministic


def test_quality_controls_the_reward():
    rng = random.Random(0)

    def mean_gold(q):
        gs = []
        for _ in range(400):
            p = sample_prompt(rng)
            gs.append(gold_reward(p, sample_response(p, rng, q)))
        return sum(gs) / len(gs)

    low, mid, high = mean_gold(0.0), mean_gold(0.5), mean_gold(1.0)
    assert low < mid < high == 1.0
    assert low < 0.3


def test_prompt_sampling_distinct_and_corpus():
    rng = random.Random(0)
    held = set(L.sample_prompts(50, rng))
    rest = L.sample_prompts(200, rng, exclude=held)
    assert len(set(rest)) == 200 and not held & set(rest)
    with pytest.raises(ValueError):
        L.sample_prompts(L.prompt_space_size() + 1, random.Random(0))
    c = corpus(50, 0)
    assert len(c) == 51 and c == corpus(50, 0)
    words = {w for line in c for w in line.replace(".", " ").replace(",", " ").replace(":", " ").split()}
    assert len(words) < 400
