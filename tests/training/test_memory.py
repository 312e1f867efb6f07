"""Memory levers: token-bounded micro-batches give the whole batch's update; gradient checkpointing
changes no gradient and is chosen by an activation estimate against a budget."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from currydpo.data.pairs import build_pairs
from currydpo.training import loop
from currydpo.training.logprobs import response_logps
from currydpo.training.memory import (
    CPU_TOKENS,
    CUDA_TOKENS,
    GB,
    activation_bytes_per_token,
    choose_checkpointing,
    enable_checkpointing,
    even_out,
    memory_budget,
    resolve_token_bound,
    split_by_tokens,
)
from currydpo.training.responses import ResponseTable
from currydpo.training.setup import setup
from currydpo.training.tokenize import encode_records

from conftest import make_records, tiny_config, update_grads

F32 = torch.float32


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def table_and_pairs(tok):
    recs = make_records(6, 4)
    pairs = build_pairs(recs, "best-vs-rest")
    enc = encode_records(recs, tok, max_length=96, max_prompt_length=48, progress=False)
    return ResponseTable.from_pairs(pairs, enc), pairs


def packed_tokens(table, pairs, idx):
    rows = table.rows([pairs[i] for i in idx])[0]
    return (sum(len(p) for p in {table.encoded[r].prompt_ids for r in rows})
            + sum(len(table.encoded[r].response_ids) for r in rows))


def test_split_by_tokens_bounds_tokens_and_keeps_pairs(table_and_pairs):
    table, pairs = table_and_pairs
    update = list(range(12))  # 4 prompts x 3 pairs
    whole = packed_tokens(table, pairs, update)
    groups = {r: [i for i in update if pairs[i].record == r] for r in {pairs[i].record for i in update}}
    for bound in (whole, whole // 2, min(packed_tokens(table, pairs, g) for g in groups.values()), 10):
        micro = split_by_tokens(update, pairs, table, bound)
        assert sorted(i for m in micro for i in m) == update  # the update's pairs, each once
        for m in micro:
            assert packed_tokens(table, pairs, m) <= bound or len(m) == 1  # only a lone pair may exceed
        for g in groups.values():  # a prompt's pairs stay together when they fit
            if packed_tokens(table, pairs, g) <= bound:
                assert any(set(g) <= set(m) for m in micro)
    assert split_by_tokens(update, pairs, table, whole) == [update]
    assert len(split_by_tokens(update, pairs, table, whole // 2)) >= 2


def test_even_out_gives_every_process_the_same_number_of_micro_batches():
    micro = [[0, 1, 2, 3, 4], [5], [6, 7]]
    for n in (3, 4, 5, 8):
        out = even_out(micro, n)
        assert len(out) == n and sorted(i for m in out for i in m) == list(range(8)) and all(out)
    with pytest.raises(ValueError):
        even_out(micro, 9)


def test_token_bounded_micro_batches_give_the_same_update(tiny_model_dir, tmp_path):
    """Unequal token-bounded micro-batches (and pair weights that differ) give the whole batch's weights."""
    recs = make_records(8, 4)
    finals = {}
    for name, bound in (("whole", None), ("split", 60), ("tiny", 1)):
        out = tmp_path / name
        cfg = tiny_config(tiny_model_dir, out, curriculum={"schedule": "random"},
                          optim={"batch_size": 12, "total_updates": 2, "max_tokens_per_micro_batch": bound})
        s = loop.train(cfg, records=recs)
        assert s["pairs_per_update"] == 12
        finals[name] = load_file(os.path.join(out, "final", "model.safetensors"))
        metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
        finals[name + "-loss"] = torch.tensor([m["loss"] for m in metrics])
    for name in ("split", "tiny"):
        torch.testing.assert_close(finals[name + "-loss"], finals["whole-loss"], rtol=1e-5, atol=1e-6)
        for k in finals["whole"]:
            torch.testing.assert_close(finals[name][k], finals["whole"][k], rtol=1e-4, atol=1e-6)


