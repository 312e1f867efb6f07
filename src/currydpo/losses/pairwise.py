"""Pairwise preference losses on sequence log-probabilities.

Every loss is a pure function of a `PairLogps` and floats and returns
``(losses (B,), chosen_rewards (B,), rejected_rewards (B,))``; rewards are detached.
Notation: Δ_w = log π(y_w) − log π_ref(y_w), Δ_l likewise (log-probs summed over the
response tokens), h = β (Δ_w − Δ_l). Unless a loss says otherwise, its rewards are
β Δ_w and β Δ_l. `registry.LOSSES` maps each name to its `LossSpec` (function, needs a
reference, options it takes); `registry.pair_loss` combines one or several of them, adds the
WPO weight and the RPO NLL term, and reduces to a scalar.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CurryError


@dataclass
class PairLogps:
    """Per-pair inputs, all of shape (B,). Log-probs are summed over response tokens."""

    policy_chosen_logps: Tensor
    policy_rejected_logps: Tensor
    chosen_lengths: Tensor
    rejected_lengths: Tensor
    reference_chosen_logps: Tensor | None = None  # None for reference-free losses
    reference_rejected_logps: Tensor | None = None
    score_gaps: Tensor | None = None  # s_w − s_l from the ratings, for mmpo

    def mean_chosen(self) -> Tensor:
        return self.policy_chosen_logps / self.chosen_lengths.clamp(min=1)

    def mean_rejected(self) -> Tensor:
        return self.policy_rejected_logps / self.rejected_lengths.clamp(min=1)


LossOut = tuple[Tensor, Tensor, Tensor]
# Named in the error of a loss that gets no reference log-probs (the registry's reference-free pair losses;
# tests/losses/test_registry.py keeps the two equal: the registry imports this module, not back).
REFERENCE_FREE = "simpo, orpo, sft"


def _logratios(x: PairLogps, loss: str) -> tuple[Tensor, Tensor]:
    if x.reference_chosen_logps is None or x.reference_rejected_logps is None:
        raise CurryError(f"loss '{loss}' needs reference log-probs; compute them with the reference model, "
                         f"or use a reference-free loss ({REFERENCE_FREE})")
    return x.policy_chosen_logps - x.reference_chosen_logps, x.policy_rejected_logps - x.reference_rejected_logps


def _rewards(beta: float, dw: Tensor, dl: Tensor) -> tuple[Tensor, Tensor]:
    return beta * dw.detach(), beta * dl.detach()


def dpo(x: PairLogps, *, beta: float) -> LossOut:
    """DPO, Rafailov et al. 2023 eq. 7: −log σ(h). Summed log-probs."""
    dw, dl = _logratios(x, "dpo")
    return -F.logsigmoid(beta * (dw - dl)), *_rewards(beta, dw, dl)


def cdpo(x: PairLogps, *, beta: float, label_smoothing: float) -> LossOut:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): labels flipped with
    probability ε, so the target is soft: −(1−ε) log σ(h) − ε log σ(−h). Summed log-probs."""
    dw, dl = _logratios(x, "cdpo")
    h = beta * (dw - dl)
    eps = label_smoothing
    return -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h), *_rewards(beta, dw, dl)


def robust(x: PairLogps, *, beta: float, label_smoothing: float) -> LossOut:
    """Robust DPO (rDPO), Chowdhury et al. 2024 §3: the unbiased loss under label-flip rate ε,
    [−(1−ε) log σ(h) + ε log σ(−h)] / (1 − 2ε), ε in [0, 0.5). Summed log-probs."""
    eps = label_smoothing
    if not 0.0 <= eps < 0.5:
        raise CurryError(f"loss 'robust' needs label_smoothing in [0, 0.5), got {eps}")
    dw, dl = _logratios(x, "robust")
    h = beta * (dw - dl)
    loss = (-(1 - eps) * F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1 - 2 * eps)
    return loss, *_rewards(beta, dw, dl)


def ipo(x: PairLogps, *, beta: float, ipo_length_normalise: bool = True) -> LossOut:
    """IPO, Azar et al. 2023 eq. 17: (Δ_w − Δ_l − 1/(2β))², β playing τ.

    ``ipo_length_normalise=True`` (default, as TRL, confirmed with the IPO authors): Δ_w and
    Δ_l are divided by their response lengths (per-token log-ratios). False: summed
    log-ratios, as in the DPO reference implementation. Rewards are β Δ (summed) either way.
    """
    dw, dl = _logratios(x, "ipo")
    if ipo_length_normalise:
        gap = dw / x.chosen_lengths.clamp(min=1) - dl / x.rejected_lengths.clamp(min=1)
    else:
        gap = dw - dl
    return (gap - 1 / (2 * beta)) ** 2, *_rewards(beta, dw, dl)


