"""Model-based difficulty measures on tiny saved models, through the trainer."""

import json

from currydpo.training import loop

from conftest import make_records, save_reward_model, tiny_config


def test_reward_margin_orders_single_pass(tiny_model_dir, tmp_path):
    rm = save_reward_model(tiny_model_dir, tmp_path / "rm")
    recs = make_records(6)
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", curriculum={
        "schedule": "single-pass", "difficulty": "reward-margin", "reward_model": rm})
    loop.train(cfg, records=recs)
    log = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    diffs = [e["difficulty"] for e in log][:-1]  # the last update wraps around to the first pairs
    assert len(log) == 5 and diffs == sorted(diffs) and len(set(diffs)) > 1  # easy -> hard by reward margin


def test_ref_logratio_and_dynamic_self_paced(tiny_model_dir, tmp_path):
    recs = make_records(8)
    cfg = tiny_config(tiny_model_dir, tmp_path / "a", curriculum={"schedule": "single-pass",
                                                                  "difficulty": "ref-logratio"})
    loop.train(cfg, records=recs)
    diffs = [json.loads(line)["difficulty"] for line in open(tmp_path / "a" / "metrics.jsonl")][:-1]
    assert diffs == sorted(diffs)
    cfg = tiny_config(tiny_model_dir, tmp_path / "b", curriculum={"schedule": "self-paced", "stages": 2,
                                                                  "difficulty": "dynamic", "self_paced_start": 0.5})
    s = loop.train(cfg, records=recs)
    assert [st["pairs"] for st in s["stages"]] == [12, 24]  # half the 24 pairs admitted, then all


def test_self_paced_with_a_reference_free_loss(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "c", curriculum={"schedule": "self-paced", "stages": 2},
                      loss={"name": "simpo"})
    s = loop.train(cfg, records=make_records(8))
    assert [st["pairs"] for st in s["stages"]] == [12, 24]
