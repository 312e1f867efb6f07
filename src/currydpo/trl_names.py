"""TRL's and the alignment-handbook's option names, mapped to ours: the one table of them.

A TRL user's flat config (``DPOConfig`` fields plus the ``trl dpo`` script's ``model_name_or_path`` /
``dataset_name`` / ``datasets``) or an alignment-handbook recipe (``dataset_mixture``, ``torch_dtype``,
``hub_model_revision``) becomes our sectioned config. Every name is in one of three tables: `SAME`
(mapped; a note per mapping), `NO_EFFECT` (accepted; a note says why it changes nothing here) or
`REFUSED` (an error giving the reason). Any other name is an error that names it, never silently
dropped. docs/coming-from-trl.md is `markdown_table()`'s output (a test keeps them equal).
"""

from __future__ import annotations

import sys
from typing import Any

from .errors import CurryError

# TRL name -> our section.key (same meaning, same units)
SAME = {
    "model_name_or_path": "model.path",
    "trust_remote_code": "model.trust_remote_code",
    "use_peft": "model.lora",
    "lora_r": "model.lora_r",
    "lora_alpha": "model.lora_alpha",
    "lora_dropout": "model.lora_dropout",
    "lora_target_modules": "model.lora_target_modules",
    "dataset_name": "data.path",
    "dataset_config": "data.subset",
    "dataset_train_split": "data.split",
    "max_length": "data.max_length",
    "max_prompt_length": "data.max_prompt_length",
    "learning_rate": "optim.lr",
    "per_device_train_batch_size": "optim.batch_size",
    "gradient_accumulation_steps": "optim.grad_accum",
    "num_train_epochs": "optim.epochs_per_stage",  # each curriculum stage is one DPO run (the paper's recipe)
    "max_steps": "optim.total_updates",
    "lr_scheduler_type": "optim.lr_schedule",
    "warmup_ratio": "optim.warmup_ratio",
    "warmup_steps": "optim.warmup_ratio",  # TRL 1.x: a float in [0, 1) is the ratio
    "weight_decay": "optim.weight_decay",
    "max_grad_norm": "optim.max_grad_norm",
    "beta": "loss.beta",
    "loss_type": "loss.name",
    "loss_weights": "loss.weights",
    "label_smoothing": "loss.label_smoothing",
    "rpo_alpha": "loss.rpo_alpha",
    "use_weighting": "loss.wpo",
    "output_dir": "run.output_dir",
    "seed": "run.seed",
    "save_steps": "run.save_every",
    "report_to": "run.report_to",
    "disable_tqdm": "run.progress",
    "bf16": "model.precision",
    "dtype": "model.precision",
    "torch_dtype": "model.precision",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "attn_implementation": "model.attention",
    "disable_dropout": "model.disable_dropout",
    "load_in_4bit": "model.load_in_4bit",
    "load_in_8bit": "model.load_in_8bit",
    "dataset_mixture": "data.mixture",  # the handbook's {datasets: [{id, config, split, columns, weight}], ...}
    "datasets": "data.mixture",  # TRL's [{path, name, split, columns, fraction}]
    "test_split_size": "data.eval_fraction",  # a count of prompts (int >= 1) goes to data.eval_prompts
    "logging_steps": "run.logging_steps",
    "eval_strategy": "run.eval_steps",  # steps: every eval_steps updates; no / epoch: at stage ends only
    "eval_steps": "run.eval_steps",
    "push_to_hub": "run.push_to_hub",
    "hub_model_id": "run.hub_model_id",
    "hub_private_repo": "run.hub_private_repo",
    "hub_model_revision": "run.hub_revision",
}
OLDER_TRL = {"max_prompt_length", "warmup_ratio", "rpo_alpha"}  # names of earlier TRL releases, still in configs
# alignment-handbook's own names, and the `trl` command's launch options (not dataclass fields)
HANDBOOK = {"torch_dtype", "dataset_mixture", "hub_model_revision", "preprocessing_num_workers"}
LAUNCH = {"num_processes", "accelerate_config"}

