"""The Curry-DPO training loop: stages in order, the reference swapped between them.

Read top to bottom: `train` opens the run (`setup.start`: data, model, reference log-probs, stage
plan, or where a killed run stood) and hands it to `train_stages`, the method itself: each
stage from its `StageSource`, its reference named by `reference_for` (the swap), its updates
(`run_stage`, `train_step`), its end (`end_stage`: held-out metrics, ``stage-K/``). Helpers sit
below the function that calls them; set-up lives in `setup.py`, resume and checkpoint positions in
`position.py`, what a run is (`Run`, frozen) and what it has done (`Progress`, the loop's) in `run.py`.
Curry-DPO (Pattnaik et al. 2024, Sec. 3.3): stage k starts from the policy of stage k-1 and, in
``previous-stage`` mode, uses that policy as its reference.

Stage numbers: 0-based in code (``k``, ``Position.stage``), 1-based wherever a user sees
them — ``stage-K/`` directories, the ``stage`` field of logs and summaries, progress bars
and reference keys (``stage-K`` = the policy at the end of stage K). `references.stage_name` is the
one crossing point.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time

import torch
from accelerate import Accelerator

from .. import lifetime
from ..config import TrainConfig
from ..curriculum.difficulty import measure_dynamic
from ..curriculum.schedules import Stage, admit
from ..data.records import Record
from ..errors import CurryError
from ..io import write_json
from ..losses import needs_reference
from ..progress import progress_bar
from . import cadence, hub
from . import checkpoint as ckpt
from .logit_stats import held_out_logits
from .memory import even_out
from .model_card import model_card
from .objective import ListObjective
from .online import OnlineStages
from .position import ensure_finite, restore_mid_stage, save_position, stop_if_signalled, weights_finite
from .preference import preference_metrics
from .references import reference_for, reference_label, references_for, stage_name
from .refplan import reference_rows
from .run import Hooks, Progress, Run, Update
from .setup import make_scheduler, stage_passes, start
from .sharding import is_sharded
from .stages import StageSource

__all__ = ["Hooks", "Progress", "Run", "Update", "train"]


def train(cfg: TrainConfig, records: list[Record] | None = None, resume: bool = False,
          stages: StageSource | None = None, hooks: Hooks | None = None) -> dict:
    """Train every stage of the curriculum; returns the run summary (also written to summary.json).

    ``stages``: where each stage's items come from (default: the offline plan; online stages need
    `online.OnlineStages`, which the entry point builds: `evaluation.online.online_stages`). The output
    directory is held by this process alone (`lifetime.hold_output_dir`), and SIGTERM/SIGINT stop the run with
    ``state/`` current: inside a stage at the next update boundary (`stop_if_signalled`), elsewhere at once."""
    out = cfg.run.output_dir
    lifetime.check_output_dir(out)
    if resume and not os.path.isdir(out):
        raise CurryError(f"--resume: {out} does not exist; check run.output_dir (or drop --resume to start a run)")
    if cfg.online.enabled and not isinstance(stages, OnlineStages):
        raise CurryError("online stages sample and judge through the evaluation layer: pass "
                         "stages=currydpo.evaluation.online.online_stages() (currydpo.train and the train and compare "
                         "commands do)")
    created = not os.path.exists(out)
    with lifetime.hold_output_dir(out), lifetime.stop_on_signals(out):
        run, progress = start(cfg, records, resume, created, stages, hooks)
        return train_stages(run, progress)


def train_stages(run: Run, progress: Progress) -> dict:
    """Curry-DPO's stages in order, from where ``progress`` stands: each trained from the last policy against its
    reference."""
    resolved, pos, optimizer, scheduler = run.resolved, progress.position, None, None
    if resolved.across_stages == "continue":  # one optimiser and LR schedule over all stages
        optimizer, scheduler = make_optimizer(run, sum(run.stage_updates))
    for k in range(pos.stage):  # stages done before a resume: what they added to the run, from their files
        progress.stages[k] = run.source.stage(k, run, replay=True)
    for k in range(pos.stage, len(run.stages)):
        stage = progress.stages[k] = run.source.stage(k, run)  # offline: the plan's; online: judged samples of now
        if resolved.across_stages == "restart":  # the paper's iterative recipe: each stage a fresh DPO run
            optimizer, scheduler = make_optimizer(run, run.stage_updates[k])
        restore_mid_stage(run, progress, k, optimizer, scheduler)
        reference = reference_for(resolved.reference, k)  # the reference swap: the previous stage's policy
        ref = reference_logps(run, k, progress.stages, reference)
        if pos.order is None:
            pos.order = stage_order(run, stage, ref)
        t0 = time.perf_counter()
        with lifetime.deferred_stops():  # SIGTERM/SIGINT: stop at the next update boundary, checkpointed
            run_stage(run, progress, k, optimizer, scheduler, ref)
        end_stage(run, progress, k, time.perf_counter() - t0, optimizer, scheduler)
    return finish(run, progress)


def make_optimizer(run: Run, n_updates: int):
    optim = run.cfg.optim
    params = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return optimizer, make_scheduler(optim, optimizer, n_updates)


def reference_logps(run: Run, k: int, stages: list[Stage], reference: str) -> torch.Tensor | None:
    """Reference log-probs of every table row (None for reference-free losses): ``reference``'s, computed
    for the rows stage ``k`` of ``stages`` uses where missing. When the reference is the previous stage's policy,
    the model being trained *is* that policy now, so it scores the responses before its first update of the stage:
    no second copy in memory. (K, T) for all-previous (MRPO), the stage's mixture for mixture."""
    if not needs_reference(run.cfg.loss.name):
        return None
    mode, rows = run.resolved.reference, reference_rows(run, stages, k)  # what the stage's planned batches use
    if reference == "initial" and not run.cfg.online.enabled:  # scored in setup by the initial weights; the
        # model here may have trained since (online stages score their new responses as they come)
        ref = run.refs.require(reference, len(run.table.keys), rows)
    else:
        ref = run.refs.ensure(reference, run.accelerator.unwrap_model(run.model), run.table, rows, run.scorer)
    if mode == "mixture":
        return mixture_reference(run, k)
    if mode == "all-previous":
        return torch.stack([run.refs.get(key, len(run.table.keys)) for key in references_for(mode, k)])  # (K, T)
    return ref


