"""What the loop writes inside a stage, and how often: TRL's ``logging_steps`` (``run.logging_steps``: every Nth
update's line, and each stage's last) and ``eval_strategy: steps`` / ``eval_steps`` (``run.eval_steps``: the
held-out metrics every N updates within a stage, beside the ones at its end). Held-out metrics carry TRL's
``eval_``-prefixed names beside our ``eval/`` ones, so a dashboard built for TRL finds them."""

from __future__ import annotations

# Our held-out metric -> TRL's name for the same number (DPOTrainer logs eval_rewards/chosen, ...).
TRL_EVAL = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected", "logits/chosen", "logits/rejected", "loss")


def log_due(run_cfg, update: int, n_updates: int) -> bool:
    """Whether update ``update`` (0-based) of a stage of ``n_updates`` writes its line."""
    return (update + 1) % run_cfg.logging_steps == 0 or update + 1 == n_updates


def eval_due(run_cfg, update: int, n_updates: int) -> bool:
    """Whether the held-out metrics run after update ``update`` (0-based); the stage's end evaluates anyway."""
    return bool(run_cfg.eval_steps) and (update + 1) % run_cfg.eval_steps == 0 and update + 1 < n_updates


def with_trl_names(held_out: dict) -> dict:
    """``eval/rewards/margins`` -> also ``eval_rewards/margins`` (TRL's name), for the metrics TRL logs."""
    extra = {f"eval_{k}": held_out[f"eval/{k}"] for k in TRL_EVAL if f"eval/{k}" in held_out}
    return {**held_out, **extra}
