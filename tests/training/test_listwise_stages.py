"""Listwise training: a stage's ranked lists keep the schedule's difficulty order."""

import random

import pytest

from currydpo.training.setup import setup

from conftest import make_records, tiny_config


@pytest.mark.parametrize("schedule, descending", [("anti", True), ("cyclical", False), ("single-pass", False)])
def test_listwise_stages_keep_their_schedule_order_with_shuffling_auto(schedule, descending, tmp_path,
                                                                       tiny_model_dir):
    """``shuffle_within_stage: auto`` (the default) means "no shuffling" outside iterative: listwise stages of
    anti / cyclical / single-pass are sorted by difficulty (anti hard first). The raw "auto" string used to
    reach the list builder, where it is truthy, and every such stage stayed unsorted."""
    recs = make_records(n_prompts=16, n_responses=4)
    rng = random.Random(0)
    for r in recs:  # uneven score gaps: lists differ in difficulty
        for j, x in enumerate(r.responses):
            x.score = float(4 - j) * rng.uniform(0.2, 2.0)
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", loss={"name": "plackett-luce"},
                      curriculum={"schedule": schedule, "stages": 2})
    assert cfg.curriculum.shuffle_within_stage == "auto"
    run = setup(cfg, recs)
    for stage in run.stages:
        d = [run.objective.lists[i].difficulty["score-gap"] for i in stage.pairs]
        assert d == sorted(d, reverse=descending) and len(set(d)) > 1
