"""Stage and reference naming: which model each stage's reference is, as pure functions of the resolved
``curriculum.reference`` (`config.Resolved.reference`).

The stage loop (`loop.py`) and the stage sources (`stages.py`) both ask these; neither imports the other for it.
"""

from __future__ import annotations


def stage_name(k: int) -> str:
    """The user-facing name of 0-based stage ``k``: its directory and, as a reference, its final policy."""
    return f"stage-{k + 1}"


def reference_for(mode: str, k: int) -> str:
    """The reference of stage ``k`` under reference ``mode``: the RefCache key of the model whose log-probs it uses.

    Curry-DPO (Pattnaik et al. 2024, Sec. 3.3): in iterative training each stage after the
    first uses the policy at the end of the previous stage as its reference — the reference
    swap. Every other schedule (and ``curriculum.reference: initial``) keeps the initial model.
    """
    if mode == "initial" or k == 0:
        return "initial"
    return stage_name(k - 1)


def reference_label(mode: str, k: int, mix: float) -> str:
    """How stage ``k``'s reference is named in summaries: its cache key, or the mixture it is."""
    if mode == "mixture" and k > 0:
        return f"mixture (alpha {mix:g}) of {stage_name(k - 1)} and its reference"
    return reference_for(mode, k)


def references_for(mode: str, k: int) -> list[str]:
    """``curriculum.reference: all-previous`` (MRPO, Le et al. 2024): stage ``k`` combines the initial
    model and every earlier stage's policy, primary first; otherwise the one `reference_for`."""
    if mode != "all-previous":
        return [reference_for(mode, k)]
    return ["initial"] + [stage_name(j) for j in range(k)]