def test_uneven_split_gives_the_whole_batch_mean(tiny_model_dir, tmp_path, monkeypatch):
    """Micro-batch losses are scaled by their share of the update's pairs: split 1 + 5 (where dividing
    each by the number of micro-batches would weight the lone pair 5x), the gradient is the whole batch's."""
    from currydpo.training import objective
    from currydpo.training.memory import split_by_tokens as real_split

    recs = make_records(4, 4)
    grads = {}
    for name, bound in (("whole", None), ("split", 1)):
        cfg = tiny_config(tiny_model_dir, tmp_path / name, curriculum={"schedule": "random"},
                          optim={"batch_size": 6, "max_tokens_per_micro_batch": bound})
        run = setup(cfg, recs)
        run.model.train()
        monkeypatch.setattr(objective, "split_by_tokens", lambda idx, *a: [idx[:1], idx[1:]] if bound else real_split(
            idx, *a))  # uneven: 1 pair, then 5
        grads[name] = update_grads(run, [list(range(6))], run.refs.get("initial", len(run.table.keys)))
    for k in grads["whole"]:
        torch.testing.assert_close(grads["split"][k], grads["whole"][k], rtol=1e-4, atol=1e-7)


def grads_of(model, batch, pad_id):
    model.zero_grad()
    lp, _ = response_logps(model, batch, pad_id)
    (lp * torch.linspace(-1.0, 2.0, len(batch))).sum().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_changes_no_gradient(tiny_model_dir, tok, table_and_pairs, lora):
    """Packed rows through the backbone/LM-head split, with and without LoRA: same gradients."""
    table, _ = table_and_pairs
    batch = table.encoded[:10]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    model.train()
    plain = grads_of(model, batch, tok.pad_token_id)
    enable_checkpointing(model)
    base = model.get_base_model() if lora else model
    assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
    checkpointed = grads_of(model, batch, tok.pad_token_id)
    assert plain.keys() == checkpointed.keys() and plain
    assert all("lora_" in k for k in plain) == lora
    for k in plain:
        torch.testing.assert_close(checkpointed[k], plain[k], rtol=1e-5, atol=1e-7)


def test_auto_checkpointing_follows_the_budget(tiny_model_dir, table_and_pairs):
    table, _ = table_and_pairs
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    free = memory_budget(model, torch.device("cpu"), None)  # tiny model, the machine's free RAM
    auto = choose_checkpointing("auto", model, table, 8, None, free, F32)
    assert not auto.on and 0 < auto.activation_gb < auto.budget_gb
    assert "off (estimated activations fit the budget" in auto.describe()
    half = int(auto.activation_gb / 2 * GB)
    assert memory_budget(model, torch.device("cpu"), auto.activation_gb / 2) == half
    tight = choose_checkpointing("auto", model, table, 8, None, half, F32)
    assert tight.on and "exceed the budget" in tight.describe()
    bounded = choose_checkpointing("auto", model, table, 8, 10, half, F32)
    assert bounded.activation_gb < auto.activation_gb  # token-bounded micro-batches need less
    assert choose_checkpointing("on", model, table, 8, None, free, F32).on
    assert not choose_checkpointing("off", model, table, 8, None, 1, F32).on


