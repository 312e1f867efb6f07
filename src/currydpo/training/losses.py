"""Pairwise preference losses on sequence log-probabilities.

Every loss is a pure function of a `PairLogps` and floats and returns
``(losses (B,), chosen_rewards (B,), rejected_rewards (B,))``; rewards are detached.
Notation: Δ_w = log π(y_w) − log π_ref(y_w), Δ_l likewise (log-probs summed over the
response tokens), h = β (Δ_w − Δ_l). Unless a loss says otherwise, its rewards are
β Δ_w and β Δ_l. `pair_loss` adds the WPO weight, the RPO NLL term and the data weights
and reduces to a scalar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


def _logratios(x: PairLogps, loss: str) -> tuple[Tensor, Tensor]:
    if x.reference_chosen_logps is None or x.reference_rejected_logps is None:
        raise CurryError(f"loss '{loss}' needs reference log-probs; compute them with the reference model, "
                         f"or use a reference-free loss ({', '.join(REFERENCE_FREE)})")
    return x.policy_chosen_logps - x.reference_chosen_logps, x.policy_rejected_logps - x.reference_rejected_logps


def _rewards(beta: float, dw: Tensor, dl: Tensor) -> tuple[Tensor, Tensor]:
    return beta * dw.detach(), beta * dl.detach()


def dpo(x: PairLogps, *, beta: float, **_) -> LossOut:
    """DPO, Rafailov et al. 2023 eq. 7: −log σ(h). Summed log-probs."""
    dw, dl = _logratios(x, "dpo")
    return -F.logsigmoid(beta * (dw - dl)), *_rewards(beta, dw, dl)


def cdpo(x: PairLogps, *, beta: float, label_smoothing: float, **_) -> LossOut:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): labels flipped with
    probability ε, so the target is soft: −(1−ε) log σ(h) − ε log σ(−h). Summed log-probs."""
    dw, dl = _logratios(x, "cdpo")
    h = beta * (dw - dl)
    eps = label_smoothing
    return -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h), *_rewards(beta, dw, dl)


def robust(x: PairLogps, *, beta: float, label_smoothing: float, **_) -> LossOut:
    """Robust DPO (rDPO), Chowdhury et al. 2024 §3: the unbiased loss under label-flip rate ε,
    [−(1−ε) log σ(h) + ε log σ(−h)] / (1 − 2ε), ε in [0, 0.5). Summed log-probs."""
    eps = label_smoothing
    if not 0.0 <= eps < 0.5:
        raise CurryError(f"loss 'robust' needs label_smoothing in [0, 0.5), got {eps}")
    dw, dl = _logratios(x, "robust")
    h = beta * (dw - dl)
    loss = (-(1 - eps) * F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1 - 2 * eps)
    return loss, *_rewards(beta, dw, dl)


def ipo(x: PairLogps, *, beta: float, ipo_length_normalise: bool = True, **_) -> LossOut:
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


def hinge(x: PairLogps, *, beta: float, **_) -> LossOut:
    """SLiC-HF calibration hinge, Zhao et al. 2023 eq. 1 with margin δ = 1/β, scaled by β:
    max(0, 1 − h). Summed log-probs."""
    dw, dl = _logratios(x, "hinge")
    return torch.relu(1 - beta * (dw - dl)), *_rewards(beta, dw, dl)


def simpo(x: PairLogps, *, beta: float, gamma: float, **_) -> LossOut:
    """SimPO, Meng et al. 2024 eq. 6: −log σ(β ā_w − β ā_l − γ), ā = log π(y)/|y| (length-mean),
    reference-free. Rewards are β ā."""
    rw, rl = beta * x.mean_chosen(), beta * x.mean_rejected()
    return -F.logsigmoid(rw - rl - gamma), rw.detach(), rl.detach()


def orpo(x: PairLogps, *, beta: float, **_) -> LossOut:
    """ORPO, Hong et al. 2024 eqs. 6–7: −ā_w − λ log σ(log odds(y_w) − log odds(y_l)),
    odds(y) = p/(1−p) with p = exp(ā), ā the length-mean log-prob; λ = β (as TRL's ORPO).
    The NLL is per pair on the length-mean chosen log-prob (the paper averages tokens over
    the batch). Reference-free; rewards are β ā."""
    aw, al = x.mean_chosen(), x.mean_rejected()
    log_odds = (aw - al) - (torch.log1p(-torch.exp(aw)) - torch.log1p(-torch.exp(al)))
    loss = -aw - beta * F.logsigmoid(log_odds)
    return loss, beta * aw.detach(), beta * al.detach()