def mixture_reference(run: Run, k: int) -> torch.Tensor:
    """``curriculum.reference: mixture``: a soft reference swap. Stage ``k``'s reference is the
    geometric mixture log ref_k = a * log pi_{k-1} + (1 - a) * log ref_{k-1}, ref_0 the initial
    model: the log-space analogue of TR-DPO's soft reference update (Gorbatovski et al. 2024,
    arXiv 2404.09656), across stages instead of steps. Read from the cache: no extra forward pass.
    a = 1 is the hard swap of ``previous-stage``; a = 0 keeps the initial model."""
    a, size = run.cfg.curriculum.reference_mix, len(run.table.keys)
    mix = run.refs.get("initial", size)
    for j in range(k):
        mix = a * run.refs.get(stage_name(j), size) + (1 - a) * mix
    return mix


def stage_order(run: Run, stage: Stage, ref: torch.Tensor | None) -> list[int]:
    """The item order of a stage: the plan's, or (self-paced) the pairs admitted by the current loss."""
    if stage.admit_fraction is None:
        return list(stage.pairs)
    measure_dynamic([run.data.train_pairs[i] for i in stage.pairs], dynamic_losses(run, stage.pairs, ref))
    return list(admit(stage, run.data.train_pairs, run.cfg.run.seed, run.resolved.shuffle_within_stage))