def test_auto_token_bound_depends_on_the_device(tiny_model_dir):
    """auto: 768 tokens on CPU; on CUDA the most whole 1024s whose activations fit half the budget, in
    [2048, 16384]; a number or null is kept as given."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    per_token = activation_bytes_per_token(model.config, torch.float32)
    assert resolve_token_bound("auto", model, cpu, 10 ** 12, F32) == CPU_TOKENS == 768
    assert resolve_token_bound(512, model, cpu, 0, F32) == 512
    assert resolve_token_bound(None, model, cuda, 0, F32) is None
    assert resolve_token_bound("auto", model, cuda, 2 * per_token * 5000, F32) == 4096
    assert resolve_token_bound("auto", model, cuda, 2 * per_token * 5000 - 1, F32) == 4096
    assert resolve_token_bound("auto", model, cuda, 2 * per_token * 4096 - 1, F32) == 3072
    assert resolve_token_bound("auto", model, cuda, 0, F32) == CUDA_TOKENS[0] == 2048  # checkpointing then decides
    assert resolve_token_bound("auto", model, cuda, -5, F32) == 2048
    assert resolve_token_bound("auto", model, cuda, 10 ** 15, F32) == CUDA_TOKENS[1] == 16384
    # under bf16 autocast activations take half the bytes (the weights stay fp32), so twice the tokens fit
    assert resolve_token_bound("auto", model, cuda, 2 * per_token * 4096, torch.bfloat16) == 8192


def test_token_bound_config_values():
    from currydpo.config import TrainConfig, from_dict, validate
    from currydpo.errors import CurryError

    assert TrainConfig().optim.max_tokens_per_micro_batch == "auto"
    for given, want in (("auto", "auto"), ("1024", 1024), (1024, 1024), ("null", None)):
        cfg = validate(from_dict({"optim": {"max_tokens_per_micro_batch": given}}))
        assert cfg.optim.max_tokens_per_micro_batch == want
    for bad in ("lots", 0, -3, "7.5", True):
        with pytest.raises(CurryError, match="optim.max_tokens_per_micro_batch"):
            validate(from_dict({"optim": {"max_tokens_per_micro_batch": bad}}))


def test_training_logs_the_choice(tiny_model_dir, tmp_path, capsys):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", optim={"total_updates": 1})
    s = loop.train(cfg, records=make_records(4, 3))
    assert s["memory"]["gradient_checkpointing"] is False and s["memory"]["attention"] == "sdpa"
    assert s["memory"]["max_tokens_per_micro_batch"] == 768  # auto on CPU
    err = capsys.readouterr().err
    assert "currydpo: gradient checkpointing off" in err and "micro-batches of at most 768 tokens" in err
    cfg = tiny_config(tiny_model_dir, tmp_path / "on", optim={"total_updates": 1},
                      model={"gradient_checkpointing": "on"})
    assert loop.train(cfg, records=make_records(4, 3))["memory"]["gradient_checkpointing"] is True


def test_budget_counts_this_process_shard(monkeypatch):
    """Under FSDP2 a parameter is a DTensor whose numel() is the whole tensor's; the budget sets aside
    gradients and AdamW moments for this process's shard only."""
    import currydpo.training.memory as memory

    class Sharded(torch.nn.Parameter):
        def to_local(self):
            return self.data[: len(self.data) // 4]  # one process of four

    class Model(torch.nn.Module):
        def __init__(self, param):
            super().__init__()
            self.w = param

    monkeypatch.setattr(memory, "free_memory_share", lambda device: 10 ** 9)
    whole = memory_budget(Model(torch.nn.Parameter(torch.zeros(4000))), torch.device("cpu"), None)
    shard = memory_budget(Model(Sharded(torch.zeros(4000))), torch.device("cpu"), None)
    assert whole == 10 ** 9 - 12 * 4000 and shard == 10 ** 9 - 12 * 1000


def test_checkpointing_estimate_counts_a_list_as_its_responses(table_and_pairs):
    """A micro-batch of ranked lists holds up to list-size sequences per item, not a pair's two: the estimate
    behind gradient_checkpointing auto counts them (ranked lists were estimated as pairs before)."""
    from currydpo.training.memory import micro_batch_tokens

    table, _ = table_and_pairs
    longest = sorted((len(e) for e in table.encoded), reverse=True)
    assert micro_batch_tokens(table, 2, None) == sum(longest[:4])
    assert micro_batch_tokens(table, 2, None, per_item=4) == sum(longest[:8]) > sum(longest[:4])
    assert micro_batch_tokens(table, 2, 1, per_item=4) == sum(longest[:4])  # one list that does not fit, alone
