"""Pairwise preference losses on sequence log-probabilities.

Every loss is a pure function of a `PairLogps` and floats and returns
``(losses (B,), chosen_rewards (B,), rejected_rewards (B,))``; rewards are detached.
Notation: Δ_w = log π(y_w) − log π_ref(y_w), Δ_l likewise (log-probs summed over the
response tokens), h = β (Δ_w − Δ_l). Unless a loss says otherwise, its rewards are
β Δ_w and β Δ_l. `LOSSES` maps each name to its `LossSpec` (function, needs a reference,
options it takes); `pair_loss` combines one or several of them, adds the WPO weight and the
RPO NLL term, and reduces to a scalar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CurryError
from .listwise import ListLogps, lipo, list_metrics, plackett_luce, pro


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
                         f"or use a reference-free loss ({', '.join(n for n, s in LOSSES.items() if not s.reference)})")
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


@dataclass(frozen=True)
class LossSpec:
    """A registry entry: the function, whether it needs reference log-probs, and the ``loss.*`` options it
    takes besides ``beta`` (the keyword arguments `pair_loss` passes it)."""

    fn: Callable[..., LossOut]
    reference: bool = True
    options: tuple[str, ...] = ()
    listwise: bool = False  # over a prompt's ranked list (`listwise.py`, reduced by `list_loss`)


LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(dpo), "cdpo": LossSpec(cdpo, options=("label_smoothing",)),
    "robust": LossSpec(robust, options=("label_smoothing",)), "ipo": LossSpec(ipo, options=("ipo_length_normalise",)),
    "hinge": LossSpec(hinge), "simpo": LossSpec(simpo, reference=False, options=("gamma",)),
    "orpo": LossSpec(orpo, reference=False), "mmpo": LossSpec(mmpo, options=("gamma",)),
    "discopop": LossSpec(discopop, options=("discopop_tau",)), "exo": LossSpec(exo, options=("label_smoothing",)),
    "nca": LossSpec(nca), "bco-pair": LossSpec(bco_pair), "apo-zero": LossSpec(apo_zero),
    "apo-down": LossSpec(apo_down), "sigmoid-norm": LossSpec(sigmoid_norm), "sft": LossSpec(sft, reference=False),
    "plackett-luce": LossSpec(plackett_luce, listwise=True), "lipo": LossSpec(lipo, listwise=True),
    "pro": LossSpec(pro, reference=False, options=("pro_sft_weight", "pro_score_temperature"), listwise=True),
}
# The default of every option; an option set away from it must be taken by some loss of the run.
OPTION_DEFAULTS = {"label_smoothing": 0.0, "gamma": 0.5, "ipo_length_normalise": True, "discopop_tau": 0.05,
                   "pro_sft_weight": 0.05, "pro_score_temperature": False}


def check_loss(name: str) -> str:
    """Return ``name`` if it is a known loss, else raise `CurryError` listing the valid names."""
    if name not in LOSSES:
        raise CurryError(f"unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return name


def needs_reference(names: str | list[str]) -> bool:
    """Whether any loss of ``names`` reads reference log-probs (else the trainer skips computing them)."""
    return any(LOSSES[check_loss(n)].reference for n in as_names(names))


def as_names(names: str | list[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


def is_listwise(names: str | list[str]) -> bool:
    """True for a listwise loss; a combination may not mix listwise and pairwise losses."""
    kinds = {LOSSES[check_loss(n)].listwise for n in as_names(names)}
    if len(kinds) > 1:
        raise CurryError(f"losses {', '.join(as_names(names))} mix listwise and pairwise losses; combine only "
                         f"losses of one kind")
    return kinds.pop()


def check_options(names: str | list[str], options: dict) -> None:
    """Raise if an option is set (away from its default) but no loss of ``names`` takes it."""
    names = as_names(names)
    for key, value in options.items():
        if value != OPTION_DEFAULTS[key] and not any(key in LOSSES[check_loss(n)].options for n in names):
            users = [n for n, s in LOSSES.items() if key in s.options]
            raise CurryError(f"{key}={value} is only used by the losses {', '.join(users)}, not "
                             f"{', '.join(names)}; set it back to {OPTION_DEFAULTS[key]} or change the loss")


def combine(names: list[str], x, beta: float, loss_weights: list[float] | None, options: dict,
            scale: Tensor | float = 1.0) -> tuple[Tensor, dict[str, float], list[Tensor]]:
    """Σ_k c_k · scale · LOSSES[names_k](x): the per-item total, each loss's mean (``loss/NAME``, before its
    weight) and the first loss's rewards. Each loss receives the options its `LossSpec` names."""
    weights = [1.0] * len(names) if loss_weights is None else list(loss_weights)
    if len(weights) != len(names):
        raise CurryError(f"{len(weights)} loss weights for {len(names)} losses ({', '.join(names)}); give one each")
    opts = {**OPTION_DEFAULTS, **options}
    check_options(names, {k: opts[k] for k in OPTION_DEFAULTS})
    total, parts, first = 0.0, {}, []
    for k, (n, c) in enumerate(zip(names, weights)):
        spec = LOSSES[n]
        losses, *rewards = spec.fn(x, beta=beta, **{o: opts[o] for o in spec.options})
        total = total + c * losses * scale
        parts[f"loss/{n}"] = losses.detach().mean().item()
        first = rewards if k == 0 else first
    return total, parts, first


