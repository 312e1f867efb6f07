"""Tier (b): the gathered-hidden-state fast path equals the plain full-logits computation."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from currydpo.training.logprobs import _split_model, response_logps
from currydpo.training.tokenize import encode

PAIRS = [
    ("what is two plus two?", " it is four."),
    ("hello, how are you today?", " i am fine, thank you very much! the cat sat on the mat."),
    ("please write a short poem about the sea", " the sky"),
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def batch(tok):
    return [encode(tok, p, r, max_length=64, max_prompt_length=32) for p, r in PAIRS]


def load(path):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def plain_logps(model, batch):
    """Reference: one sequence at a time, no padding, full (T, V) logits, log_softmax, gather."""
    out = []
    for e in batch:
        ids = torch.tensor([e.prompt_ids + e.response_ids])
        logp = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # (T, V)
        P = len(e.prompt_ids)
        out.append(sum(logp[t - 1, ids[0, t]] for t in range(P, ids.size(1))))
    return torch.stack(out)


def params_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def check_fast_equals_plain(model, batch, pad_id):
    assert _split_model(model) is not None, "the fast path should apply to this model"
    model.zero_grad()
    fast, n = response_logps(model, batch, pad_id)
    (fast * torch.tensor([1.0, -0.5, 2.0])).sum().backward()
    g_fast = params_grads(model)
    model.zero_grad()
    plain = plain_logps(model, batch)
    (plain * torch.tensor([1.0, -0.5, 2.0])).sum().backward()
    g_plain = params_grads(model)
    assert n.tolist() == [len(e.response_ids) for e in batch]
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert g_fast.keys() == g_plain.keys() and g_fast
    for k in g_fast:
        torch.testing.assert_close(g_fast[k], g_plain[k], rtol=1e-5, atol=1e-5)
    return fast


def test_fast_path_equals_plain(tiny_model_dir, tok, batch):
    model = load(tiny_model_dir)
    fast = check_fast_equals_plain(model, batch, tok.pad_token_id)
    # the full-logits fallback inside response_logps agrees too
    with torch.no_grad():
        slow, _ = response_logps(model, batch, tok.pad_token_id, fast=False)
    torch.testing.assert_close(slow, fast.detach(), rtol=1e-5, atol=1e-5)
    # padding and the pad id do not matter: each sequence alone gives the same value
    with torch.no_grad():
        alone = torch.cat([response_logps(model, [e], 0)[0] for e in batch])
    torch.testing.assert_close(alone, fast.detach(), rtol=1e-5, atol=1e-5)


def test_fast_path_with_peft_lora(tiny_model_dir, tok, batch):
    peft = pytest.importorskip("peft")
    model = load(tiny_model_dir)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = peft.get_peft_model(model, cfg)
    check_fast_equals_plain(model, batch, tok.pad_token_id)


def test_falls_back_for_logit_postprocessing(tiny_model_dir, tok, batch):
    model = load(tiny_model_dir)
    with torch.no_grad():
        before, _ = response_logps(model, batch, tok.pad_token_id)
    model.config.final_logit_softcapping = 30.0  # Llama ignores it, but Gemma-2-style configs need the full forward
    assert _split_model(model) is None
    with torch.no_grad():
        after, _ = response_logps(model, batch, tok.pad_token_id)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)

    class Wrapper(torch.nn.Module):  # like a DDP wrapper: no config / get_output_embeddings
        def __init__(self, inner):
            super().__init__()
            self.module = inner

        def forward(self, **kw):
            return self.module(**kw)

    assert _split_model(Wrapper(model)) is None
    with torch.no_grad():
        wrapped, _ = response_logps(Wrapper(model), batch, tok.pad_token_id)
    torch.testing.assert_close(wrapped, before, rtol=1e-5, atol=1e-5)
