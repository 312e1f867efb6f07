"""The Curry-DPO training loop: stages in order, the reference swapped between them.

Read top to bottom: `train` opens the run (`start`: data, model, reference log-probs, stage
plan, or where a killed run stood) and hands it to `train_stages`, the method itself: each
stage from its `StageSource`, its reference named by `reference_for` (the swap), its updates
(`run_stage`, `train_step`), its end (`end_stage`: held-out metrics, ``stage-K/``).
Curry-DPO (Pattnaik et al. 2024, Sec. 3.3): stage k starts from the policy of stage k-1 and, in
``previous-stage`` mode, uses that policy as its reference.

Stage numbers: 0-based in code (``k``, ``Position.stage``), 1-based wherever a user sees
them — ``stage-K/`` directories, the ``stage`` field of logs and summaries, progress bars
and reference keys (``stage-K`` = the policy at the end of stage K). `stage_name` is the
one crossing point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

from .. import lifetime
from ..cache import cache_root
from ..config import Resolved, TrainConfig, changed_keys, from_dict, resolve, to_yaml
from ..curriculum.difficulty import measure_dynamic
from ..curriculum.lists import stage_lists
from ..curriculum.schedules import Stage, admit, updates_per_stage
from ..data.records import Record
from ..errors import CurryError
from ..io import quiet_bars, write_json, write_text
from ..losses import is_listwise, needs_reference
from ..pipeline import Prepared, data_fingerprint, plan, plan_measure, prepare
from ..progress import progress_bar
from . import cadence, hub, sharding
from . import checkpoint as ckpt
from . import precision as prec
from .logit_stats import held_out_logits
from .memory import choose_checkpointing, enable_checkpointing, even_out, memory_budget, resolve_token_bound
from .model import _check_path, add_lora, load_model, load_tokenizer
from .model_card import model_card
from .objective import ListObjective, PairObjective
from .online import OnlineStages
from .preference import preference_metrics
from .references import reference_for, reference_label, references_for, stage_name
from .refplan import initial_rows, plan_needs_reference, reference_rows, score_initial, scoring_settings
from .refstore import model_fingerprint
from .responses import RefCache, ResponseTable, Scorer
from .sharding import is_sharded
from .stages import OfflineStages, StageSource
from .tokencache import encode_cached


@dataclass
class Update:
    """What an ``on_batch`` hook sees after each optimiser update (already logged, not yet checkpointed)."""

    stage: int  # 0-based
    update: int  # 0-based, within the stage
    step: int  # global, 1-based: the ``step`` of its metrics.jsonl line
    micro: list[list[int]]  # this process's micro-batches: item indices (`Objective.items`)
    metrics: dict
    seconds: float  # wall time of the update itself (forwards, backwards, optimiser step)


@dataclass
class Hooks:
    """Callbacks for code that watches a run (benchmarks, tests, loggers) instead of patching the loop.
    ``on_batch(run, Update)`` after every update; ``on_stage_end(run, k, info)`` once ``stage-K/`` is saved.
    A hook that raises stops the run there, as a crash would (``state/`` holds the last checkpoint)."""

    on_batch: list[Callable] = field(default_factory=list)
    on_stage_end: list[Callable] = field(default_factory=list)


@dataclass
class Run:
    """Everything the stage loop needs, built once by `setup`."""

    cfg: TrainConfig
    resolved: Resolved  # every auto of cfg, resolved once (logged in summary.json)
    accelerator: Accelerator
    model: torch.nn.Module
    tokenizer: object
    data: Prepared
    table: ResponseTable
    refs: RefCache
    scorer: Scorer  # the one log-prob function: policy, references, held-out metrics, dynamic difficulty
    objective: PairObjective | ListObjective
    stages: list[Stage]  # the offline plan (an online source replaces its stages as they come)
    stage_updates: list[int]
    fingerprint: str = ""  # content hash of the records (pipeline.data_fingerprint)
    memory: dict = field(default_factory=dict)  # what memory_policy chose (in summary.json)
    log: list[dict] = field(default_factory=list)
    save_dtype: torch.dtype | None = None  # run.save_dtype resolved: stage-K/ and final/ are written in it
    source: StageSource = field(default_factory=OfflineStages)
    hooks: Hooks = field(default_factory=Hooks)
    resumed_from: dict | None = None  # where --resume picked the run up
    updates_run: int = 0  # by this launch (fewer than the total after a resume)
    online: dict[int, dict] = field(default_factory=dict)  # stage -> what its online sampling/judging gave

    @property
    def pairs_per_update(self) -> int:
        o = self.cfg.optim
        return o.batch_size * o.grad_accum * self.accelerator.num_processes


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
        run, pos = start(cfg, records, resume, created)
        run.source, run.hooks = stages or OfflineStages(), hooks or Hooks()
        return train_stages(run, pos)


def train_stages(run: Run, pos: Position) -> dict:
    """Curry-DPO's stages in order, from ``pos``: each trained from the last policy against its reference."""
    resolved, optimizer, scheduler = run.resolved, None, None
    if resolved.across_stages == "continue":  # one optimiser and LR schedule over all stages
        optimizer, scheduler = make_optimizer(run, sum(run.stage_updates))
    for k in range(pos.stage):  # stages done before a resume: what they added to the run, from their files
        run.source.stage(k, run, replay=True)
    for k in range(pos.stage, len(run.stages)):
        stage = run.stages[k] = run.source.stage(k, run)  # offline: the plan's; online: judged samples of now
        if resolved.across_stages == "restart":  # the paper's iterative recipe: each stage a fresh DPO run
            optimizer, scheduler = make_optimizer(run, run.stage_updates[k])
        restore_mid_stage(run, k, pos, optimizer, scheduler)
        reference = reference_for(resolved.reference, k)  # the reference swap: the previous stage's policy
        ref = reference_logps(run, k, stage, reference)
        if pos.order is None:
            pos.order = stage_order(run, stage, ref)
        t0 = time.perf_counter()
        with lifetime.deferred_stops():  # SIGTERM/SIGINT: stop at the next update boundary, checkpointed
            run_stage(run, k, optimizer, scheduler, ref, pos)
        end_stage(run, k, pos, time.perf_counter() - t0, optimizer, scheduler)
    return finish(run, pos.stages_done)