def pair_loss(name: str | list[str], x: PairLogps, *, beta: float, loss_weights: list[float] | None = None,
              wpo: bool = False, rpo_alpha: float | None = None, **options) -> tuple[Tensor, dict[str, float], Tensor]:
    """Per-pair loss ``name`` (or a weighted sum of several, as TRL's loss_type list) plus options, reduced.

    Per pair: l = Σ_k c_k · LOSSES[name_k] · w_wpo + α · NLL_w, c_k = ``loss_weights`` (default 1 each), where
      - ``wpo`` (WPO, Zhou et al. 2024 eq. 2): w_wpo = exp(ā_w + ā_l), ā the policy's
        length-mean log-prob of each response, detached (the plain form, without the
        "sampled alignment" normalisation by log Σ_v p(v)² that TRL's use_weighting adds);
      - ``rpo_alpha`` (RPO, Pang et al. 2024): NLL_w = −ā_w, the length-mean chosen NLL.
    ``options``: the ``loss.*`` options of `OPTION_DEFAULTS`; each loss receives those its `LossSpec` names.
    The scalar is the mean over pairs.

    Returns ``(scalar, metrics, per_pair (B,))``; metrics use TRL's names and are means over the batch
    (``loss`` is the scalar; rewards are those of the first loss; with several losses each one's mean is
    logged as ``loss/NAME``, before its weight).
    """
    names = [check_loss(n) for n in as_names(name)]
    if is_listwise(names):
        raise CurryError(f"{', '.join(names)} is listwise: it takes whole ranked lists (losses.list_loss)")
    wpo_w = torch.exp(x.mean_chosen() + x.mean_rejected()).detach() if wpo else 1.0
    per_pair, parts, (chosen_rewards, rejected_rewards) = combine(names, x, beta, loss_weights, options, wpo_w)
    if rpo_alpha:
        per_pair = per_pair + rpo_alpha * -x.mean_chosen()
    loss = per_pair.mean()
    margins = chosen_rewards - rejected_rewards
    metrics = {
        "loss": loss.item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": margins.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "logps/chosen": x.policy_chosen_logps.detach().mean().item(),
        "logps/rejected": x.policy_rejected_logps.detach().mean().item(),
        **(parts if len(names) > 1 else {}),
    }
    return loss, metrics, per_pair


def list_loss(name: str | list[str], x: ListLogps, *, beta: float, loss_weights: list[float] | None = None,
              **options) -> tuple[Tensor, dict[str, float], Tensor]:
    """Listwise loss ``name`` (or a weighted sum of several) reduced to a scalar: the mean over lists.

    ``options`` as `pair_loss` (it lives here, beside the registry, so `listwise.py` holds only kernels).
    Returns ``(scalar, metrics, per_list (L,))``; rewards and metrics are those of the first loss; with
    several, each one's mean is logged as ``loss/NAME``.
    """
    names = as_names(name)
    if not is_listwise(names):
        raise CurryError(f"{', '.join(names)} is a pairwise loss; use losses.pair_loss")
    per_list, parts, (rewards,) = combine(names, x, beta, loss_weights, options)
    loss = per_list.mean()
    metrics = {"loss": loss.item(), **list_metrics(x, rewards), **(parts if len(names) > 1 else {})}
    return loss, metrics, per_list
