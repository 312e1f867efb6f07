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


# ---------------------------------------------------------------- FlexAttention (model.attention: flex)

def long_batch():
    """A 10-token prompt with responses of 246 and 256 tokens: one 512-token row of four 128-token
    FlexAttention blocks where the second response's queries (blocks 2, 3) never see block 1 (the first
    response's keys); two short prompts fill the second row."""
    from currydpo.training.tokenize import Encoded

    g = torch.Generator().manual_seed(0)

    def seq(n):
        return tuple(torch.randint(3, 300, (n,), generator=g).tolist())

    p1, p2 = seq(10), seq(60)
    return [Encoded(p1, seq(246)), Encoded(p1, seq(256)), Encoded(p2, seq(40)), Encoded(seq(20), seq(30))]


def test_flex_block_mask_is_the_packing_mask_and_skips_blocks():
    """FlexAttention with the packing's BlockMask gives sdpa-with-the-dense-mask's output (torch 2.13 runs
    FlexAttention on CPU forward-only, uncompiled here), and the block mask has blocks to skip."""
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import flex_attention

    packed = _pack(long_batch(), pad_token_id=0)
    R, L = packed.input_ids.shape
    assert (R, L) == (2, 512)
    block_mask = packed.block_mask("cpu")
    computed = block_mask.kv_num_blocks + (block_mask.full_kv_num_blocks if block_mask.full_kv_num_blocks is not None
                                           else 0)  # (R, 1, query blocks)
    assert computed[0].sum() == 8  # a causal mask computes 10 of the 16 blocks; the packing skips 2 more
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(R, 2, L, 8, generator=g) for _ in range(3))
    with torch.no_grad():
        flex = flex_attention(q, k, v, block_mask=block_mask)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=packed.allowed)
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)


def test_attention_setting_picks_the_implementation(tiny_model_dir):
    from currydpo.config import ModelConfig
    from currydpo.training.model import attention_for, load_model

    cpu = torch.device("cpu")
    assert attention_for("auto", cpu) == "sdpa" and attention_for("auto", torch.device("cuda")) == "flex"
    for setting, impl in (("auto", "sdpa"), ("eager", "eager"), ("sdpa", "sdpa"), ("flex", "flex_attention")):
        model = load_model(tiny_model_dir, ModelConfig(path=tiny_model_dir, attention=setting), cpu)
        assert model.config._attn_implementation == impl
        assert packing_supported(model)


def test_flex_cannot_train_on_cpu(tiny_model_dir, tmp_path):
    from currydpo.errors import CurryError
    from currydpo.training import loop

    from conftest import make_records, tiny_config

    cfg = tiny_config(tiny_model_dir, tmp_path / "run", model={"attention": "flex"})
    with pytest.raises(CurryError, match="model.attention flex cannot train on CPU"):
        loop.train(cfg, records=make_records(4, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs CUDA in torch 2.13")
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_flex_equals_padded_sdpa_on_cuda(kind):
    """Log-probs and gradients through FlexAttention (packed rows, block mask) equal the padded sdpa path."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cls, cfg = {"llama": (LlamaForCausalLM, LlamaConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config)}[kind]
    torch.manual_seed(0)
    config = cfg(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1)
    model = cls(config).cuda().train()
    batch = long_batch()
    lp_pad, _, g_pad = logps_and_grads(model, batch, 0, packing=False)
    model.set_attn_implementation("flex_attention")
    lp_flex, _, g_flex = logps_and_grads(model, batch, 0, packing=True)
    torch.testing.assert_close(lp_flex, lp_pad, rtol=1e-5, atol=1e-5)
    for k in g_pad:
        torch.testing.assert_close(g_flex[k], g_pad[k], rtol=1e-5, atol=1e-5 * max(1.0, g_pad[k].abs().max().item()))