def start(cfg: TrainConfig, records: list[Record] | None, resume: bool, created: bool) -> tuple[Run, Position]:
    """The run set up (`setup`), its logs opened and, with ``resume``, its weights and log where the checkpoint
    left them; returns it with the position to go on from. Bad data or model: a new directory is removed."""
    out = cfg.run.output_dir
    resumed = Position.load(out) if resume else None
    if resumed is not None:
        check_same_run(out, cfg)
    elif os.path.exists(os.path.join(out, ckpt.STATE_DIR)):
        raise CurryError(f"{out} already holds a run; pass --resume to continue it or choose another run.output_dir")
    try:
        run = setup(cfg, records, resumed)
    except BaseException:
        if created:  # bad data or model: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    acc = run.accelerator
    if acc.is_main_process:
        write_text(os.path.join(out, "config.yaml"), to_yaml(cfg))
    acc.init_trackers("currydpo", config={k: str(v) for k, v in cfg.to_dict().items()})
    if resumed is not None:
        ckpt.load_weights(out, acc.unwrap_model(run.model))
        run.resumed_from = {"stage": resumed.stage + 1, "update": resumed.update, "global_step": resumed.global_step}
        with open(os.path.join(out, "metrics.jsonl")) as f:  # drop lines logged after the checkpoint
            run.log = [json.loads(line) for line, _ in zip(f, range(resumed.log_lines))]  # (a kill may cut the last)
    if acc.is_main_process:
        with open(os.path.join(out, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in run.log)
    if not is_sharded(run.model):  # a sharded model is placed already; prepare would wrap it in DDP
        run.model = acc.prepare(run.model)
    run.model.train()
    if acc.is_main_process and resumed is None:
        for warning in lr_schedule_warnings(cfg, run.stage_updates):
            print(f"currydpo: warning: {warning}", file=sys.stderr, flush=True)
        for note in pass_notes(run):
            print(f"currydpo: note: {note}", file=sys.stderr, flush=True)
    return run, resumed or Position(fingerprint=run.fingerprint)


def restore_mid_stage(run: Run, k: int, pos: Position, optimizer, scheduler) -> None:
    """--resume inside stage ``k``: its optimiser, scheduler and RNG as checkpointed (a restarted stage's
    optimiser starts fresh when the kill came before its first update)."""
    if run.resumed_from is None or k + 1 != run.resumed_from["stage"]:
        return
    if run.resolved.across_stages == "continue" or pos.update > 0:
        ckpt.load_optim(run.cfg.run.output_dir, optimizer, scheduler, run.model)
    ckpt.load_rng(run.cfg.run.output_dir)


def end_stage(run: Run, k: int, pos: Position, seconds: float, optimizer, scheduler) -> None:
    """After stage ``k``'s last update: its summary (held-out metrics against the initial reference), its
    model in ``stage-K/``, ``state/`` advanced to the next stage, then the ``on_stage_end`` hooks."""
    cfg, acc, stage = run.cfg, run.accelerator, run.stages[k]
    info = {"stage": k + 1, "label": stage.label,
            "reference": reference_label(run.resolved.reference, k, cfg.curriculum.reference_mix),
            "pairs": len(pos.order), "updates": run.stage_updates[k], "end_step": pos.global_step,
            "passes": stage_passes(run.stage_updates[k], run.pairs_per_update, len(pos.order)),
            "train_seconds": round(seconds, 3), **run.online.get(k, {}), **evaluate_held_out(run, ref_key="initial")}
    if isinstance(run.objective, ListObjective):  # "pairs" counts lists; the pairs they stand for, for fair comparisons
        info["pairs_equivalent"] = sum(run.objective.lists[i].n_pairs for i in pos.order)
    held_out = {key: v for key, v in info.items() if key.startswith(("eval/", "eval_")) and isinstance(v, (int, float))}
    if held_out:  # to metrics.jsonl and the trackers, as HF Trainer logs its evaluations
        log_metrics(run, {"step": pos.global_step, "stage": k + 1, **held_out})
    ensure_finite(run, f"the end of stage {k + 1}")
    model = acc.unwrap_model(run.model)
    weights = ckpt.full_state_dict(model) if is_sharded(model) else None  # gathered whole on the main process
    if acc.is_main_process:
        ckpt.save_model(os.path.join(cfg.run.output_dir, stage_name(k)), model, run.tokenizer, cfg, info=info,
                        dtype=run.save_dtype, state_dict=weights)
    pos.stage, pos.update, pos.order = k + 1, 0, None
    pos.stages_done.append(info)
    keep = run.resolved.across_stages == "continue"  # restart: the next stage builds a fresh optimiser
    save_position(run, optimizer if keep else None, scheduler if keep else None, pos)
    for hook in run.hooks.on_stage_end:
        hook(run, k, info)


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


@dataclass
class Position:
    """Where a run stands; saved in ``state/position.json`` and loaded once by ``--resume``.

    ``stage``/``update``: the next update to run (0-based). ``order``: the stage's pair order,
    fixed when the stage starts (self-paced admits pairs then), None before. ``log_lines``:
    metric lines logged up to here. ``stages_done``: the summaries (held-out metrics included)
    of the completed stages, so a resumed run reports them as an uninterrupted one does.
    ``fingerprint``: the data's content hash, so a resume cannot continue on other data.
    """

    stage: int = 0
    update: int = 0
    global_step: int = 0
    order: list[int] | None = None
    log_lines: int = 0
    stages_done: list[dict] = field(default_factory=list)
    fingerprint: str = ""
    tokens: int = 0  # tokens trained so far (TRL's num_tokens)

    @classmethod
    def load(cls, output_dir: str) -> "Position | None":
        saved = ckpt.read_position(output_dir)
        return None if saved is None else cls(**saved)


def reference_logps(run: Run, k: int, stage: Stage, reference: str) -> torch.Tensor | None:
    """Reference log-probs of every table row (None for reference-free losses): ``reference``'s, computed
    for the rows stage ``k`` uses where missing. When the reference is the previous stage's policy, the model
    being trained *is* that policy now, so it scores the responses before its first update of the stage:
    no second copy in memory. (K, T) for all-previous (MRPO), the stage's mixture for mixture."""
    if not needs_reference(run.cfg.loss.name):
        return None
    mode, rows = run.resolved.reference, reference_rows(run, k)  # what the stage's planned batches use
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
    rows, where = obj.rows(items)
    lp, n = run.scorer.score(run.accelerator.unwrap_model(run.model), run.table, rows, desc="dynamic difficulty")
    x = obj.inputs(lp, n, where, items, None if ref is None else ref[..., torch.tensor(rows)])
    return obj.loss(x)[2].tolist()


def evaluate_held_out(run: Run, ref_key: str) -> dict:
    """Preference metrics on held-out pairs against the initial reference (empty without eval_fraction)."""
    if not run.data.eval_pairs:
        return {}
    pairs = run.data.eval_pairs
    rows, ci, ri = run.table.rows(pairs)
    lp, n = run.scorer.score(run.accelerator.unwrap_model(run.model), run.table, rows, desc="held-out metrics")
    ref = run.refs.get(ref_key, len(run.table.keys))[torch.tensor(rows)]
    m = preference_metrics(lp[ci], lp[ri], n[ci], n[ri], ref[ci], ref[ri], run.cfg.loss.beta,
                           [p.score_gap for p in pairs], buckets=[p.rejected_position for p in pairs])
    m.update(held_out_logits(run, rows, ci, ri))  # TRL's logits/chosen, logits/rejected
    return cadence.with_trl_names({f"eval/{k}": v for k, v in m.items()})


def run_stage(run: Run, k: int, optimizer, scheduler, ref: torch.Tensor | None, pos: Position) -> None:
    """The update loop of stage ``k``, from update ``pos.update``; advances ``pos`` as it goes."""
    cfg, acc = run.cfg, run.accelerator
    n_updates = run.stage_updates[k]
    bar = progress_bar(range(pos.update, n_updates), desc=f"stage {k + 1}/{len(run.stages)}", initial=pos.update,
                       total=n_updates, unit="update", enabled=cfg.run.progress and acc.is_main_process)
    for u in bar:
        micro = stage_batches(run, run.stages[k], pos.order, u)
        where = f"stage {k + 1}, update {u + 1}, step {pos.global_step + 1}"
        t0 = time.perf_counter()
        try:
            metrics = train_step(run, optimizer, scheduler, micro, ref, where)
        except FloatingPointError as e:
            optimizer.zero_grad(set_to_none=True)
            if weights_finite(run):
                save_position(run, optimizer, scheduler, pos)
                saved = "the last good state is saved in"
            else:  # the weights themselves went non-finite: keep the previous checkpoint
                saved = "the weights are non-finite, so state/ was not overwritten; the last checkpoint is in"
            raise CurryError(f"non-finite values: {e}; {saved} {cfg.run.output_dir}/state "
                             f"(lower optim.lr or check the data)") from None
        seconds = time.perf_counter() - t0
        pos.update, pos.global_step = u + 1, pos.global_step + 1
        run.updates_run += 1
        pos.tokens += int(metrics.pop("num_tokens"))
        if cadence.log_due(cfg.run, u, n_updates):  # run.logging_steps (TRL's logging_steps)
            log_metrics(run, {"step": pos.global_step, "stage": k + 1, "stage_update": u + 1,
                              "epoch": round((u + 1) * run.pairs_per_update / max(1, len(pos.order)), 4),  # of stage
                              "num_tokens": pos.tokens, **metrics})
        if cadence.eval_due(cfg.run, u, n_updates):  # run.eval_steps (TRL's eval_strategy: steps)
            log_metrics(run, {"step": pos.global_step, "stage": k + 1, "stage_update": u + 1,
                              **evaluate_held_out(run, ref_key="initial")})
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracies']:.2f}")
        for hook in run.hooks.on_batch:
            hook(run, Update(k, u, pos.global_step, micro, metrics, seconds))
        periodic = bool(cfg.run.save_every) and (u + 1) % cfg.run.save_every == 0 and u + 1 < n_updates
        if periodic:
            save_position(run, optimizer, scheduler, pos)
        stop_if_signalled(run, optimizer, scheduler, pos, saved=periodic)


def stage_batches(run: Run, stage: Stage, order: list[int], update: int) -> list[list[int]]:
    """This process's micro-batches (item indices) for ``update`` of ``stage``.

    Update u takes the next ``pairs_per_update`` items of the stage order, wrapping around
    for extra passes: re-shuffled per pass (seeded) where the order is random or shuffled within the stage,
    the curriculum order repeated otherwise (`pass_notes` states it; ``summary.json`` counts the passes).
    Process p takes micro-batches p, p+W, ... of each update, so the global batch is the
    same for any number of processes.
    """
    P, B = run.pairs_per_update, run.cfg.optim.batch_size
    start = update * P
    passes: dict[int, list[int]] = {}  # one permutation per pass touched by this update
    picked = []
    for pos in range(start, start + P):
        epoch, k = divmod(pos, len(order))
        if epoch not in passes:
            passes[epoch] = order
            if epoch > 0 and run.resolved.reshuffle_passes:
                passes[epoch] = order[:]
                random.Random(run.cfg.run.seed * 7919 + stage.index * 131 + epoch).shuffle(passes[epoch])
        picked.append(passes[epoch][k])
    micro = [picked[j:j + B] for j in range(0, P, B)]
    W, p = run.accelerator.num_processes, run.accelerator.process_index
    return micro[p::W]


def train_step(run: Run, optimizer, scheduler, micro: list[list[int]], ref, where: str) -> dict:
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
        rows, where_in = obj.rows(items)
        # FSDP2 reduce-scatters every micro-batch: its no_sync would hold a whole unsharded gradient per process
        sync = contextlib.nullcontext() if m == len(micro) - 1 or is_sharded(model) else acc.no_sync(model)
        with sync:
            lp, n = run.scorer.policy(model, [run.table.encoded[r] for r in rows])  # each unique response once
            x = obj.inputs(lp, n, where_in, items, None if ref is None else ref[..., torch.tensor(rows)])
            loss, metrics, _ = obj.loss(x)
            check_finite_everywhere(acc, loss, where, idx)
            acc.backward(loss * (len(idx) / n_items))  # the loss is a mean over the micro-batch's items
        for k, v in metrics.items():  # metrics are means over items
            sums[k] = sums.get(k, 0.0) + v * len(idx) / n_items
        sums["difficulty"] = sums.get("difficulty", 0.0) + sum(
            x.difficulty.get(run.cfg.curriculum.difficulty, math.nan) for x in items) / n_items
    grad_norm = acc.clip_grad_norm_(model.parameters(), run.cfg.optim.max_grad_norm or float("inf"))
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # sharded: a DTensor
    if not torch.isfinite(torch.as_tensor(grad_norm)):
        raise FloatingPointError(f"gradient norm is {float(grad_norm)} at {where}")
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


def check_finite_everywhere(acc: Accelerator, loss: torch.Tensor, where: str, pairs: list[int]) -> None:
    """Raise FloatingPointError on every process if the loss is non-finite on any of them.

    A process that stopped alone would leave the others waiting forever in the next
    gradient all-reduce, so with several processes the verdict is all-reduced first.
    """
    bad = ~torch.isfinite(loss.detach())
    if acc.num_processes > 1:
        anywhere = acc.reduce(bad.float().reshape(1), "sum").item() > 0
        if anywhere and not bad:
            raise FloatingPointError(f"loss is non-finite on another process at {where}")
    if bad:
        raise FloatingPointError(f"loss is {loss.item()} at {where}, pairs {pairs}")


def make_optimizer(run: Run, n_updates: int):
    o = run.cfg.optim
    params = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[o.lr_schedule]
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=int(o.warmup_ratio * n_updates),
                              num_training_steps=n_updates)
    return optimizer, scheduler


