"""Sequence log-probabilities of responses given their prompts.

``response_logps`` returns, per sequence, the sum over response tokens of
log p(token | prompt, earlier response tokens) and the number of response tokens.
Length-normalised log-probs (SimPO, ORPO, IPO à la TRL, WPO) are ``logps / n_tokens``,
computed by the callers.

Fast path: only the logits that are used are built. The backbone gives the last hidden
states (B, T, H); the positions that predict a response token are gathered (N, H) and
only those go through the output embedding (N, V), so the (B, T, V) logits tensor never
exists. This is exact for models whose logits are ``lm_head(last_hidden_state)``; models
that post-process logits (Gemma-2 ``final_logit_softcapping``, Cohere ``logit_scale``,
Granite ``logits_scaling``, ...), models without ``get_output_embeddings``, prompt-learning
PEFT adapters and DDP wrappers (whose forward must be called for gradient synchronisation)
use the full forward instead, with the same result. Under FSDP2 (training/sharding.py) the
two pieces run together as a forward of the root module, so its hooks gather and release
the root's parameter shards and reduce their gradients exactly as ``model(...)`` would.
The LM head itself runs in token chunks recomputed in the backward (``lm_head="chunked"``, or Liger's fused
kernel on CUDA: `head_logps`), so not even the (N, V) logits are kept for the backward.

Packed path (``packing=True``, the default where the model allows it): no padding is
computed and a prompt shared by several responses of the batch is computed once. The
responses of one prompt become one segment ``[prompt, resp1, resp2, ...]``; segments are
packed first-fit-decreasing into rows no longer than the longest segment. Position ids
restart at 0 for every prompt and continue from the prompt's end for *each* response,
and a 4D attention mask lets a prompt token see earlier tokens of its prompt, and a
response token see its prompt and the earlier tokens of its own response only. Every
response therefore sees exactly the context it would see alone, so the log-probs (and
their gradients) equal the padded path's up to float summation order; the first token
of every response of a segment is predicted from the same (shared) last prompt position.
This needs a model whose attention takes a custom 4D mask and rotary position ids from
``position_ids``: the Llama-family types in ``_PACKABLE_TYPES`` with the ``sdpa``, ``eager``
or ``flex_attention`` implementation (flex gets the mask as a FlexAttention ``BlockMask``, so
blocks no query may see are skipped) and no sliding window shorter than a row. Anything
else (flash-attention kernels, ALiBi/absolute-position models, prompt-learning PEFT)
uses the padded path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import CurryError
from .sharding import is_sharded
from .tokenize import Encoded

# Config fields that mean "logits are not just lm_head(hidden)"; value that means "no-op".
_LOGIT_POSTPROCESSING = {"final_logit_softcapping": None, "logit_scale": 1.0, "output_multiplier": 1.0,
                         "lm_head_multiplier": 1.0, "logits_scaling": 1.0}


def unwrap_peft(model):
    """The model a peft.PeftModel wraps (LoRA-style adapters are injected into its modules in place), the model
    itself when it is not one, or None for prompt-learning adapters: their virtual tokens are prepended, so our
    positions, masks and split forward would not line up."""
    if not (hasattr(model, "peft_config") and hasattr(model, "get_base_model")):
        return model
    cfg = model.peft_config.get(getattr(model, "active_adapter", None) or "default")
    if cfg is None or getattr(cfg, "is_prompt_learning", False):
        return None
    return model.get_base_model()


def split_model(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(backbone, lm_head) if logits == lm_head(backbone(...).last_hidden_state), else None."""
    m = unwrap_peft(model)
    if m is None:
        return None
    if not hasattr(m, "config") or not hasattr(m, "get_output_embeddings"):
        return None  # e.g. DDP/FSDP wrappers: go through their forward
    config = m.config.get_text_config() if hasattr(m.config, "get_text_config") else m.config
    for key, neutral in _LOGIT_POSTPROCESSING.items():
        value = getattr(config, key, None)
        if value is not None and value != neutral:
            return None
    head = m.get_output_embeddings()
    backbone = getattr(m, "base_model", None)
    if head is None or backbone is None or backbone is m:
        return None
    return backbone, head