# TRL's loss_type names -> ours (the same loss; tests/losses/test_trl_crosscheck.py cross-checks them against TRL)
LOSSES = {
    "sigmoid": "dpo", "hinge": "hinge", "ipo": "ipo", "robust": "robust", "exo_pair": "exo", "nca_pair": "nca",
    "bco_pair": "bco-pair", "apo_zero": "apo-zero", "apo_down": "apo-down", "discopop": "discopop", "sft": "sft",
    "sigmoid_norm": "sigmoid-norm",
}

# Options that change only logging, saving cadence or the launch, never what is trained: accepted, with why.
NO_EFFECT = {
    "logging_first_step": "logging", "logging_dir": "logging", "logging_strategy": "logging (run.logging_steps)",
    "log_level": "logging", "run_name": "logging (the trackers take the output directory's name)",
    "hub_strategy": "we push once, at the end (final/ and each stage-K/ branch)",
    "save_strategy": "stage-K/ after every stage; run.save_every adds mid-stage checkpoints",
    "save_total_limit": "every stage-K/ is kept: it is the curriculum's checkpoint, and the next stage's reference",
    "save_only_model": "state/ keeps what --resume needs",
    "do_eval": "held-out metrics follow eval_strategy and the held-out data",
    "per_device_eval_batch_size": "held-out scoring uses the training micro-batch bound",
    "dataloader_num_workers": "the data is tokenised once, in memory", "dataloader_pin_memory": "as above",
    "remove_unused_columns": "columns are read by the data format", "dataset_num_proc": "tokenised once, batched",
    "preprocessing_num_workers": "tokenised once, batched", "overwrite_output_dir": "a new run needs an empty "
    "run.output_dir, --resume continues it", "dataset_test_split": "held-out pairs come from data.eval_path or "
    "data.eval_fraction", "gradient_checkpointing_kwargs": "our checkpointing is always non-reentrant "
    "(use_reentrant false, the handbook's choice)",
    "optim": "AdamW (torch) is our optimiser: adamw_torch, adamw_torch_fused and adamw_hf are accepted",
    "use_liger_kernel": "model.fused_logprobs auto uses liger on CUDA when it is installed",
}
OPTIMISERS = ("adamw_torch", "adamw_torch_fused", "adamw_hf")  # `optim` values that are our AdamW

# Names we refuse, with the reason (and the way to get what they ask for).
REFUSED = {
    "fp16": "fp16 training needs loss scaling, which we do not do: use bf16 (model.precision bf16)",
    "num_processes": "a launch option: launch with `accelerate launch --num_processes N -m currydpo train ...`",
    "accelerate_config": "a launch option: `accelerate launch --config_file examples/accelerate/fsdp2.yaml -m "
                         "currydpo train ...` (DeepSpeed ZeRO configs are not supported: FSDP2 replaces ZeRO-3)",
    "deepspeed": "DeepSpeed is not supported: launch with examples/accelerate/fsdp2.yaml (FSDP2 shards as ZeRO-3)",
    "padding_free": "responses are packed already wherever the model allows it (see docs/performance.md)",
    "precompute_ref_log_probs": "reference log-probs are always computed once and cached",
    "model_init_kwargs": "set model.precision, model.attention and model.trust_remote_code instead",
    "sync_ref_model": "TR-DPO's step-wise reference update: use curriculum.reference mixture (per stage)",
    "use_dora": "LoRA only (model.lora)", "use_rslora": "LoRA only (model.lora)",
}

# our config sections (config.SECTIONS; a test keeps the two equal: config imports this module, not back)
SECTIONS = ("model", "data", "curriculum", "loss", "optim", "run", "generation", "online")

LR_SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}


DTYPES = {"bfloat16": "bf16", "float32": "fp32", "auto": "auto"}  # dtype / torch_dtype -> model.precision
ATTENTION = {"flex_attention": "flex", "sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash_attention_2",
             "flash_attention_3": "flash_attention_3"}