def hinge(x: PairLogps, *, beta: float) -> LossOut:
    """SLiC-HF calibration hinge, Zhao et al. 2023 eq. 1 with margin δ = 1/β, scaled by β:
    max(0, 1 − h). Summed log-probs."""
    dw, dl = _logratios(x, "hinge")
    return torch.relu(1 - beta * (dw - dl)), *_rewards(beta, dw, dl)


def simpo(x: PairLogps, *, beta: float, gamma: float) -> LossOut:
    """SimPO, Meng et al. 2024 eq. 6: −log σ(β ā_w − β ā_l − γ), ā = log π(y)/|y| (length-mean),
    reference-free. Rewards are β ā."""
    rw, rl = beta * x.mean_chosen(), beta * x.mean_rejected()
    return -F.logsigmoid(rw - rl - gamma), rw.detach(), rl.detach()


def orpo(x: PairLogps, *, beta: float) -> LossOut:
    """ORPO, Hong et al. 2024 eqs. 6–7: −ā_w − λ log σ(log odds(y_w) − log odds(y_l)),
    odds(y) = p/(1−p) with p = exp(ā), ā the length-mean log-prob; λ = β (as TRL's ORPO).
    The NLL is per pair on the length-mean chosen log-prob (the paper averages tokens over
    the batch). Reference-free; rewards are β ā."""
    aw, al = x.mean_chosen(), x.mean_rejected()
    log_odds = (aw - al) - (torch.log1p(-torch.exp(aw)) - torch.log1p(-torch.exp(al)))
    loss = -aw - beta * F.logsigmoid(log_odds)
    return loss, beta * aw.detach(), beta * al.detach()


def mmpo(x: PairLogps, *, beta: float, gamma: float) -> LossOut:
    """Margin matching (MMPO, Kim et al. 2024 §3): soft label p* = σ(γ (s_w − s_l)) from the
    score gap; loss −p* log σ(h) − (1 − p*) log σ(−h). Summed log-probs."""
    if x.score_gaps is None:
        raise CurryError("loss 'mmpo' needs score gaps; the data must have scores (ranks alone are not enough)")
    dw, dl = _logratios(x, "mmpo")
    h = beta * (dw - dl)
    p = torch.sigmoid(gamma * x.score_gaps.to(h.dtype))
    return -p * F.logsigmoid(h) - (1 - p) * F.logsigmoid(-h), *_rewards(beta, dw, dl)


def discopop(x: PairLogps, *, beta: float, discopop_tau: float = 0.05) -> LossOut:
    """DiscoPOP's log-ratio modulated loss, Lu et al. 2024 ("Discovering Preference Optimization
    Algorithms with and for LLMs") eq. 5: with m = σ(h/τ), (1 − m)·(−log σ(h)) + m·exp(−h). τ = 0.05
    as the paper. Summed log-probs."""
    dw, dl = _logratios(x, "discopop")
    h = beta * (dw - dl)
    m = torch.sigmoid(h / discopop_tau)
    return (1 - m) * -F.logsigmoid(h) + m * torch.exp(-h), *_rewards(beta, dw, dl)


def exo(x: PairLogps, *, beta: float, label_smoothing: float) -> LossOut:
    """EXO-pref, Ji et al. 2024 ("Towards Efficient Exact Optimization of Language Model Alignment")
    eq. 16 for K = 2: KL(q ‖ p) with q = (σ(h), σ(−h)) the policy's and p = (1 − ε, ε) the target
    distribution over {chosen, rejected}; ε = label_smoothing > 0 (the paper suggests 1e-3). Summed log-probs."""
    if not 0.0 < label_smoothing < 0.5:
        raise CurryError(f"loss 'exo' needs label_smoothing (its epsilon) in (0, 0.5), got {label_smoothing}; "
                         f"the EXO paper uses 1e-3")
    dw, dl = _logratios(x, "exo")
    h = beta * (dw - dl)
    eps = torch.tensor(label_smoothing, dtype=h.dtype)
    kl = torch.sigmoid(h) * (F.logsigmoid(h) - torch.log1p(-eps)) + torch.sigmoid(-h) * (F.logsigmoid(-h) - eps.log())
    return kl, *_rewards(beta, dw, dl)


def nca(x: PairLogps, *, beta: float) -> LossOut:
    """NCA, Chen et al. 2024 ("Noise Contrastive Alignment of Language Models with Explicit Rewards")
    eq. 11 for a pair: −log σ(βΔ_w) − ½ log σ(−βΔ_w) − ½ log σ(−βΔ_l) (absolute rewards, not their
    difference). Summed log-probs."""
    dw, dl = _logratios(x, "nca")
    rw, rl = beta * dw, beta * dl
    return -F.logsigmoid(rw) - 0.5 * F.logsigmoid(-rw) - 0.5 * F.logsigmoid(-rl), *_rewards(beta, dw, dl)