def _backbone_then_head(backbone, head, at: Tensor, targets: Tensor, lm_head: str, **inputs) -> Tensor:
    hidden = backbone(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
    picked = hidden.reshape(-1, hidden.size(-1))[at].to(head.weight.device)  # (N, H): only the used positions
    return head_logps(head, picked, targets, lm_head)  # (N,)


_ROOT_FORWARD = "currydpo_head_logits"


def _head_logps(model, split, at: Tensor, targets: Tensor, lm_head: str, **inputs) -> Tensor:
    """log p of ``targets`` (N,) at the flat positions ``at`` of the inputs, through the backbone and the
    LM head (`head_logps` with ``lm_head``).

    Under FSDP2 the two run inside one forward of the root module, registered with
    ``register_fsdp_forward_method``: its pre-forward hook all-gathers the root's own shards
    (embeddings, final norm, LM head), its post-forward hook frees them and hooks the backward
    that reduce-scatters their gradients. Calling the pieces directly would see only this
    process's shards.
    """
    if not is_sharded(model):
        return _backbone_then_head(*split, at, targets, lm_head, **inputs)
    if _ROOT_FORWARD not in vars(model):  # once per model
        from torch.distributed.fsdp import register_fsdp_forward_method

        backbone, head = split
        setattr(model, _ROOT_FORWARD, lambda at, t, mode, **kw: _backbone_then_head(backbone, head, at, t, mode, **kw))
        register_fsdp_forward_method(model, _ROOT_FORWARD)
    return getattr(model, _ROOT_FORWARD)(at, targets, lm_head, **inputs)


# Model types whose decoder takes a custom 4D mask as-is (transformers' create_causal_mask
# returns a 4D mask unchanged) and whose positions come only from rotary ``position_ids``.
_PACKABLE_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "olmo",
                   "olmo2", "granite", "smollm3", "gemma"}
_PACKABLE_ATTENTION = {"sdpa", "eager", "flex_attention"}