def _convert(name: str, value: Any) -> Any:
    """TRL's value in our terms (the options whose spelling differs)."""
    if name == "loss_type":
        names = value if isinstance(value, list) else [value]
        unknown = [n for n in names if n not in LOSSES]
        if unknown:
            raise CurryError(f"TRL loss_type {unknown[0]!r} has no currydpo equivalent; supported: "
                             f"{', '.join(LOSSES)} (or use our loss.name directly)")
        mapped = [LOSSES[n] for n in names]
        return mapped[0] if len(mapped) == 1 else mapped
    if name == "lr_scheduler_type":
        if value not in LR_SCHEDULES:
            raise CurryError(f"TRL lr_scheduler_type {value!r} is not supported; use one of: {', '.join(LR_SCHEDULES)}")
        return LR_SCHEDULES[value]
    if name == "report_to":
        items = value if isinstance(value, list) else [value]
        return ",".join(i for i in items if i not in ("none", None, "")) if items != ["all"] else "all"
    if name == "warmup_steps":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1 or (
                isinstance(value, int) and value != 0):
            raise CurryError(f"TRL warmup_steps {value!r}: only a ratio in [0, 1) maps to ours (optim.warmup_ratio); "
                             "give the warm-up as a fraction of the updates")
        return float(value)
    if name == "disable_tqdm":
        return not value
    if name == "bf16":
        return "bf16" if value else "fp32"
    if name in ("dtype", "torch_dtype"):
        if str(value).removeprefix("torch.") not in DTYPES:
            raise CurryError(f"{name} {value!r}: use bfloat16, float32 or auto (fp16 needs loss scaling, which we do "
                             f"not do)")
        return DTYPES[str(value).removeprefix("torch.")]
    if name == "attn_implementation":
        if value not in ATTENTION:
            raise CurryError(f"attn_implementation {value!r} is not supported; use one of: {', '.join(ATTENTION)}")
        return ATTENTION[value]
    if name == "gradient_checkpointing":
        return "on" if value else "off"
    if name == "lora_target_modules" and isinstance(value, list):
        return ",".join(value)
    if name in ("dataset_mixture", "datasets"):
        return mixture_sources(name, value)
    return value


def mixture_sources(name: str, value: Any) -> list[dict]:
    """The handbook's ``dataset_mixture.datasets`` or TRL's ``datasets`` as our ``data.mixture`` sources
    ({path, subset, split, columns, weight}); checked further by `data.loading.check_mixture`."""
    items = value.get("datasets") if name == "dataset_mixture" and isinstance(value, dict) else value
    if not isinstance(items, list):
        raise CurryError(f"{name}: expected a list of datasets, got {value!r:.80}")
    keys = {"id": "path", "path": "path", "config": "subset", "name": "subset", "split": "split",
            "columns": "columns", "weight": "weight", "fraction": "weight", "data_files": "path"}
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise CurryError(f"{name}[{i}]: expected a mapping with id/path, split, columns, got {item!r:.60}")
        unknown = [k for k in item if k not in keys]
        if unknown:
            raise CurryError(f"{name}[{i}]: {unknown[0]!r} is not supported; keys: {', '.join(keys)}")
        out.append({keys[k]: v for k, v in item.items()})
    return out


def _unnest_mixture(d: dict[str, Any], lines: list[str]) -> dict[str, Any]:
    """The handbook nests test_split_size and seed in dataset_mixture; read them as the flat names."""
    mix = d.get("dataset_mixture")
    if not isinstance(mix, dict):
        return d
    unknown = [k for k in mix if k not in ("datasets", "test_split_size", "seed")]
    if unknown:
        raise CurryError(f"dataset_mixture.{unknown[0]} is not supported; keys: datasets, test_split_size, seed")
    if "seed" in mix:
        lines.append(f"dataset_mixture.seed={mix['seed']!r} ignored (run.seed seeds the weights and the held-out "
                     f"split)")
    return {**d, **({"test_split_size": mix["test_split_size"]} if "test_split_size" in mix else {})}


def _evaluation(d: dict[str, Any]) -> int | None:
    """``run.eval_steps`` from TRL's eval_strategy/eval_steps: with eval_strategy steps, eval_steps (unset: TRL's
    logging_steps, default 10); no / epoch: stage ends only (a stage is our epoch). eval_steps alone also counts
    (ours: TRL would not evaluate without eval_strategy steps). None: neither given."""
    strategy = d.get("eval_strategy")
    if strategy is None and d.get("eval_steps") is None:
        return None
    if strategy is None:  # e.g. --eval_steps 2 over a recipe that says eval_strategy: steps (TRL alone: no eval)
        strategy = "steps"
    if strategy not in ("no", "steps", "epoch"):
        raise CurryError(f"eval_strategy {strategy!r}: use steps, epoch or no")
    if strategy != "steps":
        return 0
    steps = d.get("eval_steps") or d.get("logging_steps") or 10
    if isinstance(steps, float) and steps < 1:
        raise CurryError(f"eval_steps {steps}: give a number of updates (a fraction of the run is not supported)")
    return int(steps)


