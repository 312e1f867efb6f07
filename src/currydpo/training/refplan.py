"""Which responses each reference scores: those the planned batches use, nothing more.

DESIGN's rule for cost: a run pays for what it trains. A stage of n updates of P items trains the first
n*P items of its order (all of them once the updates wrap around); a self-paced stage picks its items
from the current loss of all its pairs, so it needs all. The initial reference scores what uses it:
the stages whose reference it is (stage 1 under ``previous-stage``; every stage otherwise, mixture and
all-previous reading it at every stage), the held-out pairs (their metrics are against it), and every
pair when the plan measures with it (``ref-logratio`` difficulty, ``data.select``). Online stages
choose their pairs during training, so there every offline pair keeps its initial value, as before.
Values found in the shared store (`refstore`, under ``run.cache_dir``) are not scored again.
"""

from __future__ import annotations

from ..config import TrainConfig
from ..curriculum.schedules import Stage
from ..losses import needs_reference
from . import precision as prec
from . import sharding
from .model import load_model
from .refstore import ReferenceStore, model_fingerprint


def planned_items(stage: Stage, n_updates: int, per_update: int) -> list[int]:
    """The items (indices into `Objective.items`) that ``n_updates`` updates of ``per_update`` items train."""
    if stage.admit_fraction is not None or n_updates * per_update >= len(stage.pairs):
        return list(stage.pairs)
    return list(stage.pairs[:n_updates * per_update])


def stage_rows(objective, stage: Stage, n_updates: int, per_update: int) -> list[int]:
    """The response-table rows the planned items of ``stage`` use."""
    return objective.rows(objective.items(planned_items(stage, n_updates, per_update)))[0]


def rows_of_stages(objective, stages: list[Stage], stage_updates: list[int], per_update: int,
                   which: range) -> list[int]:
    return sorted({r for k in which for r in stage_rows(objective, stages[k], stage_updates[k], per_update)})


def reference_rows(run, stages: list[Stage], k: int) -> list[int]:
    """The rows stage ``k`` of ``stages`` (as trained) has its reference score (before the stage's first update).
    Mixture and all-previous read this policy's values again in later stages, so it scores theirs too."""
    obj, n, P = run.objective, run.stage_updates, run.pairs_per_update
    if run.resolved.reference in ("all-previous", "mixture"):
        if run.cfg.online.enabled:  # later stages' pairs are not sampled yet: every pair so far
            return run.table.rows(run.data.train_pairs)[0]
        return rows_of_stages(obj, stages, n, P, range(k, len(stages)))
    return stage_rows(obj, stages[k], n[k], P)


def plan_needs_reference(cfg: TrainConfig) -> bool:
    """Whether the plan itself reads the initial reference of every pair (before any stage exists)."""
    return cfg.curriculum.difficulty == "ref-logratio" or cfg.data.select != "none"


def initial_rows(cfg: TrainConfig, mode: str, objective, table, data, stages: list[Stage],
                 stage_updates: list[int], per_update: int) -> list[int]:
    """The rows the initial reference must score (module doc); ``mode``: the resolved ``curriculum.reference``."""
    train: list[int] = []
    if cfg.online.enabled:
        train = table.rows(data.train_pairs)[0] if data.train_pairs else []
    elif needs_reference(cfg.loss.name) and stages:
        which = range(1) if mode == "previous-stage" else range(len(stages))
        train = rows_of_stages(objective, stages, stage_updates, per_update, which)
    held_out = table.rows(data.eval_pairs)[0] if data.eval_pairs else []
    return sorted(set(train) | set(held_out))


def score_initial(cfg: TrainConfig, model, table, refs, scorer, rows: list[int], *, device, fsdp, precision: str,
                  cache_dir: str | None, model_fp: str | None) -> None:
    """Reference ``initial`` for ``rows``: the store's values where it has them, else scored by ``model`` (the
    initial policy, fingerprinted ``model_fp`` before sharding) or the separate ``model.ref_model``, loaded for
    the pass and freed."""
    values = refs.get("initial", len(table.keys))
    if not values[rows].isnan().any():
        return
    ref_model, fp = model, model_fp
    if cfg.model.ref_model:
        ref_model = load_model(cfg.model.ref_model, cfg.model, device, dtype=prec.master_dtype(precision))
        fp = model_fingerprint(ref_model, scoring_settings(ref_model, scorer, precision, device)) if cache_dir else None
        if fsdp:
            ref_model = sharding.shard(ref_model, fsdp, device)
    refs.ensure("initial", ref_model, table, rows, scorer, shared=ReferenceStore.open(cache_dir, fp) if fp else None)


def scoring_settings(model, scorer, precision: str, device) -> dict:
    """What besides the weights decides a reference log-prob (part of the store's fingerprint)."""
    return {"lm_head": scorer.lm_head, "precision": precision, "pad_token_id": scorer.pad_token_id,
            "attention": getattr(getattr(model, "config", None), "_attn_implementation", None),
            "device": device.type, "version": 1}
