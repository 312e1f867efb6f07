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
PEFT adapters and distributed wrappers (DDP/FSDP, whose forward must be called for
gradient synchronisation) use the full forward instead, with the same result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .tokenize import Encoded

# Config fields that mean "logits are not just lm_head(hidden)"; value that means "no-op".
_LOGIT_POSTPROCESSING = {"final_logit_softcapping": None, "logit_scale": 1.0, "output_multiplier": 1.0,
                         "lm_head_multiplier": 1.0, "logits_scaling": 1.0}


def _split_model(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(backbone, lm_head) if logits == lm_head(backbone(...).last_hidden_state), else None."""
    m = model
    if hasattr(m, "peft_config") and hasattr(m, "get_base_model"):  # a peft.PeftModel
        cfg = m.peft_config.get(getattr(m, "active_adapter", None) or "default")
        if cfg is None or getattr(cfg, "is_prompt_learning", False):
            return None
        m = m.get_base_model()  # LoRA-style adapters are injected into these modules in place
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


def response_logps(model, batch: list[Encoded], pad_token_id: int, *, fast: bool = True) -> tuple[Tensor, Tensor]:
    """Summed log-prob of each response given its prompt.

    Args:
        model: a causal LM (HF ``PreTrainedModel``, PEFT-wrapped, or any module whose
            forward takes ``input_ids``/``attention_mask`` and returns ``.logits``).
        batch: B encoded sequences; they are right-padded with ``pad_token_id``.
        fast: use the hidden-state gather path where the model allows it (see module doc).

    Returns:
        ``(logps (B,) float32, n_tokens (B,) long)``: the sum over response tokens of their
        log-probabilities (prompt and padding masked out) and the response lengths.
        Gradients flow through ``logps`` if grad is enabled.
    """
    device = next(model.parameters()).device
    ids, attn, pred, n_tokens = _pad(batch, pad_token_id, device)
    split = _split_model(model) if fast else None
    if split is not None:
        backbone, head = split
        hidden = backbone(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state  # (B, T, H)
        picked = hidden[:, :-1][pred].to(head.weight.device)  # (N, H): positions predicting response tokens
        logits = head(picked)  # (N, V)
    else:
        full = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
        full = full[:, -ids.size(1):]  # prompt-learning PEFT prepends virtual-token positions
        logits = full[:, :-1][pred]  # (N, V)
    targets = ids[:, 1:][pred].to(logits.device)  # (N,)
    token_logps = F.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    rows = torch.arange(len(batch), device=device)[:, None].expand_as(pred)[pred].to(logits.device)  # (N,)
    logps = torch.zeros(len(batch), dtype=torch.float32, device=logits.device).index_add(0, rows, token_logps)
    return logps, n_tokens.to(logits.device)
