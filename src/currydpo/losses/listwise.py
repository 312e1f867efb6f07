"""Listwise preference losses over a prompt's ranked responses.

Every loss is a pure function of a `ListLogps` (L lists of up to N responses, padded) and
floats, and returns ``(losses (L,), rewards (L, N))``; rewards are detached. Ranks are
1-based with ties sharing a rank, and a tied group counts as one rank: no tied pair ever
contributes a term. Notation as `pairwise.py`: Δ_i = log π(y_i) − log π_ref(y_i) (summed over
the response tokens), r_i = β Δ_i. A list of two responses is a pair.

`registry.list_loss` reduces to a scalar (mean over lists) and logs TRL-style metrics, where "chosen"
are the responses of the best rank and "rejected" those of the worst, and
``rewards/accuracies`` is the fraction of the list's ordered (non-tied) pairs whose rewards
are in order; ``rewards/kendall_tau`` is Kendall's τ-b between rewards and given ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CurryError


@dataclass
class ListLogps:
    """Per-list inputs of shape (L, N), padded to the longest list; ``mask`` marks real entries."""

    policy_logps: Tensor  # summed over response tokens
    lengths: Tensor
    ranks: Tensor  # 1-based, ties share a rank (any value where ~mask)
    mask: Tensor  # bool
    reference_logps: Tensor | None = None  # None for reference-free losses
    labels: Tensor | None = None  # ψ: a quality per response (score, else from ranks), higher = better

    def beaten(self) -> Tensor:
        """(L, N, N) bool: [l, i, j] when y_j is ranked strictly below y_i (both real)."""
        m = self.mask
        return (self.ranks.unsqueeze(2) < self.ranks.unsqueeze(1)) & m.unsqueeze(2) & m.unsqueeze(1)


ListOut = tuple[Tensor, Tensor]


def _rewards(x: ListLogps, beta: float, loss: str) -> Tensor:
    if x.reference_logps is None:
        raise CurryError(f"loss '{loss}' needs reference log-probs; compute them with the reference model, "
                         f"or use the reference-free listwise loss 'pro'")
    return beta * (x.policy_logps - x.reference_logps)


def _softmax_below(scores: Tensor, beaten: Tensor, own: Tensor | None = None) -> Tensor:
    """Σ_i −log [exp(own_i) / (exp(own_i) + Σ_{j below i} exp(scores[i, j]))] over each i with someone
    below it; ``scores`` (L, N, N) are response j's scores as seen from position i."""
    own = torch.diagonal(scores, dim1=1, dim2=2) if own is None else own
    others = scores.masked_fill(~beaten, -math.inf)
    lse = torch.logsumexp(torch.cat([own.unsqueeze(2), others], dim=2), dim=2)  # (L, N)
    has_below = beaten.any(dim=2)
    return torch.where(has_below, lse - own, torch.zeros_like(own)).sum(dim=1)


def plackett_luce(x: ListLogps, *, beta: float) -> ListOut:
    """Plackett-Luce DPO, Rafailov et al. 2023 appendix A.3 (eq. 19 with the DPO reward r = βΔ):
    −Σ_k log [exp(r_τ(k)) / Σ_{j ≥ k} exp(r_τ(j))]. A tied group is one rank: each response's
    denominator holds itself and the responses ranked strictly below it. Summed log-probs; with
    two responses it is DPO's −log σ(r_w − r_l)."""
    r = _rewards(x, beta, "plackett-luce")
    n = r.shape[1]
    return _softmax_below(r.unsqueeze(1).expand(-1, n, -1), x.beaten()), r.detach()


def pro(x: ListLogps, *, beta: float, pro_sft_weight: float, pro_score_temperature: bool) -> ListOut:
    """PRO, Song et al. 2024 ("Preference Ranking Optimization for Human Alignment") eq. 9, reference-free:
    −Σ_k log [exp(a_k/T_k^k) / Σ_{i ≥ k} exp(a_i/T_k^i)], a = log π(y)/|y| (length-mean), plus the SFT
    term w (K−1)² · (−log π(y_1)) on the best response (summed log-prob; w = 0.05 and the (K−1)² scale as
    the authors' code, K the list size; a tied best group shares it as a mean). With
    ``pro_score_temperature`` (eq. 11): 1/T_k^i = ψ_k − ψ_i and 1/T_k^k = max_i (ψ_k − ψ_i), else T = 1.
    Rewards are β a, as simpo's."""
    a = x.policy_logps / x.lengths.clamp(min=1)
    beaten = x.beaten()
    n = a.shape[1]
    scores = a.unsqueeze(1).expand(-1, n, -1)
    own = a
    if pro_score_temperature:
        if x.labels is None:
            raise CurryError("pro_score_temperature needs scores; the data must have scores (ranks alone are not "
                             "enough), or set loss.pro_score_temperature false")
        gap = (x.labels.unsqueeze(2) - x.labels.unsqueeze(1)).to(a.dtype)  # (L, N, N): ψ_i − ψ_j
        inv_t = torch.where(beaten, gap, torch.zeros_like(gap))
        scores = scores * inv_t
        own = a * inv_t.amax(dim=2)
    rank_loss = _softmax_below(scores, beaten, own)
    top = (x.ranks == torch.where(x.mask, x.ranks, x.ranks.new_tensor(10**9)).amin(dim=1, keepdim=True)) & x.mask
    best_nll = -(x.policy_logps * top).sum(dim=1) / top.sum(dim=1)
    k = x.mask.sum(dim=1).to(a.dtype)
    return rank_loss + pro_sft_weight * (k - 1) ** 2 * best_nll, beta * a.detach()