def stage_passes(updates: int, items_per_update: int, items: int) -> float:
    """How many passes over its items a stage of ``updates`` updates makes (each update takes the next items)."""
    return round(updates * items_per_update / max(1, items), 3)


def pass_notes(run: Run) -> list[str]:
    """No stage wraps silently: each planned stage that visits its items more than once, and how the later
    passes are ordered (online stages are sized when sampled; their passes are in summary.json)."""
    notes = []
    again = "reshuffled (seeded)" if run.resolved.reshuffle_passes else "the curriculum order repeated"
    for k, (stage, n) in enumerate(zip(run.stages, run.stage_updates)):
        passes = stage_passes(n, run.pairs_per_update, len(stage.pairs))
        if stage.pairs and stage.admit_fraction is None and passes > 1:  # self-paced: sized at stage start
            notes.append(f"stage {k + 1} makes {passes:g} passes over its {len(stage.pairs)} {run.objective.unit}s "
                         f"({n} updates x {run.pairs_per_update}); passes after the first: {again}")
    return notes


def lr_schedule_warnings(cfg: TrainConfig, stage_updates: list[int]) -> list[str]:
    """Stages the LR schedule would starve: every update at learning rate 0, or warm-up over the whole
    stage (a run that 'succeeds' having barely trained). The schedule is replayed on a dummy parameter."""
    o, restart = cfg.optim, resolve(cfg).across_stages == "restart"
    spans = [stage_updates] if not restart else [[n] for n in stage_updates]
    out, first = [], 0
    for span in spans:
        n_total = sum(span)
        dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=o.lr)
        name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[o.lr_schedule]
        warmup = int(o.warmup_ratio * n_total)
        sched = get_scheduler(name, dummy, num_warmup_steps=warmup, num_training_steps=n_total)
        lrs = []
        for _ in range(n_total):
            lrs.append(sched.get_last_lr()[0])
            dummy.step()
            sched.step()
        start = 0
        for j, n in enumerate(span):
            k = first + j + 1
            stage_lrs, steps = lrs[start:start + n], range(start, start + n)
            if n and all(lr == 0 for lr in stage_lrs):
                out.append(f"stage {k}: all {n} update(s) run at learning rate 0 (warm-up {warmup} of {n_total} "
                           f"updates); lower optim.warmup_ratio or give the stage more updates")
            elif n and all(t < warmup for t in steps):
                out.append(f"stage {k}: warm-up ({warmup} updates) spans the whole stage ({n} updates), so it "
                           f"never trains at optim.lr; lower optim.warmup_ratio")
            start += n
        first += len(span)
    return out


