"""TRL's ``logits/chosen`` and ``logits/rejected`` for the held-out metrics: the mean logit over the response
tokens and the vocabulary, as DPOTrainer logs them (a drifting logit scale shows before the rewards do).

Our log-prob path never holds a (tokens, vocab) logit tensor (the LM head runs in chunks), so these come
from one extra no-grad forward per held-out response, a few responses at a time: a held-out evaluation
costs about twice its scoring. Training lines do not carry them (it would add a forward to every update)."""

from __future__ import annotations

import torch


@torch.no_grad()
def mean_response_logits(model, encoded: list, pad_token_id: int, device: torch.device,
                         batch_size: int = 4) -> torch.Tensor:
    """(R,) the mean logit of each (prompt, response) over the positions that predict its response tokens."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        seqs = [list(e.prompt_ids) + list(e.response_ids) for e in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad_token_id] * (width - len(s)) for s in seqs], device=device)  # (B, T)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        means = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().mean(-1)  # (B, T)
        for b, e in enumerate(chunk):  # position t predicts token t + 1: the response's from len(prompt) - 1
            p, n = len(e.prompt_ids), len(e.response_ids)
            out.append(means[b, p - 1:p - 1 + n].mean().cpu())
    model.train(was_training)
    return torch.stack(out) if out else torch.empty(0)


def held_out_logits(run, rows: list[int], chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    """``logits/chosen`` and ``logits/rejected``: means over the held-out pairs (``chosen``/``rejected`` index
    ``rows``), each response computed once."""
    model = run.accelerator.unwrap_model(run.model)
    means = mean_response_logits(model, [run.table.encoded[r] for r in rows], run.tokenizer.pad_token_id,
                                 run.accelerator.device)
    return {"logits/chosen": means[chosen].mean().item(), "logits/rejected": means[rejected].mean().item()}
