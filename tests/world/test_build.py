"""build_world in a tiny configuration: loadable model, UltraFeedback-layout data, caching, atomicity."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from currydpo.world import build as B
from currydpo.world.language import gold_reward, parse_prompt
from currydpo.world.pool import POOL

TINY = dict(quick=True, sft_steps=40, n_sft_examples=400, n_train_prompts=16, n_eval_prompts=8, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return cache, B.build_world(str(cache), seed=1, **TINY)


def test_layout_and_meta(world):
    cache, w = world
    assert w.root.parent == cache and w.root.name.startswith(f"world-{B.WORLD_VERSION}-pool-1-quick")
    meta = json.loads(w.meta.read_text())
    assert meta["complete"] is True and meta["seed"] == 1 and meta["config"]["sft_steps"] == 40
    assert meta["gold_reward"] == "currydpo.world.language:gold_reward"
    # SFT learns: probe loss clearly below the initial loss
    assert meta["sft"]["loss_final"] < 0.7 * meta["sft"]["loss_initial"]
    assert 0.0 <= meta["data"]["gold_mean"] <= 1.0
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_model_loads_and_generates(world):
    _, w = world
    model = AutoModelForCausalLM.from_pretrained(w.sft_model)
    tok = AutoTokenizer.from_pretrained(w.sft_model)
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    text = tok.apply_chat_template([{"role": "user", "content": "list three fruits."}], tokenize=False,
                                   add_generation_prompt=True)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, max_new_tokens=8, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_ultrafeedback_layout(world):
    _, w = world
    rows = [json.loads(line) for line in w.train_data.read_text().splitlines()]
    assert len(rows) == 16
    pool = {w.name for w in POOL}
    for row in rows:
        assert row["source"] == "currydpo-world" and parse_prompt(row["instruction"])[0] != "unknown"
        # the default regime is the pool: up to 4 answers (empty ones dropped) from distinct writers
        assert isinstance(row["prompt_id"], str) and 2 <= len(row["completions"]) <= 4
        models = [c["model"] for c in row["completions"]]
        assert row["models"] == models and len(set(models)) == len(models) and set(models) <= pool
        for c in row["completions"]:
            assert isinstance(c["response"], str) and c["response"]
            ratings = [c["annotations"][a]["Rating"] for a in
                       ("helpfulness", "honesty", "instruction_following", "truthfulness")]
            assert all(isinstance(r, str) and r in {"1", "2", "3", "4", "5"} for r in ratings)
            assert c["fine-grained_score"] == pytest.approx(sum(map(int, ratings)) / 4)
            assert 0.0 <= gold_reward(row["instruction"], c["response"]) <= 1.0
    assert len({r["prompt_id"] for r in rows}) == 16


def test_eval_prompts_disjoint(world):
    _, w = world
    train = {json.loads(line)["instruction"] for line in w.train_data.read_text().splitlines()}
    evals = [json.loads(line)["prompt"] for line in w.eval_prompts.read_text().splitlines()]
    assert len(evals) == 8 == len(set(evals)) and not train & set(evals)
    assert all(parse_prompt(p)[0] != "unknown" for p in evals)


def test_cached_world_is_reused(world, monkeypatch):
    cache, w = world
    stamp = w.meta.stat().st_mtime_ns

    def no_rebuild(*a, **k):
        raise AssertionError("rebuilt a complete world")

    monkeypatch.setattr(B, "_build_into", no_rebuild)
    again = B.build_world(str(cache), seed=1, **TINY)
    assert again == w and w.meta.stat().st_mtime_ns == stamp
    with pytest.raises(AssertionError, match="rebuilt"):
        B.build_world(str(cache), seed=1, force=True, **TINY)
    assert B.is_complete(w)  # the failed forced rebuild left the old world in place


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(B, "make_preference_data", boom)
    with pytest.raises(KeyboardInterrupt):
        B.build_world(str(tmp_path), seed=2, **{**TINY, "sft_steps": 2})
    assert list(tmp_path.iterdir()) == []


def test_bad_override_is_an_error(tmp_path):
    from currydpo.errors import CurryError

    with pytest.raises(CurryError, match="sft_steps"):
        B.build_world(str(tmp_path), sft_steps=0)
    with pytest.raises(CurryError, match="responses='mixed'"):
        B.build_world(str(tmp_path), responses="mixed")
    with pytest.raises(CurryError, match="too many"):
        B.build_world(str(tmp_path), n_train_prompts=5000, progress=False)


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CURRYDPO_CACHE", str(tmp_path))
    assert B.world_dir(None, 0, False, B.DEFAULT) == tmp_path / f"world-{B.WORLD_VERSION}-pool-0"
    assert B.world_dir(None, 3, True, B.QUICK) == tmp_path / f"world-{B.WORLD_VERSION}-pool-3-quick"
    # the two response regimes never share a cached world
    selfish = B.dataclasses.replace(B.DEFAULT, responses="self")
    assert B.world_dir(None, 0, False, selfish) == tmp_path / f"world-{B.WORLD_VERSION}-self-0"