def dynamic_losses(run: Run, pair_idx: list[int], ref: torch.Tensor | None) -> list[float]:
    """Self-paced difficulty: the current policy's loss on each pair (no gradients), scored as training scores."""
    obj = run.objective
    items = obj.items(pair_idx)
    rows, at = obj.rows(items)
    lp, n = run.scorer.score(run.accelerator.unwrap_model(run.model), run.table, rows, desc="dynamic difficulty")
    x = obj.inputs(lp, n, at, items, None if ref is None else ref[..., torch.tensor(rows)])
    return obj.loss(x).per_item.tolist()


def end_stage(run: Run, progress: Progress, k: int, seconds: float, optimizer, scheduler) -> None:
    """After stage ``k``'s last update: its summary (held-out metrics against the initial reference), its
    model in ``stage-K/``, ``state/`` advanced to the next stage, then the ``on_stage_end`` hooks."""
    cfg, acc, stage, pos = run.cfg, run.accelerator, progress.stages[k], progress.position
    info = {"stage": k + 1, "label": stage.label,
            "reference": reference_label(run.resolved.reference, k, cfg.curriculum.reference_mix),
            "pairs": len(pos.order), "updates": run.stage_updates[k], "end_step": pos.global_step,
            "passes": stage_passes(run.stage_updates[k], run.pairs_per_update, len(pos.order)),
            "train_seconds": round(seconds, 3), **stage.info, **evaluate_held_out(run, ref_key="initial")}
    if isinstance(run.objective, ListObjective):  # "pairs" counts lists; the pairs they stand for, for fair comparisons
        info["pairs_equivalent"] = sum(run.objective.lists[i].n_pairs for i in pos.order)
    held_out = {key: v for key, v in info.items() if key.startswith(("eval/", "eval_")) and isinstance(v, (int, float))}
    if held_out:  # to metrics.jsonl and the trackers, as HF Trainer logs its evaluations
        log_metrics(run, progress, {"step": pos.global_step, "stage": k + 1, **held_out})
    ensure_finite(run, f"the end of stage {k + 1}")
    model = acc.unwrap_model(run.model)
    weights = ckpt.full_state_dict(model) if is_sharded(model) else None  # gathered whole on the main process
    if acc.is_main_process:
        ckpt.save_model(os.path.join(cfg.run.output_dir, stage_name(k)), model, run.tokenizer, cfg, info=info,
                        dtype=run.save_dtype, state_dict=weights)
    pos.stage, pos.update, pos.order = k + 1, 0, None
    pos.stages_done.append(info)
    keep = run.resolved.across_stages == "continue"  # restart: the next stage builds a fresh optimiser
    save_position(run, progress, optimizer if keep else None, scheduler if keep else None)
    for hook in run.hooks.on_stage_end:
        hook(run, k, info)


def evaluate_held_out(run: Run, ref_key: str) -> dict:
    """Preference metrics on held-out pairs against the initial reference (empty without eval_fraction)."""
    if not run.data.eval_pairs:
        return {}
    pairs = run.data.eval_pairs
    rows, ci, ri = run.table.rows(pairs)
    lp, n = run.scorer.score(run.accelerator.unwrap_model(run.model), run.table, rows, desc="held-out metrics")
    ref = run.refs.get(ref_key, len(run.table.keys))[torch.tensor(rows)]
    metrics = preference_metrics(lp[ci], lp[ri], n[ci], n[ri], ref[ci], ref[ri], run.cfg.loss.beta,
                                 [p.score_gap for p in pairs], buckets=[p.rejected_position for p in pairs])
    metrics.update(held_out_logits(run, rows, ci, ri))  # TRL's logits/chosen, logits/rejected
    return cadence.with_trl_names({f"eval/{key}": v for key, v in metrics.items()})