def mmpo(x: PairLogps, *, beta: float, gamma: float, **_) -> LossOut:
    """Margin matching (MMPO, Kim et al. 2024 §3): soft label p* = σ(γ (s_w − s_l)) from the
    score gap; loss −p* log σ(h) − (1 − p*) log σ(−h). Summed log-probs."""
    if x.score_gaps is None:
        raise CurryError("loss 'mmpo' needs score gaps; the data must have scores (ranks alone are not enough)")
    dw, dl = _logratios(x, "mmpo")
    h = beta * (dw - dl)
    p = torch.sigmoid(gamma * x.score_gaps.to(h.dtype))
    return -p * F.logsigmoid(h) - (1 - p) * F.logsigmoid(-h), *_rewards(beta, dw, dl)


LOSSES: dict[str, Callable[..., LossOut]] = {
    "dpo": dpo, "cdpo": cdpo, "robust": robust, "ipo": ipo, "hinge": hinge,
    "simpo": simpo, "orpo": orpo, "mmpo": mmpo,
}
REFERENCE_FREE = ("simpo", "orpo")
USES_LABEL_SMOOTHING = ("cdpo", "robust")


def check_loss(name: str) -> str:
    """Return ``name`` if it is a known loss, else raise `CurryError` listing the valid names."""
    if name not in LOSSES:
        raise CurryError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return name


def pair_loss(name: str, x: PairLogps, *, beta: float, label_smoothing: float = 0.0, gamma: float = 0.5,
              ipo_length_normalise: bool = True, wpo: bool = False, rpo_alpha: float | None = None,
              weights: Tensor | None = None) -> tuple[Tensor, dict[str, float], Tensor]:
    """Per-pair loss ``name`` plus options, reduced to a scalar.

    Per pair: l = LOSSES[name] · w_wpo + α · NLL_w, where
      - ``wpo`` (WPO, Zhou et al. 2024 eq. 2): w_wpo = exp(ā_w + ā_l), ā the policy's
        length-mean log-prob of each response, detached (the plain form, without the
        "sampled alignment" normalisation by log Σ_v p(v)² that TRL's use_weighting adds);
      - ``rpo_alpha`` (RPO, Pang et al. 2024): NLL_w = −ā_w, the length-mean chosen NLL.
    ``gamma``: SimPO target margin / MMPO score-gap scale. ``label_smoothing``: ε of cdpo/robust.
    ``weights`` (B,): data/curriculum weights; scalar = Σ w l / Σ w (plain mean if None).

    Returns ``(scalar, metrics, per_pair (B,))``; metrics use TRL's names and are means over
    the batch (``loss`` is the scalar).
    """
    fn = LOSSES[check_loss(name)]
    if label_smoothing and name not in USES_LABEL_SMOOTHING:
        raise CurryError(f"label_smoothing={label_smoothing} is only used by the losses "
                         f"{', '.join(USES_LABEL_SMOOTHING)}, not '{name}'; set it to 0 or change the loss")
    per_pair, chosen_rewards, rejected_rewards = fn(
        x, beta=beta, label_smoothing=label_smoothing, gamma=gamma, ipo_length_normalise=ipo_length_normalise)
    if wpo:
        per_pair = per_pair * torch.exp(x.mean_chosen() + x.mean_rejected()).detach()
    if rpo_alpha:
        per_pair = per_pair + rpo_alpha * -x.mean_chosen()
    if weights is None:
        loss = per_pair.mean()
    else:
        w = weights.to(per_pair)
        loss = (w * per_pair).sum() / w.sum()
    margins = chosen_rewards - rejected_rewards
    metrics = {
        "loss": loss.item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": margins.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "logps/chosen": x.policy_chosen_logps.detach().mean().item(),
        "logps/rejected": x.policy_rejected_logps.detach().mean().item(),
    }
    return loss, metrics, per_pair
