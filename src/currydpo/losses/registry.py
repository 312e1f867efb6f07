"""The loss registry: each loss's entry (`LOSSES`), each ``loss.*`` option (`OPTIONS`), and the functions
that check a choice of losses and reduce them to a scalar (`pair_loss`, `list_loss`).

`check_section` validates the config's ``loss:`` section, so an unknown name or a bad option fails before any
model is loaded; config.py takes its option fields' defaults and help from `OPTIONS` (one copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

from ..errors import CurryError
from .listwise import ListLogps, lipo, list_metrics, plackett_luce, pro
from .pairwise import (
    LossOut,
    PairLogps,
    apo_down,
    apo_zero,
    bco_pair,
    cdpo,
    discopop,
    dpo,
    exo,
    hinge,
    ipo,
    mmpo,
    nca,
    orpo,
    robust,
    sft,
    sigmoid_norm,
    simpo,
)


@dataclass(frozen=True)
class Option:
    """A ``loss.*`` option some losses take besides ``beta``: its default and help (the config field's) and its
    valid range, in words for the error (``within``) and as a test (``ok``; None = any value of its type)."""

    name: str
    default: Any
    help: str
    within: str = ""
    ok: Callable[[Any], bool] | None = None

    def check(self, value: Any) -> None:
        if self.ok is not None and not self.ok(value):
            raise CurryError(f"config key 'loss.{self.name}' must be {self.within}, got {value}")


OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("label_smoothing", 0.0, "cdpo/robust: label noise epsilon in [0, 0.5); exo: its epsilon, > 0 (paper: 1e-3)",
           "in [0, 0.5)", lambda v: 0 <= v < 0.5),
    Option("gamma", 0.5, "simpo: target margin gamma/beta ratio; mmpo: score-gap scale"),
    Option("ipo_length_normalise", True, "ipo on length-averaged log-ratios"),
    Option("discopop_tau", 0.05, "discopop: temperature tau of the modulation (paper)", "> 0", lambda v: v > 0),
    Option("pro_sft_weight", 0.05, "pro: weight of the SFT term on the best response, times (list size - 1)^2 (the "
           "authors' code)", ">= 0", lambda v: v >= 0),
    Option("pro_score_temperature", False, "pro: score-gap temperatures (PRO eq. 11; needs scores)"),
)}


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
        if value != OPTIONS[key].default and not any(key in LOSSES[check_loss(n)].options for n in names):
            users = [n for n, s in LOSSES.items() if key in s.options]
            raise CurryError(f"{key}={value} is only used by the losses {', '.join(users)}, not "
                             f"{', '.join(names)}; set it back to {OPTIONS[key].default} or change the loss")


def combine(names: list[str], x, beta: float, loss_weights: list[float] | None, options: dict,
            scale: Tensor | float = 1.0) -> tuple[Tensor, dict[str, float], list[Tensor]]:
    """Σ_k c_k · scale · LOSSES[names_k](x): the per-item total, each loss's mean (``loss/NAME``, before its
    weight) and the first loss's rewards. Each loss receives the options its `LossSpec` names."""
    weights = [1.0] * len(names) if loss_weights is None else list(loss_weights)
    if len(weights) != len(names):
        raise CurryError(f"{len(weights)} loss weights for {len(names)} losses ({', '.join(names)}); give one each")
    opts = {**{k: o.default for k, o in OPTIONS.items()}, **options}
    check_options(names, {k: opts[k] for k in OPTIONS})
    total, parts, first = 0.0, {}, []
    for k, (n, c) in enumerate(zip(names, weights)):
        spec = LOSSES[n]
        losses, *rewards = spec.fn(x, beta=beta, **{o: opts[o] for o in spec.options})
        total = total + c * losses * scale
        parts[f"loss/{n}"] = losses.detach().mean().item()
        first = rewards if k == 0 else first
    return total, parts, first


class Reduced(NamedTuple):
    """A loss over a batch: ``loss`` the scalar to differentiate, ``metrics`` (TRL's names, means over the batch),
    ``per_item`` the loss of each pair or list (B,), before the mean."""

    loss: Tensor
    metrics: dict[str, float]
    per_item: Tensor