def finish(run: Run, progress: Progress) -> dict:
    """Save the final model and the run summary (what was held equal, for fair comparisons)."""
    cfg, acc, optim = run.cfg, run.accelerator, run.cfg.optim
    summary = {
        "schedule": cfg.curriculum.schedule, "difficulty": cfg.curriculum.difficulty, "loss": cfg.loss.name,
        "beta": cfg.loss.beta, "reference": run.resolved.reference, "total_updates": sum(run.stage_updates),
        "pairs_per_update": run.pairs_per_update, "unit": run.objective.unit,
        "lr": optim.lr, "lr_schedule": optim.lr_schedule,
        "warmup_ratio": optim.warmup_ratio, "across_stages": run.resolved.across_stages,
        "optimizer_resets": len(run.stages) - 1 if run.resolved.across_stages == "restart" else 0,
        "train_pairs": len(run.data.train_pairs), "eval_pairs": len(run.data.eval_pairs),
        "unique_responses": len(run.table.keys), "stages": progress.position.stages_done,
        "final_loss": next((e["loss"] for e in reversed(progress.log) if "loss" in e), None), "memory": run.memory,
        "resumed_from": progress.resumed_from, "updates_run": progress.updates_run,
        "resolved": run.resolved.to_dict(),  # every auto of the config, as this run resolved it
    }
    if acc.is_main_process:
        model, k = acc.unwrap_model(run.model), len(run.stages)
        if cfg.run.final_model == "best":  # stage-level early stopping, like HF's load_best_model_at_end
            k, value = best_stage(cfg.run.output_dir, len(run.stages), cfg.run.best_metric)
            summary["final_model"] = {"stage": k, cfg.run.best_metric: value}
        if is_sharded(model):  # its weights are spread over the processes; stage-K/ holds them whole
            model = ckpt.load_saved(os.path.join(cfg.run.output_dir, stage_name(k - 1)), cfg)
        elif k != len(run.stages):
            ckpt.load_stage_weights(model, os.path.join(cfg.run.output_dir, stage_name(k - 1)))
        ckpt.save_model(os.path.join(cfg.run.output_dir, "final"), model, run.tokenizer, cfg, merge_lora=True,
                        dtype=run.save_dtype, card=model_card(cfg, summary))
        write_json(os.path.join(cfg.run.output_dir, "summary.json"), summary)
        if cfg.run.push_to_hub:  # final/ to the repo's main (run.hub_revision), each stage-K/ to branch stage-K
            summary["hub"] = hub.push(cfg, len(run.stages))
    acc.end_training()
    return summary


def best_stage(output_dir: str, n_stages: int, metric: str) -> tuple[int, float]:
    """(stage, value): the stage whose held-out ``metric`` (saved in ``stage-K/``, so a resumed run sees
    every stage) is highest; the earliest on ties."""
    scores = [ckpt.stage_info(output_dir, k).get(metric) for k in range(1, n_stages + 1)]
    if any(v is None for v in scores):
        raise CurryError(f"run.final_model best: no held-out '{metric}' in {output_dir}/stage-K (no held-out "
                         f"pairs: raise data.eval_fraction); final/ was not written, every stage-K/ is complete")
    j = max(range(n_stages), key=lambda j: (scores[j], -j))
    return j + 1, scores[j]