def lipo(x: ListLogps, *, beta: float) -> ListOut:
    """LiPO-λ, Liu et al. 2024 ("LiPO: Listwise Preference Optimization through Learning-to-Rank") eq. 8:
    −Σ_{ψ_i > ψ_j} Δ_ij log σ(r_i − r_j), with the LambdaLoss weight Δ_ij = |G_i − G_j| ·
    |1/D(τ_i) − 1/D(τ_j)|, gain G = 2^ψ − 1, discount D(τ) = log₂(1 + τ) and τ_i the position of y_i
    when the list is sorted by the current rewards (detached). ψ are the labels (scores; from ranks, the
    number of rank groups below). Summed log-probs."""
    if x.labels is None:
        raise CurryError("loss 'lipo' needs labels (scores or ranks) for its gains")
    r = _rewards(x, beta, "lipo")
    beaten = x.beaten()
    with torch.no_grad():
        masked = r.masked_fill(~x.mask, -math.inf)
        order = masked.argsort(dim=1, descending=True, stable=True)
        tau = torch.empty_like(order).scatter_(1, order, torch.arange(1, r.shape[1] + 1).expand_as(order))
        inv_d = 1.0 / torch.log2(1.0 + tau.to(r.dtype))
        gain = torch.exp2(x.labels.to(r.dtype)) - 1
        delta = (gain.unsqueeze(2) - gain.unsqueeze(1)).abs() * (inv_d.unsqueeze(2) - inv_d.unsqueeze(1)).abs()
    pair_terms = -F.logsigmoid(r.unsqueeze(2) - r.unsqueeze(1)) * delta
    return (pair_terms * beaten).sum(dim=(1, 2)), r.detach()


def kendall_tau(rewards: Tensor, ranks: Tensor, mask: Tensor) -> Tensor:
    """Kendall's τ-b per list between rewards (higher = better) and ranks (lower = better); NaN when
    either side is constant. (L,)"""
    m = (mask.unsqueeze(2) & mask.unsqueeze(1)).triu(diagonal=1)
    a = torch.sign(rewards.unsqueeze(2) - rewards.unsqueeze(1))
    b = torch.sign(ranks.unsqueeze(1) - ranks.unsqueeze(2)).to(a.dtype)  # rank_j − rank_i: + when i is better
    concordant = (a * b * m).sum(dim=(1, 2))
    ties_a, ties_b = ((a == 0) & m).sum(dim=(1, 2)), ((b == 0) & m).sum(dim=(1, 2))
    n0 = m.sum(dim=(1, 2))
    return concordant / torch.sqrt(((n0 - ties_a) * (n0 - ties_b)).to(a.dtype))


def list_metrics(x: ListLogps, rewards: Tensor) -> dict[str, float]:
    """TRL-style metrics of a batch of lists (means over lists)."""
    big = x.ranks.new_tensor(10**9)
    best = (x.ranks == torch.where(x.mask, x.ranks, big).amin(dim=1, keepdim=True)) & x.mask
    worst = (x.ranks == torch.where(x.mask, x.ranks, -big).amax(dim=1, keepdim=True)) & x.mask

    def mean_over(v: Tensor, sel: Tensor) -> Tensor:
        return (v * sel).sum(dim=1) / sel.sum(dim=1)

    chosen, rejected = mean_over(rewards, best), mean_over(rewards, worst)
    beaten = x.beaten()
    right = ((rewards.unsqueeze(2) > rewards.unsqueeze(1)) & beaten).sum(dim=(1, 2))
    tau = kendall_tau(rewards, x.ranks, x.mask)
    lp = x.policy_logps.detach()
    return {
        "rewards/chosen": chosen.mean().item(), "rewards/rejected": rejected.mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "rewards/accuracies": (right / beaten.sum(dim=(1, 2)).clamp(min=1)).float().mean().item(),
        "rewards/kendall_tau": tau.nanmean().item(),
        "logps/chosen": mean_over(lp, best).mean().item(), "logps/rejected": mean_over(lp, worst).mean().item(),
        "list_size": x.mask.sum(dim=1).float().mean().item(),
    }