def pair_loss(name: str | list[str], x: PairLogps, *, beta: float, loss_weights: list[float] | None = None,
              wpo: bool = False, rpo_alpha: float | None = None, **options) -> Reduced:
    """Per-pair loss ``name`` (or a weighted sum of several, as TRL's loss_type list) plus options, reduced.

    Per pair: l = Σ_k c_k · LOSSES[name_k] · w_wpo + α · NLL_w, c_k = ``loss_weights`` (default 1 each), where
      - ``wpo`` (WPO, Zhou et al. 2024 eq. 2): w_wpo = exp(ā_w + ā_l), ā the policy's
        length-mean log-prob of each response, detached (the plain form, without the
        "sampled alignment" normalisation by log Σ_v p(v)² that TRL's use_weighting adds);
      - ``rpo_alpha`` (RPO, Pang et al. 2024): NLL_w = −ā_w, the length-mean chosen NLL.
    ``options``: the ``loss.*`` options of `OPTIONS`; each loss receives those its `LossSpec` names.
    The scalar is the mean over pairs.

    Returns `Reduced` ``(loss, metrics, per_item (B,))``; metrics use TRL's names and are means over the batch
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
    return Reduced(loss, metrics, per_pair)


def list_loss(name: str | list[str], x: ListLogps, *, beta: float, loss_weights: list[float] | None = None,
              **options) -> Reduced:
    """Listwise loss ``name`` (or a weighted sum of several) reduced to a scalar: the mean over lists.

    ``options`` as `pair_loss`.
    Returns `Reduced` ``(loss, metrics, per_item (L,))``; rewards and metrics are those of the first loss; with
    several, each one's mean is logged as ``loss/NAME``.
    """
    names = as_names(name)
    if not is_listwise(names):
        raise CurryError(f"{', '.join(names)} is a pairwise loss; use losses.pair_loss")
    per_list, parts, (rewards,) = combine(names, x, beta, loss_weights, options)
    loss = per_list.mean()
    metrics = {"loss": loss.item(), **list_metrics(x, rewards), **(parts if len(names) > 1 else {})}
    return Reduced(loss, metrics, per_list)


def check_section(loss: Any) -> None:
    """Validate the config's ``loss:`` section (a `config.LossConfig`, read by attribute); each error names its
    key. Rules that join it to other sections (listwise with self-paced, online, MRPO) stay in config.validate."""
    names = as_names(loss.name)
    try:
        for name in names:
            check_loss(name)
    except CurryError as e:
        raise CurryError(f"config: {e}") from None
    if not loss.beta > 0:
        raise CurryError(f"config key 'loss.beta' must be > 0, got {loss.beta}")
    for option in OPTIONS.values():
        option.check(getattr(loss, option.name))
    try:
        check_options(names, {k: getattr(loss, k) for k in OPTIONS})
    except CurryError as e:
        raise CurryError(f"config key 'loss.{e}") from None
    if loss.weights is not None and len(loss.weights) != len(names):
        raise CurryError(f"config key 'loss.weights' has {len(loss.weights)} weights for {len(names)} losses "
                         f"({', '.join(names)}); give one weight per loss")
    if len(set(names)) < len(names):
        raise CurryError(f"config key 'loss.name' lists a loss twice ({', '.join(names)}); weight it instead")
    try:
        listwise = is_listwise(names)
    except CurryError as e:
        raise CurryError(f"config key 'loss.name': {e}") from None
    if listwise and (loss.wpo or loss.rpo_alpha):
        raise CurryError("config keys 'loss.wpo' and 'loss.rpo_alpha' weight pairs; a listwise loss takes whole lists "
                         "(pro has its own SFT term): unset them or use a pairwise loss")
    if loss.rpo_alpha is not None and loss.rpo_alpha < 0:
        raise CurryError(f"config key 'loss.rpo_alpha' must be >= 0, got {loss.rpo_alpha}")