def run_stage(run: Run, progress: Progress, k: int, optimizer, scheduler, ref: torch.Tensor | None) -> None:
    """The update loop of stage ``k``, from the position's update; advances the position as it goes."""
    cfg, acc, pos = run.cfg, run.accelerator, progress.position
    n_updates = run.stage_updates[k]
    bar = progress_bar(range(pos.update, n_updates), desc=f"stage {k + 1}/{len(run.stages)}", initial=pos.update,
                       total=n_updates, unit="update", enabled=cfg.run.progress and acc.is_main_process)
    for u in bar:
        micro = stage_batches(run, progress.stages[k], pos.order, u)
        at = f"stage {k + 1}, update {u + 1}, step {pos.global_step + 1}"
        t0 = time.perf_counter()
        try:
            metrics = train_step(run, optimizer, scheduler, micro, ref, at)
        except FloatingPointError as e:
            optimizer.zero_grad(set_to_none=True)
            if weights_finite(run):
                save_position(run, progress, optimizer, scheduler)
                saved = "the last good state is saved in"
            else:  # the weights themselves went non-finite: keep the previous checkpoint
                saved = "the weights are non-finite, so state/ was not overwritten; the last checkpoint is in"
            raise CurryError(f"non-finite values: {e}; {saved} {cfg.run.output_dir}/state "
                             f"(lower optim.lr or check the data)") from None
        seconds = time.perf_counter() - t0
        pos.update, pos.global_step = u + 1, pos.global_step + 1
        progress.updates_run += 1
        pos.tokens += int(metrics.pop("num_tokens"))
        if cadence.log_due(cfg.run, u, n_updates):  # run.logging_steps (TRL's logging_steps)
            log_metrics(run, progress, {"step": pos.global_step, "stage": k + 1, "stage_update": u + 1,
                                        "epoch": round((u + 1) * run.pairs_per_update / max(1, len(pos.order)), 4),
                                        "num_tokens": pos.tokens, **metrics})
        if cadence.eval_due(cfg.run, u, n_updates):  # run.eval_steps (TRL's eval_strategy: steps)
            log_metrics(run, progress, {"step": pos.global_step, "stage": k + 1, "stage_update": u + 1,
                                        **evaluate_held_out(run, ref_key="initial")})
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracies']:.2f}")
        for hook in run.hooks.on_batch:
            hook(run, Update(k, u, pos.global_step, micro, metrics, seconds))
        periodic = bool(cfg.run.save_every) and (u + 1) % cfg.run.save_every == 0 and u + 1 < n_updates
        if periodic:
            save_position(run, progress, optimizer, scheduler)
        stop_if_signalled(run, progress, optimizer, scheduler, saved=periodic)


def stage_batches(run: Run, stage: Stage, order: list[int], update: int) -> list[list[int]]:
    """This process's micro-batches (item indices) for ``update`` of ``stage``.

    Update u takes the next ``pairs_per_update`` items of the stage order, wrapping around
    for extra passes: re-shuffled per pass (seeded) where the order is random or shuffled within the stage,
    the curriculum order repeated otherwise (`setup.pass_notes` states it; ``summary.json`` counts the passes).
    Process p takes micro-batches p, p+W, ... of each update, so the global batch is the
    same for any number of processes.
    """
    P, B = run.pairs_per_update, run.cfg.optim.batch_size
    first = update * P
    passes: dict[int, list[int]] = {}  # one permutation per pass touched by this update
    picked = []
    for slot in range(first, first + P):
        epoch, j = divmod(slot, len(order))
        if epoch not in passes:
            passes[epoch] = order
            if epoch > 0 and run.resolved.reshuffle_passes:
                passes[epoch] = order[:]
                random.Random(run.cfg.run.seed * 7919 + stage.index * 131 + epoch).shuffle(passes[epoch])
        picked.append(passes[epoch][j])
    micro = [picked[j:j + B] for j in range(0, P, B)]
    W, p = run.accelerator.num_processes, run.accelerator.process_index
    return micro[p::W]