def bco_pair(x: PairLogps, *, beta: float) -> LossOut:
    """BCO on pairs, Jung et al. 2024 ("Binary Classifier Optimization") eq. 6 without the reward shift δ:
    −log σ(βΔ_w) − log σ(−βΔ_l). The paper subtracts δ, a running mean of the rewards; TRL 1.16's
    ``bco_pair`` (which we match) is stateless, so we are too. Summed log-probs."""
    dw, dl = _logratios(x, "bco-pair")
    return -F.logsigmoid(beta * dw) - F.logsigmoid(-beta * dl), *_rewards(beta, dw, dl)


def apo_zero(x: PairLogps, *, beta: float) -> LossOut:
    """APO-zero, D'Oosterlinck et al. 2024 ("Anchored Preference Optimization") eq. 7, for chosen answers
    better than the model's own: (1 − σ(βΔ_w)) + σ(βΔ_l). Summed log-probs."""
    dw, dl = _logratios(x, "apo-zero")
    return 1 - torch.sigmoid(beta * dw) + torch.sigmoid(beta * dl), *_rewards(beta, dw, dl)


def apo_down(x: PairLogps, *, beta: float) -> LossOut:
    """APO-down, D'Oosterlinck et al. 2024 eq. 8, for chosen answers worse than the model's own:
    σ(βΔ_w) + (1 − σ(h)). Summed log-probs."""
    dw, dl = _logratios(x, "apo-down")
    return torch.sigmoid(beta * dw) + 1 - torch.sigmoid(beta * (dw - dl)), *_rewards(beta, dw, dl)


def sigmoid_norm(x: PairLogps, *, beta: float) -> LossOut:
    """Length-normalised DPO (TRL's ``sigmoid_norm``; LN-DPO, Ahrabian et al. 2024): −log σ(β (Δ_w/|y_w| −
    Δ_l/|y_l|)), per-token log-ratios. Rewards are β Δ (summed), as TRL logs them."""
    dw, dl = _logratios(x, "sigmoid-norm")
    gap = dw / x.chosen_lengths.clamp(min=1) - dl / x.rejected_lengths.clamp(min=1)
    return -F.logsigmoid(beta * gap), *_rewards(beta, dw, dl)


def sft(x: PairLogps, *, beta: float) -> LossOut:
    """NLL of the chosen response, −ā_w (length-mean), reference-free: the SFT term of RPO (Pang et al. 2024)
    and of MPO-style combinations. TRL's ``sft`` averages tokens over the whole batch instead; the two agree
    for one pair and differ only in how pairs of unequal length are weighted. Rewards are β ā."""
    aw, al = x.mean_chosen(), x.mean_rejected()
    return -aw, beta * aw.detach(), beta * al.detach()


def mrpo_reference(chosen: Tensor, rejected: Tensor, *, eta: float) -> tuple[Tensor, Tensor]:
    """MRPO's virtual reference, Le et al. 2024 ("Multi-Reference Preference Optimization"), as the
    authors' released code computes it (thaihungle/MRPO, trainer_mref.py, K = 2).

    ``chosen``/``rejected``: (K, B) summed log-probs ℓ_k(y) under K references, row 0 the primary
    (the SFT model). CTRO clipping: each other reference's ℓ_k(y) is clipped into
    [(1 + η_y) ℓ_0(y), (1 − η_y) ℓ_0(y)], with η_w = η s and η_l = η (1 − s), s = |b_w| / (|b_w| + |b_l|),
    b the references' mean log-prob of each answer. ARWC weights from each reference's confidence
    a_k = |ℓ_k(y_w) − ℓ_k(y_l)|, S = Σ a_k: w_k = (S − a_k) / ((K − 1) S), which for K = 2 is the code's
    α = a_1/S on the primary's term (our generalisation beyond K = 2). The virtual reference is the
    weighted harmonic mean 1/π̃ = Σ_k w_k / π_k(y). All inputs are constants (no gradient)."""
    K = chosen.shape[0]
    if K == 1:
        return chosen[0], rejected[0]
    a = (chosen - rejected).abs()
    S = a.sum(dim=0)
    w = torch.where(S > 0, (S - a) / ((K - 1) * S).clamp(min=1e-30), torch.full_like(a, 1.0 / K))
    b_w, b_l = chosen.mean(dim=0).abs(), rejected.mean(dim=0).abs()
    s = b_w / (b_w + b_l)

    def virtual(logps: Tensor, e: Tensor) -> Tensor:
        primary = logps[0]
        others = torch.minimum(torch.maximum(logps[1:], primary * (1 + e)), primary * (1 - e))
        return -torch.logsumexp(torch.log(w) - torch.cat([primary[None], others]), dim=0)

    return virtual(chosen, eta * s), virtual(rejected, eta * (1 - s))