def _config(model):
    m = unwrap_peft(getattr(model, "module", model))  # DDP-style wrappers, then peft
    if m is None:
        return None
    config = getattr(m, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return config


def packing_supported(model, row_length: int | None = None) -> bool:
    """Whether ``response_logps(..., packing=True)`` can pack for ``model`` (else it pads)."""
    config = _config(model)
    if config is None or getattr(config, "model_type", None) not in _PACKABLE_TYPES:
        return False
    if getattr(config, "_attn_implementation", None) not in _PACKABLE_ATTENTION:
        return False
    window = getattr(config, "sliding_window", None)
    sliding = window is not None and getattr(config, "use_sliding_window", True)
    return not (sliding and (row_length is None or row_length > window))


@dataclass
class Packed:
    """Packed rows: input_ids/position_ids (R, L); per position its segment (a prompt and its responses;
    -1 = padding) and part (0 = prompt, k = k-th response; -1 = padding), both (R, L); and per response
    token the flat position (into R * L) that predicts it, the token, and the batch row it belongs to
    (all (N,))."""

    input_ids: Tensor
    position_ids: Tensor
    segment: Tensor
    part: Tensor
    predict_at: Tensor
    targets: Tensor
    owner: Tensor
    n_tokens: Tensor

    @property
    def allowed(self) -> Tensor:
        """The dense "query may attend to key" mask (R, 1, L, L) bool (see `may_attend`)."""
        idx = torch.arange(self.segment.size(1), device=self.segment.device)
        seg, part = self.segment, self.part
        return may_attend(idx[:, None], idx[None, :], seg[:, :, None], seg[:, None, :], part[:, :, None],
                          part[:, None, :])[:, None]

    def block_mask(self, device):
        """The same mask as a FlexAttention ``BlockMask``: blocks where no query may see a key are skipped."""
        from torch.nn.attention.flex_attention import create_block_mask

        seg, part = self.segment.to(device), self.part.to(device)

        def mask_mod(b, h, q, k):
            return may_attend(q, k, seg[b, q], seg[b, k], part[b, q], part[b, k])

        R, L = seg.shape
        return create_block_mask(mask_mod, R, None, L, L, device=device)


def may_attend(q, k, seg_q, seg_k, part_q, part_k):
    """Query position q may see key position k: causal, same segment, and the key is in the prompt or in
    q's own response (padding is segment -1, part -1: it sees earlier padding only, so no row is empty)."""
    return (q >= k) & (seg_q == seg_k) & ((part_k == 0) | (part_q == part_k))


def _pack(batch: list[Encoded], pad_token_id: int) -> Packed:
    """Group responses by prompt into segments and pack the segments into rows (see module doc)."""
    if not batch:
        raise ValueError("response_logps needs a non-empty batch")
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, e in enumerate(batch):
        if not e.prompt_ids or not e.response_ids:
            raise ValueError(f"sequence {b} has {len(e.prompt_ids)} prompt and {len(e.response_ids)} response "
                             "tokens; both must be >= 1")
        groups.setdefault(e.prompt_ids, []).append(b)
    segments = sorted(((len(p) + sum(len(batch[b].response_ids) for b in bs), p, bs) for p, bs in groups.items()),
                      key=lambda s: -s[0])
    L = segments[0][0]
    rows: list[list[tuple]] = []  # first-fit decreasing
    free: list[int] = []
    for seg in segments:
        r = next((i for i, f in enumerate(free) if f >= seg[0]), None)
        if r is None:
            rows.append([])
            free.append(L)
            r = len(rows) - 1
        rows[r].append(seg)
        free[r] -= seg[0]
    R = len(rows)
    ids = torch.full((R, L), pad_token_id, dtype=torch.long)
    pos = torch.zeros((R, L), dtype=torch.long)
    seg_id = torch.full((R, L), -1, dtype=torch.long)  # padding: its own segment -1
    part = torch.full((R, L), -1, dtype=torch.long)  # 0 = prompt, k = k-th response of the segment
    predict_at, targets, owner = [], [], []
    for r, row in enumerate(rows):
        at = 0
        for s, (_, prompt, bs) in enumerate(row):
            P = len(prompt)
            ids[r, at:at + P] = torch.tensor(prompt)
            pos[r, at:at + P] = torch.arange(P)
            seg_id[r, at:at + P] = s
            part[r, at:at + P] = 0
            last_prompt = r * L + at + P - 1
            at += P
            for k, b in enumerate(bs, start=1):
                resp = batch[b].response_ids
                n = len(resp)
                ids[r, at:at + n] = torch.tensor(resp)
                pos[r, at:at + n] = torch.arange(P, P + n)
                seg_id[r, at:at + n] = s
                part[r, at:at + n] = k
                predict_at += [last_prompt] + list(range(r * L + at, r * L + at + n - 1))
                targets += resp
                owner += [b] * n
                at += n
    order = sorted(range(len(owner)), key=lambda j: owner[j])  # batch-major, like the padded path
    return Packed(ids, pos, seg_id, part, torch.tensor(predict_at)[order], torch.tensor(targets)[order],
                  torch.tensor(owner)[order], torch.tensor([len(e.response_ids) for e in batch]))


def _packed_token_logps(model, packed: Packed, split, device, lm_head: str) -> Tensor:
    """log p of every response token (N,), batch-major, from the packed rows."""
    config = _config(model)
    ids, pos = packed.input_ids.to(device), packed.position_ids.to(device)
    mask = _packed_mask(packed, config._attn_implementation, next(model.parameters()).dtype, device)
    at = packed.predict_at.to(device)
    if split is not None:
        return _head_logps(model, split, at, packed.targets, lm_head, input_ids=ids, attention_mask=mask,
                           position_ids=pos)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits  # (R, L, V)
    return _token_logps(logits.reshape(-1, logits.size(-1))[at], packed.targets.to(logits.device))


def _packed_mask(packed: Packed, attn_implementation: str, dtype: torch.dtype, device):
    """The packing's attention mask in the form the attention implementation takes."""
    if attn_implementation == "flex_attention":
        return packed.block_mask(device)
    allowed = packed.allowed.to(device)
    if attn_implementation == "eager":  # eager adds the mask to the scores
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return allowed  # sdpa takes a boolean "may attend" mask


def _pad(batch: list[Encoded], pad_token_id: int, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Right-padded (input_ids (B, T), attention_mask (B, T), prediction mask (B, T-1), n_tokens (B,))."""
    if not batch:
        raise ValueError("response_logps needs a non-empty batch")
    T = max(len(e) for e in batch)
    ids = torch.full((len(batch), T), pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(batch), T), dtype=torch.long)
    pred = torch.zeros((len(batch), T - 1), dtype=torch.bool)
    for b, e in enumerate(batch):
        P, R = len(e.prompt_ids), len(e.response_ids)
        if P == 0 or R == 0:
            raise ValueError(f"sequence {b} has {P} prompt and {R} response tokens; both must be >= 1")
        ids[b, : P + R] = torch.tensor(e.prompt_ids + e.response_ids)
        attn[b, : P + R] = 1
        pred[b, P - 1: P + R - 1] = True  # position j predicts token j + 1
    n = torch.tensor([len(e.response_ids) for e in batch])
    return ids.to(device), attn.to(device), pred.to(device), n.to(device)


def response_logps(model, batch: list[Encoded], pad_token_id: int, *, fast: bool = True,
                   packing: bool = True, lm_head: str = "auto") -> tuple[Tensor, Tensor]:
    """Summed log-prob of each response given its prompt.

    Args:
        model: a causal LM (HF ``PreTrainedModel``, PEFT-wrapped, or any module whose
            forward takes ``input_ids``/``attention_mask`` and returns ``.logits``).
        batch: B encoded sequences; they are right-padded with ``pad_token_id``.
        fast: use the hidden-state gather path where the model allows it (see module doc).
        packing: pack without padding and compute each shared prompt once, where the model
            allows it (``packing_supported``); otherwise (or ``False``) right-pad.
        lm_head: how the fast path turns hidden states into log-probs (``model.fused_logprobs``):
            ``auto`` | ``chunked`` | ``liger`` | ``off`` (see `head_logps`).

    Returns:
        ``(logps (B,) float32 (float64 for a float64 model), n_tokens (B,) long)``: the sum over
        response tokens of their log-probabilities (prompt and padding masked out) and the
        response lengths.
        Gradients flow through ``logps`` if grad is enabled.
    """
    device = next(model.parameters()).device
    split = split_model(model) if fast else None
    packed = _pack(batch, pad_token_id) if packing and packing_supported(model, row_length=0) else None
    if packed is not None and packing_supported(model, row_length=packed.input_ids.size(1)):
        token_logps = _packed_token_logps(model, packed, split, device, lm_head)  # (N,)
        return _per_row(token_logps, packed.owner, len(batch)), packed.n_tokens.to(token_logps.device)
    ids, attn, pred, n_tokens = _pad(batch, pad_token_id, device)
    targets = ids[:, 1:][pred]  # (N,)
    if split is not None:
        at = torch.nn.functional.pad(pred, (0, 1)).flatten().nonzero().squeeze(1)  # flat (B*T) positions, row-major
        token_logps = _head_logps(model, split, at, targets, lm_head, input_ids=ids, attention_mask=attn)  # (N,)
    else:
        full = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        full = full[:, -ids.size(1):]  # prompt-learning PEFT prepends virtual-token positions
        token_logps = _token_logps(full[:, :-1][pred], targets.to(full.device))  # from (N, V)
    rows = torch.arange(len(batch), device=device)[:, None].expand_as(pred)[pred]  # (N,)
    return _per_row(token_logps, rows, len(batch)), n_tokens.to(token_logps.device)


def _per_row(token_logps: Tensor, rows: Tensor, B: int) -> Tensor:
    rows = rows.to(token_logps.device)
    return torch.zeros(B, dtype=token_logps.dtype, device=token_logps.device).index_add(0, rows, token_logps)


def _token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log_softmax(logits)[target] per token, (N, V) -> (N,).

    Half-precision logits are upcast to float32 (float64 stays float64). Written as gather -
    logsumexp so no (N, V) log-softmax tensor is built; autograd keeps only the logits (for
    logsumexp's backward).
    """
    if logits.dtype != torch.float64:
        logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


# Logits elements per chunk of the chunked LM head (64 MiB in fp32): 341 tokens at SmolLM2's 49K vocabulary,
# 110 at Qwen2's 152K. Big enough that the (chunk, H) x (H, V) matmul runs near peak, small next to activations.
CHUNK_LOGITS = 2 ** 24
LM_HEADS = ("auto", "chunked", "liger", "off")


def _chunk_logps(head: torch.nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    return _token_logps(head(hidden), targets)


def chunked_head_logps(head: torch.nn.Module, hidden: Tensor, targets: Tensor, chunk: int | None = None) -> Tensor:
    """log p(target) per token through the LM head, ``chunk`` tokens at a time: hidden (N, H) -> (N,).

    With gradients, each chunk runs under non-reentrant activation checkpointing, so its (chunk, V)
    logits are dropped after the forward and recomputed in the backward, one chunk at a time (the
    idea of TRL's chunked log-prob kernel and Liger's fused linear cross-entropy, in plain torch, so
    any head works: tied, LoRA-wrapped, sharded). Peak logits memory is one chunk instead of (N, V);
    the price is one more LM-head forward in the backward. Values and gradients equal the plain
    ``head(hidden)`` path up to float summation order.
    """
    from torch.utils.checkpoint import checkpoint

    if chunk is None:
        chunk = max(1, CHUNK_LOGITS // max(1, head.weight.shape[0] if hasattr(head, "weight") else 1))
    targets = targets.to(hidden.device)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    out = []
    for s in range(0, hidden.size(0), chunk):
        h, t = hidden[s:s + chunk], targets[s:s + chunk]
        out.append(checkpoint(_chunk_logps, head, h, t, use_reentrant=False) if grad else _chunk_logps(head, h, t))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def _liger_logps(head: torch.nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    """Liger's fused linear cross-entropy (Triton, CUDA) with per-token output: log p = -CE."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    out = liger_fused_linear_cross_entropy(hidden, head.weight, targets.to(hidden.device), bias=head.bias,
                                           reduction="none")
    return -(out[0] if isinstance(out, tuple) else out).float()


def resolve_lm_head(mode: str, head: torch.nn.Module, device: torch.device) -> str:
    """``auto``: Liger where it applies (CUDA, liger-kernel installed, a plain ``nn.Linear`` head, and
    it passes `liger_self_check`), else ``chunked``. An explicit ``liger`` that cannot run is an error."""
    import importlib.util

    if mode not in LM_HEADS:
        raise ValueError(f"lm_head must be one of {LM_HEADS}, got {mode!r}")
    if mode not in ("auto", "liger"):
        return mode
    fits = (device.type == "cuda" and type(head) is torch.nn.Linear
            and importlib.util.find_spec("liger_kernel") is not None)
    if mode == "liger" and not fits:
        raise CurryError("model.fused_logprobs liger needs CUDA, pip install liger-kernel, and a plain nn.Linear "
                         "LM head; use chunked (the torch implementation) otherwise")
    if fits and not liger_self_check(device):
        if mode == "liger":
                raise CurryError("model.fused_logprobs liger: this liger-kernel version gives per-token gradients that "
                             "differ from the plain path (versions before its reduction='none' fix); upgrade "
                             "liger-kernel or use chunked")
        return "chunked"
    return "liger" if fits else "chunked"


_LIGER_OK: dict[str, bool] = {}


def liger_self_check(device: torch.device) -> bool:
    """Once per process: Liger's per-token log-probs and gradients equal the torch path on a small
    random problem. Older liger-kernel versions scale reduction='none' gradients wrongly."""
    key = str(device)
    if key not in _LIGER_OK:
        g = torch.Generator(device="cpu").manual_seed(0)
        head = torch.nn.Linear(64, 1000, bias=False).to(device)
        with torch.no_grad():
            head.weight.copy_(torch.randn(1000, 64, generator=g))
        h = torch.randn(37, 64, generator=g).to(device).requires_grad_()
        t = torch.randint(0, 1000, (37,), generator=g).to(device)
        w = torch.randn(37, generator=g).to(device)
        try:
            ours = _liger_logps(head, h, t)
            (gh, gw) = torch.autograd.grad((ours * w).sum(), (h, head.weight))
            ref = _token_logps(head(h), t)
            (rh, rw) = torch.autograd.grad((ref * w).sum(), (h, head.weight))
            _LIGER_OK[key] = all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in
                                 ((ours, ref), (gh, rh), (gw, rw)))
        except Exception:  # any failure to run means: do not use it
            _LIGER_OK[key] = False
    return _LIGER_OK[key]


def head_logps(head: torch.nn.Module, hidden: Tensor, targets: Tensor, mode: str = "auto") -> Tensor:
    """log p(target) per token from last hidden states (N, H) through the LM head ``mode``."""
    mode = resolve_lm_head(mode, head, hidden.device)
    if mode == "liger":
        return _liger_logps(head, hidden, targets)
    if mode == "chunked":
        return chunked_head_logps(head, hidden, targets)
    return _token_logps(head(hidden), targets.to(hidden.device))