def log_metrics(run: Run, progress: Progress, entry: dict) -> None:
    """One line of ``metrics.jsonl``; the trackers get the same numbers under ``train/`` (an update) or as
    logged (``eval/*`` entries: held-out metrics after a stage), as HF Trainer names them."""
    progress.log.append(entry)
    if run.accelerator.is_main_process:
        with open(os.path.join(run.cfg.run.output_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")
    values = {k: v for k, v in entry.items() if k != "step" and isinstance(v, (int, float))}
    tagged = values if any(k.startswith("eval/") for k in values) else {f"train/{k}": v for k, v in values.items()}
    run.accelerator.log(tagged, step=entry["step"])


def train_step(run: Run, optimizer, scheduler, micro: list[list[int]], ref, at: str) -> dict:
    """One optimiser update over this process's micro-batches (gradient accumulation).

    Each micro-batch's loss (a mean over its items) is scaled by its share of the update's items, so
    the gradient is the whole batch's however the items are split (unequal splits included); with
    ``optim.max_tokens_per_micro_batch`` the same items are re-split into token-bounded micro-batches (a ranked
    list is never split: the listwise loss needs all of it).
    """
    acc, model, obj = run.accelerator, run.model, run.objective
    bound = run.resolved.max_tokens_per_micro_batch
    if bound:
        micro = obj.micro_batches([i for idx in micro for i in idx], bound)
        if acc.num_processes > 1:  # the same number of forwards everywhere (see even_out)
            micro = even_out(micro, int(acc.gather(torch.tensor([len(micro)], device=acc.device)).max()))
    n_items = sum(len(idx) for idx in micro)
    sums: dict[str, float] = {}
    for m, idx in enumerate(micro):
        items = obj.items(idx)
        rows, positions = obj.rows(items)
        # FSDP2 reduce-scatters every micro-batch: its no_sync would hold a whole unsharded gradient per process
        sync = contextlib.nullcontext() if m == len(micro) - 1 or is_sharded(model) else acc.no_sync(model)
        with sync:
            lp, n = run.scorer.policy(model, [run.table.encoded[r] for r in rows])  # each unique response once
            x = obj.inputs(lp, n, positions, items, None if ref is None else ref[..., torch.tensor(rows)])
            loss, metrics, _ = obj.loss(x)
            check_finite_everywhere(acc, loss, at, idx)
            acc.backward(loss * (len(idx) / n_items))  # the loss is a mean over the micro-batch's items
        for k, v in metrics.items():  # metrics are means over items
            sums[k] = sums.get(k, 0.0) + v * len(idx) / n_items
        sums["difficulty"] = sums.get("difficulty", 0.0) + sum(
            x.difficulty.get(run.cfg.curriculum.difficulty, math.nan) for x in items) / n_items
    grad_norm = acc.clip_grad_norm_(model.parameters(), run.cfg.optim.max_grad_norm or float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # sharded: a DTensor
    if not torch.isfinite(torch.as_tensor(grad_norm)):
        raise FloatingPointError(f"gradient norm is {float(grad_norm)} at {at}")
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    out = {k: acc.reduce(torch.tensor(v, device=acc.device), "mean").item() for k, v in sums.items()}
    out["grad_norm"] = float(grad_norm)
    out["learning_rate"] = scheduler.get_last_lr()[0]
    out["num_tokens"] = acc.reduce(torch.tensor(float(update_tokens(run, micro)), device=acc.device), "sum").item()
    return out


def update_tokens(run: Run, micro: list[list[int]]) -> int:
    """Tokens this update's items stand for, counted as TRL counts them: every (prompt + response) sequence
    of every item in full (the packed path computes shared prompts once; this is the data's size, not our cost)."""
    obj, enc = run.objective, run.table.encoded
    return sum(len(enc[r]) for x in obj.items([i for idx in micro for i in idx]) for r in obj.rows([x])[0])


def check_finite_everywhere(acc: Accelerator, loss: torch.Tensor, at: str, pairs: list[int]) -> None:
    """Raise FloatingPointError on every process if the loss is non-finite on any of them.

    A process that stopped alone would leave the others waiting forever in the next
    gradient all-reduce, so with several processes the verdict is all-reduced first.
    """
    bad = ~torch.isfinite(loss.detach())
    if acc.num_processes > 1:
        anywhere = acc.reduce(bad.float().reshape(1), "sum").item() > 0
        if anywhere and not bad:
            raise FloatingPointError(f"loss is non-finite on another process at {at}")
    if bad:
        raise FloatingPointError(f"loss is {loss.item()} at {at}, pairs {pairs}")

