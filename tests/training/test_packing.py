"""Tier (b): the packed, prompt-sharing path of `response_logps` equals the padded path.

Several responses per prompt (so prompts are shared), prompts and responses of mixed
lengths (so rows are packed and padded differently), both attention implementations
that take a custom 4D mask, with and without the hidden-state fast path; values and
gradients must agree to float tolerance.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from currydpo.training.logprobs import _pack, packing_supported, response_logps
from currydpo.training.tokenize import encode

PROMPTS = ["what is two plus two?", "hello, how are you today? please answer kindly and at length.", "sea"]
RESPONSES = [" it is four.", " i am fine, thank you very much! the cat sat on the mat.", " no.",
             " the dog ran in the park and the cat sat on the mat and the sky was kind."]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def batch(tok):
    """Responses of 3 prompts, interleaved (the order batch_logps may produce), one prompt with 1 response."""
    enc = [encode(tok, p, r, max_length=96, max_prompt_length=48) for p in PROMPTS[:2] for r in RESPONSES]
    return enc[::2] + [encode(tok, PROMPTS[2], RESPONSES[1], max_length=96, max_prompt_length=48)] + enc[1::2]


def load(path, attn):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn).train()


def logps_and_grads(model, batch, pad_id, **kw):
    model.zero_grad()
    lp, n = response_logps(model, batch, pad_id, **kw)
    weights = torch.linspace(-1.0, 2.0, len(batch))
    (lp * weights).sum().backward()
    return lp.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_pack_layout(batch):
    packed = _pack(batch, pad_token_id=0)
    n_prompts = len({e.prompt_ids for e in batch})
    total = sum(len(e.response_ids) for e in batch) + sum(len(p) for p in {e.prompt_ids for e in batch})
    assert packed.n_tokens.tolist() == [len(e.response_ids) for e in batch]
    assert len(packed.targets) == sum(len(e.response_ids) for e in batch)
    assert (packed.input_ids != 0).sum() <= total  # each prompt once, no padding inside segments
    assert packed.input_ids.numel() < sum(len(e) for e in batch)  # fewer tokens than one row per response
    assert n_prompts == 3
    # every position attends to itself (no empty softmax rows, padding included)
    assert packed.allowed[:, 0].diagonal(dim1=-2, dim2=-1).all()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("fast", [True, False])
def test_packed_equals_padded(tiny_model_dir, tok, batch, attn, fast):
    model = load(tiny_model_dir, attn)
    assert packing_supported(model)
    lp_pad, n_pad, g_pad = logps_and_grads(model, batch, tok.pad_token_id, fast=fast, packing=False)
    lp_pack, n_pack, g_pack = logps_and_grads(model, batch, tok.pad_token_id, fast=fast, packing=True)
    assert n_pack.tolist() == n_pad.tolist()
    torch.testing.assert_close(lp_pack, lp_pad, rtol=1e-5, atol=1e-5)
    assert g_pack.keys() == g_pad.keys() and g_pack
    for k in g_pad:
        torch.testing.assert_close(g_pack[k], g_pad[k], rtol=1e-4, atol=1e-6)
    # each response alone (no batch at all) gives the same value
    with torch.no_grad():
        alone = torch.cat([response_logps(model, [e], tok.pad_token_id, packing=False)[0] for e in batch])
    torch.testing.assert_close(lp_pack, alone, rtol=1e-5, atol=1e-5)


def test_unsupported_attention_falls_back_to_padding(tiny_model_dir, tok, batch):
    model = load(tiny_model_dir, "sdpa")
    with torch.no_grad():
        expected, _ = response_logps(model, batch, tok.pad_token_id, packing=False)
    model.config._attn_implementation = "flash_attention_2"  # not run: only the dispatch is checked
    assert not packing_supported(model)
    model.config._attn_implementation = "sdpa"
    model.config.sliding_window = 8  # a window shorter than a packed row: the 4D mask would ignore it
    assert not packing_supported(model, row_length=64) and packing_supported(model, row_length=8)
    with torch.no_grad():
        got, _ = response_logps(model, batch, tok.pad_token_id)  # falls back, same values
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
