"""Memory levers for listwise losses: token-bounded micro-batches of whole lists give the whole batch's
update, and each micro-batch's forward runs every unique response once through the chunked LM head."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from currydpo.curriculum.lists import make_list
from currydpo.data.pairs import build_pairs
from currydpo.training import logprobs, loop, objective
from currydpo.training.memory import even_out, split_by_tokens, unique_rows
from currydpo.training.responses import ResponseTable, Scorer
from currydpo.training.setup import setup
from currydpo.training.tokenize import encode_records

from conftest import make_records, tiny_config, update_grads


@pytest.fixture(scope="module")
def table_and_lists(tiny_model_dir):
    """Each prompt's list of 4 (its best-vs-rest pairs), then lists of 2 and 3 of prompts 5 and 4."""
    recs = make_records(6, 4)
    pairs = build_pairs(recs, "best-vs-rest")
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = encode_records(recs, tok, max_length=96, max_prompt_length=48, progress=False)
    by_record = {r: [p for p in pairs if p.record == r] for r in range(len(recs))}
    lists = [make_list(r, recs[r], by_record[r], "score-gap") for r in range(len(recs))]
    lists += [make_list(r, recs[r], by_record[r][:k], "score-gap") for r, k in ((5, 1), (4, 2))]
    return ResponseTable.from_pairs(pairs, enc), lists


def packed_tokens(table, lists, idx):
    rows = unique_rows(table, [lists[i] for i in idx])
    return (sum(len(p) for p in {table.encoded[r].prompt_ids for r in rows})
            + sum(len(table.encoded[r].response_ids) for r in rows))


def test_split_keeps_every_list_whole_once_in_order_within_the_bound(table_and_lists):
    table, lists = table_and_lists
    # lists 6 and 7 share prompts 5 and 4; list 0 comes twice (an update that wraps around its stage)
    update = [0, 6, 1, 2, 7, 3, 4, 5, 0]
    grouped = sorted(update,  # the prompts in first-come order: 0, 5, 1, 2, 4, 3
                     key=lambda i: [lists[j].record for j in update].index(lists[i].record))
    sizes = [packed_tokens(table, lists, [i]) for i in range(len(lists))]
    for bound in (packed_tokens(table, lists, update), max(sizes), min(sizes) + 5, min(sizes), 1):
        micro = split_by_tokens(update, lists, table, bound)
        assert [i for m in micro for i in m] == grouped  # every list once, the update's order by prompt
        for m in micro:
            assert packed_tokens(table, lists, m) <= bound or len(m) == 1  # only a lone list may exceed
        for r in {lists[i].record for i in update}:  # one prompt's lists stay together when they fit
            same = [i for i in update if lists[i].record == r]
            if packed_tokens(table, lists, same) <= bound:
                assert any(sorted(same) == sorted(i for i in m if lists[i].record == r) for m in micro)
        for n in {len(micro), min(len(micro) + 1, len(update)), len(update)}:  # several processes: as many forwards
            out = even_out(micro, n)
            assert len(out) == n and [i for m in out for i in m] == grouped
    assert split_by_tokens(update, lists, table, packed_tokens(table, lists, update)) == [grouped]
    assert [len(m) for m in split_by_tokens(update, lists, table, 1)] == [1] * len(update)


@pytest.mark.parametrize("loss, schedule, bound", [("pro", "single-pass", 150), ("plackett-luce", "iterative", 120)])
def test_token_bounded_lists_give_the_same_update(tiny_model_dir, tmp_path, monkeypatch, loss, schedule, bound):
    """Micro-batches of 1 and 2 lists (and of one list each) give the whole batch's losses, gradients and
    weights: each micro-batch's loss is scaled by its share of the update's lists."""
    recs = make_records(8, 4)
    splits, grads, finals = [], {}, {}
    real_split, real_optimizer = objective.split_by_tokens, loop.make_optimizer
    monkeypatch.setattr(objective, "split_by_tokens", lambda *a: splits.append(real_split(*a)) or splits[-1])

    def make_optimizer(run, n):  # keep every update's gradients (taken just before its step)
        optimizer, scheduler = real_optimizer(run, n)
        names = {p: k for k, p in run.model.named_parameters()}
        optimizer.register_step_pre_hook(lambda opt, *_: grads[name].append(
            {names[p]: p.grad.clone() for g in opt.param_groups for p in g["params"]}))
        return optimizer, scheduler

    monkeypatch.setattr(loop, "make_optimizer", make_optimizer)
    for name, tokens in (("whole", None), ("split", bound), ("tiny", 1)):
        out, grads[name] = tmp_path / name, []
        cfg = tiny_config(tiny_model_dir, out, loss={"name": loss}, curriculum={"schedule": schedule},
                          optim={"batch_size": 8, "max_tokens_per_micro_batch": tokens})
        s = loop.train(cfg, records=recs)
        assert s["unit"] == "list" and s["memory"]["max_tokens_per_micro_batch"] == tokens
        finals[name] = load_file(os.path.join(out, "final", "model.safetensors"))
        finals[name + "-loss"] = torch.tensor([json.loads(line)["loss"] for line in open(out / "metrics.jsonl")
                                               if "loss" in json.loads(line)])
        if name == "split":  # several micro-batches of unequal sizes
            assert all(len(m) > 1 for m in splits) and any(len({len(x) for x in m}) > 1 for m in splits)
    assert len(grads["whole"]) == len(finals["whole-loss"]) == (1 if schedule == "single-pass" else 3)
    for name in ("split", "tiny"):
        torch.testing.assert_close(finals[name + "-loss"], finals["whole-loss"], rtol=1e-5, atol=1e-6)
        for got, want in zip(grads[name], grads["whole"], strict=True):
            for k in want:
                torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-7)
        # AdamW's first steps are lr * g / (|g| + eps): a gradient near eps (1e-8) turns float noise of 1e-10
        # into 1e-5 on its weight, so the weights are compared to 2% of one step (lr = 1e-3)
        for k in finals["whole"]:
            torch.testing.assert_close(finals[name][k], finals["whole"][k], rtol=1e-4, atol=2e-5)


