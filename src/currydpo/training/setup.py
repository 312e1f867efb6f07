"""A run set up before its first update: `start` (the output directory's logs, or where a killed run
stood) and `setup` (data, model, response table, initial reference log-probs, stage plan, memory
settings; every ``auto`` resolved once), which builds the frozen `run.Run`."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

from ..cache import cache_root
from ..config import TrainConfig, resolve, to_yaml
from ..curriculum.lists import stage_lists
from ..curriculum.schedules import updates_per_stage
from ..data.records import Record
from ..errors import CurryError
from ..io import quiet_bars, write_text
from ..losses import is_listwise
from ..pipeline import data_fingerprint, plan, plan_measure, prepare
from . import checkpoint as ckpt
from . import precision as prec
from . import sharding
from .memory import choose_checkpointing, enable_checkpointing, memory_budget, resolve_token_bound
from .model import add_lora, check_path, load_model, load_tokenizer
from .objective import ListObjective, PairObjective
from .position import Position, check_same_data, check_same_run
from .refplan import initial_rows, plan_needs_reference, score_initial, scoring_settings
from .refstore import model_fingerprint
from .responses import RefCache, ResponseTable, Scorer
from .run import Hooks, Progress, Run
from .sharding import is_sharded
from .stages import OfflineStages, StageSource
from .tokencache import encode_cached

# optim.lr_schedule -> transformers' scheduler name
SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


def start(cfg: TrainConfig, records: list[Record] | None, resume: bool, created: bool,
          source: StageSource | None = None, hooks: Hooks | None = None) -> tuple[Run, Progress]:
    """The run set up (`setup`), its logs opened and, with ``resume``, its weights and log where the checkpoint
    left them; returns it with its progress so far. Bad data or model: a new directory is removed."""
    out = cfg.run.output_dir
    resumed = Position.load(out) if resume else None
    if resumed is not None:
        check_same_run(out, cfg)
    elif os.path.exists(os.path.join(out, ckpt.STATE_DIR)):
        raise CurryError(f"{out} already holds a run; pass --resume to continue it or choose another run.output_dir")
    position = resumed or Position()
    try:
        run = setup(cfg, records, position, source, hooks)
    except BaseException:
        if created:  # bad data or model: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    acc = run.accelerator
    progress = Progress(position, list(run.stages))
    if acc.is_main_process:
        write_text(os.path.join(out, "config.yaml"), to_yaml(cfg))
    acc.init_trackers("currydpo", config={k: str(v) for k, v in cfg.to_dict().items()})
    if resumed is not None:
        ckpt.load_weights(out, acc.unwrap_model(run.model))
        progress.resumed_from = {"stage": resumed.stage + 1, "update": resumed.update,
                                 "global_step": resumed.global_step}
        with open(os.path.join(out, "metrics.jsonl")) as f:  # drop lines logged after the checkpoint (a kill
            progress.log = [json.loads(line) for line, _ in zip(f, range(resumed.log_lines))]  # may cut the last)
    if acc.is_main_process:
        with open(os.path.join(out, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in progress.log)
    run.model.train()
    if acc.is_main_process and resumed is None:
        for warning in lr_schedule_warnings(cfg, run.stage_updates, run.resolved.across_stages):
            print(f"currydpo: warning: {warning}", file=sys.stderr, flush=True)
        for note in pass_notes(run):
            print(f"currydpo: note: {note}", file=sys.stderr, flush=True)
    return run, progress


def setup(cfg: TrainConfig, records: list[Record] | None, position: Position | None = None,
          source: StageSource | None = None, hooks: Hooks | None = None) -> Run:
    """Data, model, response table, initial reference log-probs, model-based difficulty, stage plan; every
    ``auto`` resolved once into `Run.resolved`. ``position``: where a resumed run stands (its data must be the
    same); a fresh one takes the data's fingerprint."""
    curriculum, optim = cfg.curriculum, cfg.optim
    sharding.refuse_deepspeed()  # before any work: the handbook's ZeRO-3 launch config
    trackers = check_trackers(cfg.run.report_to)
    quiet_bars(cfg.run.progress)
    check_path(cfg.model.path, "model.path")  # before the data is read: a typo'd model fails at once
    precision = prec.resolve_precision(cfg.model.precision, prec.training_device(),
                                       os.environ.get("ACCELERATE_MIXED_PRECISION"))
    acc = prec.make_accelerator(precision, log_with=trackers or None, project_dir=cfg.run.output_dir)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != acc.num_processes:  # else every process would train alone and all write the same files
        raise CurryError(f"{launched} processes were launched but accelerate sees {acc.num_processes}; on CPUs "
                         f"set ACCELERATE_USE_CPU=true (see docs/multi-gpu.md)")
    set_seed(cfg.run.seed)
    data = prepare(cfg, records)
    check_same_data(position or Position(), data_fingerprint(data.records), cfg.run.output_dir)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    fsdp = sharding.fsdp_plugin(acc)
    model = load_model(cfg.model.path, cfg.model, acc.device, dtype=prec.master_dtype(precision))
    if model.config._attn_implementation == "flex_attention" and acc.device.type == "cpu":
        raise CurryError("model.attention flex cannot train on CPU: torch's FlexAttention has no backward there "
                         "(torch 2.13: forward only); use model.attention sdpa (auto picks it on CPU)")
    scorer = Scorer.for_model(model, tokenizer.pad_token_id, cfg.model.fused_logprobs, acc.device, acc,
                              optim.batch_size * 2, cfg.run.progress and acc.is_main_process)  # one kernel, fixed now
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
    resolved = resolve(cfg)
    objective, per_item = PairObjective(data.train_pairs, table, cfg.loss, curriculum.mrpo_eta), 2
    if is_listwise(cfg.loss.name):  # the same plan, each stage's pairs regrouped into ranked lists
        lists, data.stages = stage_lists(data.records, data.train_pairs, data.stages, curriculum.schedule,
                                         plan_measure(cfg), resolved.shuffle_within_stage)
        objective, per_item = ListObjective(lists, table, cfg.loss), max(len(x.responses) for x in lists)
    per_update = optim.batch_size * optim.grad_accum * acc.num_processes
    sizes = [len(s.pairs) if s.admit_fraction is None else max(1, round(len(s.pairs) * s.admit_fraction))
             for s in data.stages]
    n_updates = updates_per_stage(sizes, [math.ceil(n / per_update) for n in sizes], optim.epochs_per_stage,
                                  optim.total_updates)
    initial(initial_rows(cfg, resolved.reference, objective, table, data, data.stages, n_updates, per_update))
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
        prec.warn_if_updates_round_away(model, optim.lr)
    if not is_sharded(model):  # a sharded model is placed already; prepare would wrap it in DDP
        model = acc.prepare(model)
    return Run(cfg, resolved, acc, model, tokenizer, data, table, refs, scorer, objective, n_updates, memory,
               source or OfflineStages(), hooks or Hooks())


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
    model_cfg, optim = cfg.model, cfg.optim
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
    budget = memory_budget(model, acc.device, model_cfg.memory_budget_gb)
    tokens = resolve_token_bound(optim.max_tokens_per_micro_batch, model, acc.device, budget, compute_dtype)
    choice = choose_checkpointing(model_cfg.gradient_checkpointing, model, table, optim.batch_size, tokens, budget,
                                  compute_dtype, per_item)
    if choice.on:
        enable_checkpointing(model)
    if acc.is_main_process:
        bound = f"micro-batches of at most {tokens} tokens" if tokens else "micro-batches unbounded by tokens"
        print(f"currydpo: {choice.describe()}; {bound}; attention {attention}", file=sys.stderr, flush=True)
    return {"gradient_checkpointing": choice.on, "activation_gb": round(choice.activation_gb, 3),
            "memory_budget_gb": round(choice.budget_gb, 3), "max_tokens_per_micro_batch": tokens,
            "attention": attention}


