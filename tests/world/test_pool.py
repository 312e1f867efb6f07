"""The world's response pool: distinct writers per prompt, graded quality by the gold reward, UF layout."""

import json
import random
import statistics

import pytest

from currydpo.world import build as B
from currydpo.world import language as L
from currydpo.world.pool import POOL, Writer, assign_writers, write_answers


def test_each_prompt_gets_distinct_writers_and_every_writer_is_used():
    assignment = assign_writers(400, 4, random.Random(0))
    assert all(len({w.name for w in ws}) == 4 for ws in assignment)
    counts = {w.name: sum(w in ws for ws in assignment) for w in POOL}
    # uniform draws of 4 of 8: each member writes about half the prompts
    assert all(150 < n < 250 for n in counts.values()), counts
    assert assignment == assign_writers(400, 4, random.Random(0))  # seeded
    with pytest.raises(ValueError, match="at least"):
        assign_writers(1, len(POOL) + 1, random.Random(0))


def test_rule_writers_are_graded_by_the_gold_reward():
    prompts = L.sample_prompts(300, random.Random(1))
    rules = [w for w in POOL if w.is_rules]
    assignment = [rules for _ in prompts]
    answers = write_answers(prompts, assignment, {}, seed=0, max_new_tokens=8, batch_size=8, sample=None)
    gold = [statistics.mean(L.gold_reward(p, a[j]) for p, a in zip(prompts, answers)) for j in range(len(rules))]
    qualities = [w.quality for w in rules]
    assert qualities == sorted(qualities, reverse=True)
    # higher quality, higher mean gold reward, each step clearly apart
    assert all(a > b + 0.05 for a, b in zip(gold, gold[1:])), gold
    assert gold[0] > 0.75 and gold[-1] < 0.4


def test_sft_writers_use_their_checkpoint_and_temperature():
    calls = []

    def fake_sample(model, tokenizer, prompts, *, n_responses, seed, temperature, **kw):
        calls.append((model, temperature, seed, len(prompts)))
        return [[f"{model} {temperature} {p}"] for p in prompts]

    a, b = Writer("a", temperature=0.5), Writer("b", checkpoint="early", temperature=1.5)
    prompts = ["list two fruits.", "add one and two."]
    answers = write_answers(prompts, [[a, b], [b, a]], {"final": ("F", None), "early": ("E", None)}, seed=3,
                            max_new_tokens=8, batch_size=8, sample=fake_sample)
    assert answers == [["F 0.5 list two fruits.", "E 1.5 list two fruits."],
                       ["E 1.5 add one and two.", "F 0.5 add one and two."]]
    assert len({c[2] for c in calls}) == 2  # each member samples with its own seed


def test_pool_world_grades_writers_and_self_world_is_on_policy(tmp_path):
    tiny = dict(quick=True, sft_steps=30, n_sft_examples=300, n_train_prompts=24, n_eval_prompts=4, progress=False)
    pool = B.build_world(str(tmp_path), seed=5, **tiny)
    selfish = B.build_world(str(tmp_path), seed=5, responses="self", **tiny)
    assert pool.root != selfish.root
    meta_pool, meta_self = (json.loads(w.meta.read_text()) for w in (pool, selfish))
    assert (meta_pool["responses"], meta_self["responses"]) == ("pool", "self")
    # the SFT model is the same in both regimes; only who writes the answers differs
    assert meta_pool["sft"]["loss_final"] == meta_self["sft"]["loss_final"]
    assert list(meta_self["data"]["writer_gold_mean"]) == ["sft"]
    by_writer = meta_pool["data"]["writer_gold_mean"]
    assert set(by_writer) <= {w.name for w in POOL} and len(by_writer) >= 6
    assert by_writer["rules-q0.9"] > by_writer["rules-q0.3"] + 0.2
    rows = [json.loads(line) for line in selfish.train_data.read_text().splitlines()]
    assert {c["model"] for r in rows for c in r["completions"]} == {"sft"}