def test_uneven_list_split_gives_the_whole_batch_mean(tiny_model_dir, tmp_path, monkeypatch):
    """Split 1 + 5 lists (dividing by the number of micro-batches would weight the lone list 5x): the
    gradient is the whole batch's."""
    recs = make_records(6, 4)
    grads, splits = {}, []
    for name, tokens in (("whole", None), ("split", 1)):
        cfg = tiny_config(tiny_model_dir, tmp_path / name, loss={"name": "pro"},
                          curriculum={"schedule": "single-pass"},
                          optim={"batch_size": 6, "max_tokens_per_micro_batch": tokens})
        run = setup(cfg, recs)
        run.model.train()
        monkeypatch.setattr(objective, "split_by_tokens", lambda idx, *a: splits.append(idx) or [idx[:1], idx[1:]])
        grads[name] = update_grads(run, [list(range(6))], None)  # pro: reference-free
    assert splits == [list(range(6))] and grads["whole"]  # split once: only when bounded
    for k in grads["whole"]:
        torch.testing.assert_close(grads["split"][k], grads["whole"][k], rtol=1e-4, atol=1e-7)


def test_listwise_forwards_are_token_bounded_whole_lists_through_the_chunked_head(tiny_model_dir, tmp_path,
                                                                                  monkeypatch):
    """With a small bound a listwise update runs several forwards (one per micro-batch, where an unbounded
    update runs one), each within the bound unless it is one list, each list's responses in one forward,
    no response twice in a forward, packed with each prompt once, and through the chunked LM head."""
    recs = make_records(8, 4)
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", loss={"name": "pro"}, curriculum={"schedule": "single-pass"},
                      model={"fused_logprobs": "chunked"}, optim={"batch_size": 8, "max_tokens_per_micro_batch": 150})
    run = setup(cfg, recs)
    run.model.train()
    forwards, heads, packed = [], [], []
    real_forward, real_head, real_pack = Scorer.policy, logprobs.chunked_head_logps, logprobs._pack
    monkeypatch.setattr(Scorer, "policy", lambda self, m, batch: forwards.append(batch) or real_forward(self, m, batch))
    monkeypatch.setattr(logprobs, "chunked_head_logps", lambda *a, **k: heads.append(1) or real_head(*a, **k))
    monkeypatch.setattr(logprobs, "_pack", lambda *a: packed.append(real_pack(*a)) or packed[-1])
    optimizer, scheduler = loop.make_optimizer(run, 1)
    loop.train_step(run, optimizer, scheduler, [list(range(8))], None, "t")
    assert len(forwards) == len(split_by_tokens(list(range(8)), run.objective.lists, run.table, 150)) >= 3
    assert len(heads) == len(packed) == len(forwards)
    seen = {}
    for f, batch in enumerate(forwards):
        keys = [(e.prompt_ids, e.response_ids) for e in batch]
        assert len(set(keys)) == len(keys)  # each unique response once
        tokens = sum(len(p) for p in {e.prompt_ids for e in batch}) + sum(len(e.response_ids) for e in batch)
        assert int((packed[f].segment >= 0).sum()) == tokens  # packed: each prompt computed once, no padding
        assert tokens <= 150 or len({e.prompt_ids for e in batch}) == 1
        seen.update({key: f for key in keys})
    for x in run.objective.lists:  # a list's responses all went through one forward
        assert len({seen[(run.table.encoded[r].prompt_ids, run.table.encoded[r].response_ids)]
                    for r in unique_rows(run.table, [x])}) == 1
