"""Tier (b): the gathered-hidden-state fast path equals the plain full-logits computation."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from currydpo.training.logprobs import response_logps, split_model
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
    assert split_model(model) is not None, "the fast path should apply to this model"
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
    assert split_model(model) is None
    with torch.no_grad():
        after, _ = response_logps(model, batch, tok.pad_token_id)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)

    class Wrapper(torch.nn.Module):  # like a DDP wrapper: no config / get_output_embeddings
        def __init__(self, inner):
            super().__init__()
            self.module = inner

        def forward(self, **kw):
            return self.module(**kw)

    assert split_model(Wrapper(model)) is None
    with torch.no_grad():
        wrapped, _ = response_logps(Wrapper(model), batch, tok.pad_token_id)
    torch.testing.assert_close(wrapped, before, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the chunked LM head (model.fused_logprobs)

def tiny_causal_lm(kind: str, vocab: int):
    """A tiny random Llama or Qwen2 (hidden 16, 1 layer, transformers' init) with its own, untied LM head."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cls, cfg = {"llama": (LlamaForCausalLM, LlamaConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config)}[kind]
    torch.manual_seed(0)
    config = cfg(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, tie_word_embeddings=False, attn_implementation="sdpa")
    return cls(config).train()


def random_batch(vocab: int, seed: int = 0):
    from currydpo.training.tokenize import Encoded

    g = torch.Generator().manual_seed(seed)

    def seq(n):
        return tuple(torch.randint(3, vocab, (n,), generator=g).tolist())

    p1, p2 = seq(6), seq(11)
    return [Encoded(p1, seq(9)), Encoded(p1, seq(4)), Encoded(p2, seq(13)), Encoded(seq(3), seq(7))]


def logps_and_grads(model, batch, **kw):
    model.zero_grad()
    lp, _ = response_logps(model, batch, 0, **kw)
    (lp * torch.linspace(-1.0, 2.0, len(batch))).sum().backward()
    return lp.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind,vocab", [("llama", 300), ("qwen2", 300), ("qwen2", 151_936), ("llama", 128_256)])
@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_head_equals_plain_head(kind, vocab, packing, dtype):
    """Log-probs and every gradient (LM head weight, backbone, embeddings) of the chunked LM head equal the
    one-shot head, packed and padded, at vocabularies above 100K too (Qwen2's 152K, Llama-3's 128K).

    float32: within 1e-5 (gradients: relative to each tensor's largest entry, since an embedding-gradient
    entry sums 10^5 vocabulary terms whose float32 rounding depends on the matmul's blocking); float64:
    within 1e-10, so the two paths compute the same function."""
    from currydpo.training import logprobs

    model, batch = tiny_causal_lm(kind, vocab).to(dtype), random_batch(vocab)
    lp_off, g_off = logps_and_grads(model, batch, packing=packing, lm_head="off")
    chunk = logprobs.CHUNK_LOGITS
    try:
        logprobs.CHUNK_LOGITS = 5 * vocab  # 5-token chunks: many chunks and a ragged last one (33 tokens)
        lp_chunk, g_chunk = logps_and_grads(model, batch, packing=packing, lm_head="chunked")
    finally:
        logprobs.CHUNK_LOGITS = chunk
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert (lp_off < -5).all() and lp_off.dtype == dtype  # real values, not zeros
    torch.testing.assert_close(lp_chunk, lp_off, rtol=tol, atol=tol)
    assert g_chunk.keys() == g_off.keys() and "lm_head.weight" in g_off
    for k in g_off:
        torch.testing.assert_close(g_chunk[k], g_off[k], rtol=tol, atol=tol * max(1.0, g_off[k].abs().max().item()))


def test_chunked_head_gradients_wrt_hidden_and_weight():
    """`chunked_head_logps` alone: values and gradients w.r.t. the hidden states and the head weight."""
    from currydpo.training.logprobs import _token_logps, chunked_head_logps

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 120_000, bias=False)
    hidden = torch.randn(23, 8, requires_grad=True)
    targets = torch.randint(0, 120_000, (23,))
    w = torch.randn(23)
    plain = _token_logps(head(hidden), targets)
    g_plain = torch.autograd.grad((plain * w).sum(), (hidden, head.weight))
    chunked = chunked_head_logps(head, hidden, targets, chunk=4)
    g_chunked = torch.autograd.grad((chunked * w).sum(), (hidden, head.weight))
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_chunked, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the reference pass: no checkpointing, same values
        torch.testing.assert_close(chunked_head_logps(head, hidden, targets, chunk=4), plain.detach())


def test_liger_head_is_refused_where_it_cannot_run():
    from currydpo.errors import CurryError
    from currydpo.training.logprobs import resolve_lm_head

    head = torch.nn.Linear(4, 10)
    assert resolve_lm_head("auto", head, torch.device("cpu")) == "chunked"  # CPU: the torch implementation
    assert resolve_lm_head("off", head, torch.device("cpu")) == "off"
    with pytest.raises(CurryError, match="liger needs CUDA"):
        resolve_lm_head("liger", head, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Liger's kernel is Triton: needs CUDA")
def test_liger_head_equals_plain_head_on_cuda():
    pytest.importorskip("liger_kernel")
    from currydpo.training.logprobs import liger_self_check

    assert liger_self_check(torch.device("cuda"))  # per-token values and gradients match the torch path


@pytest.mark.parametrize("kernel", ["chunked", "off", "auto"])
def test_one_lm_head_kernel_for_policy_reference_heldout_and_dynamic_difficulty(kernel, tmp_path, tiny_model_dir,
                                                                               monkeypatch):
    """model.fused_logprobs reaches every log-prob pass of a run, not only the policy's training forward,
    resolved once (auto is chunked on CPU): no pass sees the raw auto."""
    import json

    from currydpo.training import loop, responses
    from currydpo.training.logprobs import response_logps as real

    from conftest import make_records, tiny_config

    seen = []

    def recording(*args, lm_head="auto", **kwargs):
        seen.append(lm_head)
        return real(*args, lm_head=lm_head, **kwargs)

    monkeypatch.setattr(responses, "response_logps", recording)
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", model={"fused_logprobs": kernel},
                      data={"eval_fraction": 0.25}, curriculum={"schedule": "self-paced", "stages": 2},
                      optim={"total_updates": 4})
    loop.train(cfg, make_records(n_prompts=12))
    resolved = {"auto": "chunked"}.get(kernel, kernel)
    assert len(seen) > 6 and set(seen) == {resolved}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["resolved"]["lm_head"] == resolved