def stop_if_signalled(run: Run, optimizer, scheduler, pos: Position, saved: bool) -> None:
    """After an update: on SIGTERM/SIGINT (on any process) write ``state/`` and stop with one line saying how to
    resume. The verdict is all-reduced, so every process stops at the same update."""
    signum = lifetime.stop_requested() or 0
    if run.accelerator.num_processes > 1:
        signum = int(run.accelerator.gather(torch.tensor([signum], device=run.accelerator.device)).max())
    if not signum:
        return
    if not saved:
        save_position(run, optimizer, scheduler, pos)
    name = signal.Signals(signum).name
    raise lifetime.Stopped(f"stopped by {name} after stage {pos.stage + 1}, update {pos.update} (step "
                           f"{pos.global_step}); {run.cfg.run.output_dir}/state is saved: run the same command with "
                           f"--resume to continue", signum)


def log_metrics(run: Run, entry: dict) -> None:
    """One line of ``metrics.jsonl``; the trackers get the same numbers under ``train/`` (an update) or as
    logged (``eval/*`` entries: held-out metrics after a stage), as HF Trainer names them."""
    run.log.append(entry)
    if run.accelerator.is_main_process:
        with open(os.path.join(run.cfg.run.output_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(entry) + "\n")
    values = {k: v for k, v in entry.items() if k != "step" and isinstance(v, (int, float))}
    tagged = values if any(k.startswith("eval/") for k in values) else {f"train/{k}": v for k, v in values.items()}
    run.accelerator.log(tagged, step=entry["step"])


def weights_finite(run: Run) -> bool:
    """Whether every weight is finite; with FSDP2 each process checks its shards and the verdict is all-reduced."""
    bad = sum(int(not torch.isfinite(sharding.local(p)).all()) for p in run.model.parameters())
    if is_sharded(run.model):
        bad = run.accelerator.reduce(torch.tensor([bad], device=run.accelerator.device), "sum").item()
    return bad == 0


def ensure_finite(run: Run, where: str) -> None:
    """Before a save: non-finite weights are never written (they would pass for a trained model)."""
    if not weights_finite(run):
        raise CurryError(f"non-finite values: the weights are non-finite at {where}; nothing was saved, the last "
                         f"checkpoint is in {run.cfg.run.output_dir}/state (lower optim.lr or loss.beta, or check the "
                         f"data)")


def save_position(run: Run, optimizer, scheduler, pos: Position) -> None:
    """Checkpoint ``state/``: weights, optimiser and scheduler (None: not saved), RNG, ``pos``."""
    ensure_finite(run, f"stage {pos.stage + 1}, update {pos.update}" if pos.update else f"the end of stage {pos.stage}")
    pos.log_lines = len(run.log)
    run.accelerator.wait_for_everyone()
    model = run.accelerator.unwrap_model(run.model)
    if run.accelerator.is_main_process or is_sharded(model):  # sharded: every process writes its shards
        ckpt.save_state(run.cfg.run.output_dir, model, optimizer, scheduler, dataclasses.asdict(pos), run.cfg)
    run.accelerator.wait_for_everyone()


def setup(cfg: TrainConfig, records: list[Record] | None, resume_from: Position | None = None) -> Run:
    """Data, model, response table, initial reference log-probs, model-based difficulty, stage plan; every
    ``auto`` resolved once into `Run.resolved`."""
    c, o = cfg.curriculum, cfg.optim
    sharding.refuse_deepspeed()  # before any work: the handbook's ZeRO-3 launch config
    trackers = check_trackers(cfg.run.report_to)
    quiet_bars(cfg.run.progress)
    _check_path(cfg.model.path, "model.path")  # before the data is read: a typo'd model fails at once
    precision = prec.resolve_precision(cfg.model.precision, prec.training_device(),
                                       os.environ.get("ACCELERATE_MIXED_PRECISION"))
    acc = prec.make_accelerator(precision, log_with=trackers or None, project_dir=cfg.run.output_dir)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != acc.num_processes:  # else every process would train alone and all write the same files
        raise CurryError(f"{launched} processes were launched but accelerate sees {acc.num_processes}; on CPUs "
                         f"set ACCELERATE_USE_CPU=true (see docs/multi-gpu.md)")
    set_seed(cfg.run.seed)
    data = prepare(cfg, records)
    fingerprint = data_fingerprint(data.records)
    if resume_from is not None and resume_from.fingerprint not in ("", fingerprint):
        raise CurryError(f"--resume: the data changed since {cfg.run.output_dir} was checkpointed (content hash "
                         f"{fingerprint[:12]}, was {resume_from.fingerprint[:12]}); resume with the same data, or "
                         f"start a new run.output_dir")
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    fsdp = sharding.fsdp_plugin(acc)
    model = load_model(cfg.model.path, cfg.model, acc.device, dtype=prec.master_dtype(precision))
    if model.config._attn_implementation == "flex_attention" and acc.device.type == "cpu":
        raise CurryError("model.attention flex cannot train on CPU: torch's FlexAttention has no backward there "
                         "(torch 2.13: forward only); use model.attention sdpa (auto picks it on CPU)")
    scorer = Scorer.for_model(model, tokenizer.pad_token_id, cfg.model.fused_logprobs, acc.device, acc,
                              o.batch_size * 2, cfg.run.progress and acc.is_main_process)  # one kernel, fixed now
    cache = cache_root(cfg.run.cache_dir)  # token ids and initial-reference values shared across runs
    model_fp = model_fingerprint(model, scoring_settings(model, scorer, precision, acc.device)) if cache else None
    if fsdp:  # shard before the reference pass, which then runs sharded too; LoRA first, so its layers are sharded
        model = sharding.shard(add_lora(model, cfg.model) if cfg.model.lora else model, fsdp, acc.device)
    enc = encode_cached(tokenizer, data.records, cfg.data, cache, acc, cfg.run.progress)
    table = ResponseTable.from_pairs(data.train_pairs + data.eval_pairs, enc)
    refs = RefCache(os.path.join(cfg.run.output_dir, "refcache"), write=acc.is_main_process)
    initial = functools.partial(score_initial, cfg, model, table, refs, scorer, device=acc.device, fsdp=fsdp,
                                precision=precision, cache_dir=cache, model_fp=model_fp)
    if plan_needs_reference(cfg):  # ref-logratio difficulty or selection: every pair's initial value, first
        initial(list(range(len(table.keys))))
        plan(cfg, data, dict(zip(table.keys, refs.get("initial", len(table.keys)).tolist())))
    else:
        plan(cfg, data)  # difficulty, stages
    resolved, stages = resolve(cfg), data.stages
    objective, per_item = PairObjective(data.train_pairs, table, cfg.loss, c.mrpo_eta), 2
    if is_listwise(cfg.loss.name):  # the same plan, each stage's pairs regrouped into ranked lists
        lists, stages = stage_lists(data.records, data.train_pairs, stages, c.schedule, plan_measure(cfg),
                                    resolved.shuffle_within_stage)
        objective, per_item = ListObjective(lists, table, cfg.loss), max(len(x.responses) for x in lists)
    P = o.batch_size * o.grad_accum * acc.num_processes
    sizes = [len(s.pairs) if s.admit_fraction is None else max(1, round(len(s.pairs) * s.admit_fraction))
             for s in stages]
    n_updates = updates_per_stage(sizes, [math.ceil(n / P) for n in sizes], o.epochs_per_stage, o.total_updates)
    initial(initial_rows(cfg, resolved.reference, objective, table, data, stages, n_updates, P))  # where it is used
    if cfg.model.lora and not fsdp:
        model = add_lora(model, cfg.model)
    memory = memory_policy(cfg, model, table, acc, prec.compute_dtype(precision), per_item)
    save_dtype = prec.save_dtype(cfg.run.save_dtype, cfg.model.path, cfg.model.trust_remote_code)
    resolved = dataclasses.replace(
        resolved, split_by=data.split_by, precision=precision, lm_head=scorer.lm_head, attention=memory["attention"],
        gradient_checkpointing=memory["gradient_checkpointing"],
        max_tokens_per_micro_batch=memory["max_tokens_per_micro_batch"],
        save_dtype=str(save_dtype).removeprefix("torch."))
    if acc.is_main_process:
        prec.warn_if_updates_round_away(model, o.lr)
    return Run(cfg, resolved, acc, model, tokenizer, data, table, refs, scorer, objective, stages, n_updates,
               fingerprint, memory, save_dtype=save_dtype)


def check_trackers(report_to: str) -> list[str]:
    """``run.report_to`` as a list, each tracker installed (accelerate only warns and logs nowhere)."""
    import accelerate.utils

    names = [t.strip() for t in report_to.split(",") if t.strip()]
    for name in names:
        available = getattr(accelerate.utils, f"is_{name.replace('-', '_')}_available", None)
        if name != "all" and available is None:
            raise CurryError(f"run.report_to: unknown tracker {name!r}; accelerate's trackers: tensorboard, wandb, "
                             f"comet_ml, mlflow, aim, clearml, dvclive, swanlab, trackio")
        if available is not None and not available():
            extra = " (pip install 'currydpo[tensorboard]')" if name == "tensorboard" else f" (pip install {name})"
            raise CurryError(f"run.report_to {name}: the {name} package is not installed{extra}; install it or "
                             f"remove it from run.report_to")
    return names


def memory_policy(cfg: TrainConfig, model, table: ResponseTable, acc: Accelerator, compute_dtype: torch.dtype,
                  per_item: int = 2) -> dict:
    """Resolve and apply the memory settings that need the model and data (``per_item``: sequences per training
    item, 2 for pairs, the longest list's size for ranked lists); log what was chosen."""
    m, o = cfg.model, cfg.optim
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    budget = memory_budget(model, acc.device, m.memory_budget_gb)
    tokens = resolve_token_bound(o.max_tokens_per_micro_batch, model, acc.device, budget, compute_dtype)
    choice = choose_checkpointing(m.gradient_checkpointing, model, table, o.batch_size, tokens, budget, compute_dtype,
                                  per_item)
    if choice.on:
        enable_checkpointing(model)
    if acc.is_main_process:
        bound = f"micro-batches of at most {tokens} tokens" if tokens else "micro-batches unbounded by tokens"
        print(f"currydpo: {choice.describe()}; {bound}; attention {attention}", file=sys.stderr, flush=True)
    return {"gradient_checkpointing": choice.on, "activation_gb": round(choice.activation_gb, 3),
            "memory_budget_gb": round(choice.budget_gb, 3), "max_tokens_per_micro_batch": tokens,
            "attention": attention}


# Keys that may change between a kill and --resume: they do not change what is trained.
RESUME_HARMLESS = ("run.progress", "run.report_to", "run.output_dir", "run.cache_dir", "run.logging_steps",
                   "run.eval_steps", "run.push_to_hub", "run.hub_model_id", "run.hub_private_repo", "run.hub_revision")


def check_same_run(output_dir: str, cfg: TrainConfig) -> None:
    """--resume continues the run in ``output_dir`` only with the config it was started with."""
    with open(os.path.join(output_dir, ckpt.STATE_DIR, "config.yaml")) as f:
        saved = from_dict(yaml.safe_load(f) or {})
    changed = [k for k in changed_keys(saved, cfg) if k not in RESUME_HARMLESS]
    if changed:
        raise CurryError(f"--resume: {output_dir} was trained with a different config ({', '.join(changed)} "
                         f"changed); resume with the same config, or start a new run.output_dir")


def best_stage(output_dir: str, n_stages: int, metric: str) -> tuple[int, float]:
    """(stage, value): the stage whose held-out ``metric`` (saved in ``stage-K/``, so a resumed run sees
    every stage) is highest; the earliest on ties."""
    scores = [ckpt.stage_info(output_dir, k).get(metric) for k in range(1, n_stages + 1)]
    if any(v is None for v in scores):
        raise CurryError(f"run.final_model best: no held-out '{metric}' in {output_dir}/stage-K (no held-out "
                         f"pairs: raise data.eval_fraction); final/ was not written, every stage-K/ is complete")
    j = max(range(n_stages), key=lambda j: (scores[j], -j))
    return j + 1, scores[j]


def finish(run: Run, stage_info: list[dict]) -> dict:
    """Save the final model and the run summary (what was held equal, for fair comparisons)."""
    cfg, acc, o = run.cfg, run.accelerator, run.cfg.optim
    summary = {
        "schedule": cfg.curriculum.schedule, "difficulty": cfg.curriculum.difficulty, "loss": cfg.loss.name,
        "beta": cfg.loss.beta, "reference": run.resolved.reference, "total_updates": sum(run.stage_updates),
        "pairs_per_update": run.pairs_per_update, "unit": run.objective.unit,
        "lr": o.lr, "lr_schedule": o.lr_schedule,
        "warmup_ratio": o.warmup_ratio, "across_stages": run.resolved.across_stages,
        "optimizer_resets": len(run.stages) - 1 if run.resolved.across_stages == "restart" else 0,
        "train_pairs": len(run.data.train_pairs), "eval_pairs": len(run.data.eval_pairs),
        "unique_responses": len(run.table.keys), "stages": stage_info,
        "final_loss": next((e["loss"] for e in reversed(run.log) if "loss" in e), None), "memory": run.memory,
        "resumed_from": run.resumed_from, "updates_run": run.updates_run,
        "resolved": run.resolved.to_dict(),  # every auto of the config, as this run resolved it
    }
    if acc.is_main_process:
        model, k = acc.unwrap_model(run.model), len(run.stages)
        if cfg.run.final_model == "best":  # stage-level early stopping, like HF's load_best_model_at_end
            k, value = best_stage(cfg.run.output_dir, len(run.stages), cfg.run.best_metric)
            summary["final_model"] = {"stage": k, cfg.run.best_metric: value}
        if is_sharded(model):  # its weights are spread over the processes; stage-K/ holds them whole
            model = ckpt.load_saved(os.path.join(cfg.run.output_dir, f"stage-{k}"), cfg)
        elif k != len(run.stages):
            ckpt.load_stage_weights(model, os.path.join(cfg.run.output_dir, f"stage-{k}"))
        ckpt.save_model(os.path.join(cfg.run.output_dir, "final"), model, run.tokenizer, cfg, merge_lora=True,
                        dtype=run.save_dtype, card=model_card(cfg, summary))
        write_json(os.path.join(cfg.run.output_dir, "summary.json"), summary)
        if cfg.run.push_to_hub:  # final/ to the repo's main (run.hub_revision), each stage-K/ to branch stage-K
            summary["hub"] = hub.push(cfg, len(run.stages))
    acc.end_training()
    return summary