def make_scheduler(optim_cfg, optimizer, n_updates: int):
    """``optim.lr_schedule`` over ``n_updates``, with ``optim.warmup_ratio`` of them warming up."""
    return get_scheduler(SCHEDULERS[optim_cfg.lr_schedule], optimizer,
                         num_warmup_steps=int(optim_cfg.warmup_ratio * n_updates), num_training_steps=n_updates)


def lr_schedule_warnings(cfg: TrainConfig, stage_updates: list[int], across_stages: str) -> list[str]:
    """Stages the LR schedule would starve: every update at learning rate 0, or warm-up over the whole
    stage (a run that 'succeeds' having barely trained). The schedule is replayed on a dummy parameter.
    ``across_stages``: as resolved (restart: a schedule per stage)."""
    optim = cfg.optim
    spans = [stage_updates] if across_stages != "restart" else [[n] for n in stage_updates]
    out, first = [], 0
    for span in spans:
        n_total = sum(span)
        dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=optim.lr)
        warmup = int(optim.warmup_ratio * n_total)
        sched = make_scheduler(optim, dummy, n_total)
        lrs = []
        for _ in range(n_total):
            lrs.append(sched.get_last_lr()[0])
            dummy.step()
            sched.step()
        begin = 0
        for j, n in enumerate(span):
            k = first + j + 1
            stage_lrs, steps = lrs[begin:begin + n], range(begin, begin + n)
            if n and all(lr == 0 for lr in stage_lrs):
                out.append(f"stage {k}: all {n} update(s) run at learning rate 0 (warm-up {warmup} of {n_total} "
                           f"updates); lower optim.warmup_ratio or give the stage more updates")
            elif n and all(t < warmup for t in steps):
                out.append(f"stage {k}: warm-up ({warmup} updates) spans the whole stage ({n} updates), so it "
                           f"never trains at optim.lr; lower optim.warmup_ratio")
            begin += n
        first += len(span)
    return out


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
