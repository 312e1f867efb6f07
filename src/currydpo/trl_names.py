"""TRL's option names, mapped to ours where they mean the same thing.

A TRL user's flat config (``DPOConfig`` fields plus the ``trl dpo`` script's ``model_name_or_path`` /
``dataset_name``) becomes our sectioned config. Each mapping applied is reported as one note; a TRL
option whose meaning we do not have is an error that names it, never silently dropped.
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
    "gradient_checkpointing": "model.gradient_checkpointing",
}
OLDER_TRL = {"max_prompt_length", "warmup_ratio", "rpo_alpha"}  # names of earlier TRL releases, still in configs

# TRL's loss_type names -> ours (the same loss; tests/losses/test_trl_crosscheck.py cross-checks them against TRL)
LOSSES = {
    "sigmoid": "dpo", "hinge": "hinge", "ipo": "ipo", "robust": "robust", "exo_pair": "exo", "nca_pair": "nca",
    "bco_pair": "bco-pair", "apo_zero": "apo-zero", "apo_down": "apo-down", "discopop": "discopop", "sft": "sft",
    "sigmoid_norm": "sigmoid-norm",
}

# Options that change only logging, saving cadence or the hub, never what is trained: accepted with a note.
NO_EFFECT = {
    "logging_steps", "logging_first_step", "logging_dir", "logging_strategy", "run_name", "push_to_hub",
    "hub_model_id", "hub_strategy", "save_strategy", "save_total_limit", "save_only_model", "eval_strategy",
    "eval_steps", "per_device_eval_batch_size", "dataloader_num_workers", "dataloader_pin_memory",
    "remove_unused_columns", "dataset_num_proc", "overwrite_output_dir", "dataset_test_split",
}

# our config sections (config.SECTIONS; a test keeps the two equal: config imports this module, not back)
SECTIONS = ("model", "data", "curriculum", "loss", "optim", "run", "generation", "online")

LR_SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}


def _convert(name: str, value: Any) -> Any:
    """TRL's value in our terms (the few options whose spelling differs)."""
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
    if name == "gradient_checkpointing":
        return "on" if value else "off"
    if name == "lora_target_modules" and isinstance(value, list):
        return ",".join(value)
    return value


def is_flat_trl(d: dict) -> bool:
    """True for a flat config in TRL's names: no section of ours and no nested mapping at the top level
    (``losses: {beta: 1}`` stays a misspelt section, reported as such)."""
    return (isinstance(d, dict) and bool(d) and not any(k in SECTIONS for k in d)
            and not any(isinstance(v, dict) for v in d.values()))


def from_trl(d: dict[str, Any], source: str = "config", notes: bool = True) -> dict[str, dict[str, Any]]:
    """TRL-named options -> our nested config dict; prints one note per mapping (to stderr)."""
    out: dict[str, dict[str, Any]] = {}
    lines = []
    for name, value in d.items():
        if name in SECTIONS:
            raise CurryError(f"{source}: mixes our sections ({name}:) with TRL's flat names; use one layout")
        if name == "fp16" and value:
            raise CurryError(f"{source}: TRL fp16 is not supported (use bf16: true, i.e. model.precision bf16)")
        if name in NO_EFFECT or (name == "fp16" and not value):
            lines.append(f"{name} ignored (it does not change what is trained)")
            continue
        if name not in SAME:
            raise CurryError(f"{source}: {name!r} is neither one of our sections nor a TRL option currydpo maps; "
                             f"mapped TRL options: {', '.join(sorted(SAME))}")
        section, key = SAME[name].split(".")
        out.setdefault(section, {})[key] = _convert(name, value)
        lines.append(f"{name}={value!r} -> {section}.{key}={out[section][key]!r}")
    if notes:
        for line in lines:
            print(f"note: TRL option {line}", file=sys.stderr)
    return out