def known(name: str) -> bool:
    return name in SAME or name in NO_EFFECT or name in REFUSED


def is_flat_trl(d: dict) -> bool:
    """True for a flat config in TRL's or the handbook's names: no section of ours at the top level, and either no
    nested mapping or a name of our table (``losses: {beta: 1}`` stays a misspelt section, reported as such)."""
    # TRL's `optim: adamw_torch` shares a name with our optim: section; only a mapping is our section
    return (isinstance(d, dict) and bool(d) and not any(k in SECTIONS and (k != "optim" or isinstance(v, dict))
                                              for k, v in d.items())
            and (not any(isinstance(v, dict) for v in d.values()) or any(known(k) for k in d)))


def from_trl(d: dict[str, Any], source: str = "config", notes: bool = True) -> dict[str, dict[str, Any]]:
    """TRL-named options -> our nested config dict; prints one note per mapping (to stderr)."""
    out: dict[str, dict[str, Any]] = {}
    lines = []
    d = _unnest_mixture(d, lines)
    for name, value in d.items():
        if name in SECTIONS and (name != "optim" or isinstance(value, dict)):
            raise CurryError(f"{source}: mixes our sections ({name}:) with TRL's flat names; use one layout")
        if name in REFUSED and not (name == "fp16" and not value):
            raise CurryError(f"{source}: {name} is not supported: {REFUSED[name]}")
        if name in NO_EFFECT or name == "fp16":
            if name == "optim" and value not in OPTIMISERS:
                raise CurryError(f"{source}: optim {value!r} is not supported: we train with AdamW (torch); use one "
                                 f"of {', '.join(OPTIMISERS)}")
            lines.append(f"{name} ignored ({NO_EFFECT.get(name, 'it does not change what is trained')})")
            continue
        if name not in SAME:
            raise CurryError(f"{source}: {name!r} is neither one of our sections nor a TRL option currydpo maps; "
                             f"mapped TRL options: {', '.join(sorted(SAME))}")
        if name in ("eval_strategy", "eval_steps") or (name in ("dtype", "torch_dtype") and value in (None, "auto")):
            if name in ("dtype", "torch_dtype"):
                lines.append(f"{name}={value!r}: the precision follows bf16 or model.precision auto")
            continue  # eval_* are read together below
        section, key = SAME[name].split(".")
        value = _convert(name, value)
        if name == "test_split_size" and not (isinstance(value, float) and 0 < value < 1):
            key = "eval_prompts"  # the handbook's count of held-out examples (datasets' train_test_split)
        out.setdefault(section, {})[key] = value
        lines.append(f"{name}={d[name]!r:.80} -> {section}.{key}={value!r:.80}")
    steps = _evaluation(d)
    if steps is not None:
        out.setdefault("run", {})["eval_steps"] = steps
        lines.append(f"eval_strategy={d.get('eval_strategy')!r}, eval_steps={d.get('eval_steps')!r} -> "
                     f"run.eval_steps={steps}")
    if notes:
        for line in lines:
            print(f"note: TRL option {line}", file=sys.stderr)
    return out


def markdown_table() -> str:
    """docs/coming-from-trl.md's table: every TRL / handbook name, what it becomes here."""
    rows = ["| TRL / handbook name | here | note |", "|---|---|---|"]
    for name in sorted(set(SAME) | set(NO_EFFECT) | set(REFUSED)):
        if name in SAME:
            where = "handbook" if name in HANDBOOK else "TRL" if name not in ("datasets", "test_split_size") else \
                "TRL's dataset mixture"
            rows.append(f"| `{name}` | `{SAME[name]}` | mapped ({where}) |")
        elif name in NO_EFFECT:
            rows.append(f"| `{name}` | accepted, no effect | {NO_EFFECT[name]} |")
        else:
            rows.append(f"| `{name}` | refused | {REFUSED[name]} |")
    return "\n".join(rows)
