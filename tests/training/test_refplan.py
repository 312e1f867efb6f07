"""A run pays for what it trains: tokens cached by fingerprint, reference log-probs only for the responses
the planned batches use, the initial reference shared across runs (`run.cache_dir`)."""

import json

import pytest
import torch

from currydpo.training import loop, refplan, tokencache
from currydpo.training import setup as run_setup
from currydpo.training.responses import Scorer
from currydpo.training.tokenize import encode_for

from conftest import make_records, tiny_config


@pytest.fixture
def scored(monkeypatch):
    """(desc, rows) of every no-grad scoring pass, in order."""
    calls = []
    real = Scorer.score

    def spy(self, model, table, rows, desc="log-probs"):
        calls.append((desc, list(rows)))
        return real(self, model, table, rows, desc=desc)

    monkeypatch.setattr(Scorer, "score", spy)
    return calls


def rows_scored(calls, key):
    return [r for desc, rows in calls if desc == f"reference log-probs ({key})" for r in rows]


def train(cfg, records):
    runs = []
    summary = loop.train(cfg, records=records, hooks=loop.Hooks(on_stage_end=[lambda run, k, info: runs.append(run)]))
    losses = [json.loads(line)["loss"] for line in open(f"{cfg.run.output_dir}/metrics.jsonl") if '"loss"' in line]
    return summary, runs[-1], losses


def budget_config(model, out, **sections):
    base = {"curriculum": {"schedule": "iterative", "stages": 3}, "optim": {"total_updates": 3}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return tiny_config(model, out, **base)


def test_reference_passes_score_only_what_the_budget_trains(tiny_model_dir, tmp_path, scored, monkeypatch):
    """3 updates of 4 pairs over 3 stages of 12 pairs: the initial reference scores stage 1's 4 planned pairs
    (under iterative only stage 1 uses it), each later reference its stage's 4; the loss is the plain one's."""
    records = make_records(12)
    summary, run, losses = train(budget_config(tiny_model_dir, tmp_path / "budget"), records)
    P, n = run.pairs_per_update, run.stage_updates
    assert n == [1, 1, 1] and all(len(s.pairs) == 12 for s in run.stages)
    for k, key in enumerate(["initial", "stage-1", "stage-2"]):
        planned = refplan.stage_rows(run.objective, run.stages[k], n[k], P)
        assert sorted(rows_scored(scored, key)) == planned  # each once, nothing else
        assert len(planned) < len(run.objective.rows(run.objective.items(run.stages[k].pairs))[0])
    assert len(rows_scored(scored, "initial")) < summary["unique_responses"]

    # the plain computation: every reference over every response, as before
    monkeypatch.setattr(refplan, "planned_items", lambda stage, n_updates, per_update: list(stage.pairs))
    monkeypatch.setattr(run_setup, "initial_rows", lambda *a: list(range(len(a[3].keys))))
    scored.clear()
    _, _, plain = train(budget_config(tiny_model_dir, tmp_path / "plain", run={"cache_dir": "none"}), records)
    assert len(rows_scored(scored, "initial")) == summary["unique_responses"]
    assert losses == pytest.approx(plain, rel=1e-6, abs=1e-8)


def test_held_out_pairs_and_ref_logratio_get_their_initial_values(tiny_model_dir, tmp_path, scored):
    records = make_records(12)
    _, run, _ = train(budget_config(tiny_model_dir, tmp_path / "a", data={"eval_fraction": 0.25}), records)
    held_out = run.table.rows(run.data.eval_pairs)[0]
    assert held_out and set(held_out) <= set(rows_scored(scored, "initial"))
    scored.clear()
    _, run, _ = train(budget_config(tiny_model_dir, tmp_path / "b", curriculum={"difficulty": "ref-logratio"}),
                      records)
    assert not run.refs.get("initial", len(run.table.keys)).isnan().any()  # the plan needs all


def test_a_second_run_reuses_the_initial_reference(tiny_model_dir, tmp_path, scored):
    """Arms and seeds of a comparison (and a re-run) share the initial model: the second asks no forward pass
    for the responses the first scored, and trains on the same values."""
    records = make_records(12)
    _, first_run, first = train(budget_config(tiny_model_dir, tmp_path / "first"), records)
    first_rows = set(rows_scored(scored, "initial"))
    scored.clear()
    _, _, again = train(budget_config(tiny_model_dir, tmp_path / "again"), records)
    assert rows_scored(scored, "initial") == []
    assert again == pytest.approx(first, rel=1e-12)
    scored.clear()  # another arm: single-pass over every pair with the initial reference
    _, run, _ = train(tiny_config(tiny_model_dir, tmp_path / "arm", optim={"total_updates": 6}), records)
    needed = set(refplan.initial_rows(run.cfg, run.resolved.reference, run.objective, run.table, run.data,
                                      run.stages, run.stage_updates, run.pairs_per_update))
    assert set(rows_scored(scored, "initial")) == needed - first_rows and needed & first_rows


def test_a_changed_model_or_tokenisation_never_reads_stale_values(tiny_model_dir, tmp_path, scored):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    records = make_records(12)
    train(budget_config(tiny_model_dir, tmp_path / "first"), records)
    n_first = len(rows_scored(scored, "initial"))
    other = tmp_path / "other-model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other)
    scored.clear()
    train(budget_config(other, tmp_path / "changed-model"), records)
    assert len(rows_scored(scored, "initial")) == n_first
    scored.clear()
    train(budget_config(tiny_model_dir, tmp_path / "changed-tokens", data={"max_length": 12,
                                                                           "max_prompt_length": 4}), records)
    assert len(rows_scored(scored, "initial")) == n_first


def test_token_cache_is_read_back_and_keyed_by_everything_that_decides_the_tokens(tiny_model_dir, tmp_path,
                                                                                    monkeypatch):
    from transformers import AutoTokenizer

    from currydpo.config import DataConfig

    tok, records, data = AutoTokenizer.from_pretrained(tiny_model_dir), make_records(10), DataConfig()
    cache = str(tmp_path / "cache")
    made = tokencache.encode_cached(tok, records, data, cache, progress=False)
    assert made == encode_for(tok, records, data, progress=False)
    calls = []
    monkeypatch.setattr(tokencache, "encode_for", lambda *a, **k: calls.append(1) or encode_for(*a, **k))
    assert tokencache.encode_cached(tok, records, data, cache, progress=False) == made and calls == []
    fp = tokencache.tokens_fingerprint(tok, records, data)
    chat = AutoTokenizer.from_pretrained(tiny_model_dir)
    chat.chat_template = chat.chat_template.replace("<|end|>", "<|end|> ")
    edited = make_records(10)
    edited[3].responses[1].text += " more"
    assert len({fp, tokencache.tokens_fingerprint(tok, records, DataConfig(max_length=64)),
                tokencache.tokens_fingerprint(tok, records, DataConfig(chat_template="never")),
                tokencache.tokens_fingerprint(chat, records, data),
                tokencache.tokens_fingerprint(tok, edited, data)}) == 5
    tokencache.encode_cached(tok, edited, data, cache, progress=False)
    assert calls == [1]
