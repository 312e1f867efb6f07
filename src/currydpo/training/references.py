"""Stage and reference naming: which model each stage's reference is, as pure functions of the config.

The stage loop (`loop.py`) and online stages (`online.py`) both ask these; neither imports the other for it.
"""

from __future__ import annotations

from ..config import TrainConfig, reference_mode


def stage_name(k: int) -> str:
    """The user-facing name of 0-based stage ``k``: its directory and, as a reference, its final policy."""
    return f"stage-{k + 1}"


def reference_for(cfg: TrainConfig, k: int) -> str:
    """The reference of stage ``k``: the RefCache key of the model whose log-probs it uses.

    Curry-DPO (Pattnaik et al. 2024, Sec. 3.3): in iterative training each stage after the
    first uses the policy at the end of the previous stage as its reference — the reference
    swap. Every other schedule (and ``curriculum.reference: initial``) keeps the initial model.
    """
    if reference_mode(cfg) == "initial" or k == 0:
        return "initial"
    return stage_name(k - 1)


def reference_label(cfg: TrainConfig, k: int) -> str:
    """How stage ``k``'s reference is named in summaries: its cache key, or the mixture it is."""
    if reference_mode(cfg) == "mixture" and k > 0:
        return f"mixture (alpha {cfg.curriculum.reference_mix:g}) of {stage_name(k - 1)} and its reference"
    return reference_for(cfg, k)


def references_for(cfg: TrainConfig, k: int) -> list[str]:
    """``curriculum.reference: all-previous`` (MRPO, Le et al. 2024): stage ``k`` combines the initial
    model and every earlier stage's policy, primary first; otherwise the one `reference_for`."""
    if reference_mode(cfg) != "all-previous":
        return [reference_for(cfg, k)]
    return ["initial"] + [stage_name(j) for j in range(k)]
