"""The run configuration: one typed dataclass per concern, validated when it is built.

A YAML file has one section per dataclass (``model:``, ``data:``, ``curriculum:``,
``loss:``, ``optim:``, ``run:``, ``generation:``, ``online:``); ``--set section.key=value`` overrides a field.
Unknown keys and out-of-range values are errors that name the key — before any
model is loaded. The config is written beside every checkpoint; `resolve` and training's
``setup`` turn its ``auto`` values into a frozen `Resolved`, logged in ``summary.json``.

Who validates what: each registry validates its section — the keys it reads — with a
``check_section`` next to its names (`data.formats`: format, score, on_bad_row; `data.pairs`:
strategy, min_gap; `curriculum.schedules`: schedule, stages and the schedule options;
`curriculum.difficulty`: difficulty, reward_model; `losses.registry`: the ``loss:`` section).
The registries sit below config and never import it: a section is any object with the fields.
`validate` here validates the rest — the keys whose code sits above config (tokenisation's
max_length and chat_template, the pipeline's select, sample_prompts and eval_fraction, the
trainer's references, optim, run, model) — and the rules that span sections.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

import yaml

from .curriculum import difficulty, schedules
from .data import formats, pairs
from .data.loading import check_mixture
from .errors import CurryError
from .errors import check_choice as _choice
from .errors import check_positive as _positive
from .losses.registry import OPTIONS, is_listwise, needs_reference
from .losses.registry import check_section as check_loss_section
from .trl_names import from_trl, is_flat_trl, known


@dataclass
class ModelConfig:
    path: str = field(default="", metadata={"help": "policy model: a local HF model dir or a hub name"})
    ref_model: str | None = field(default=None, metadata={
        "help": "a separate reference model for stage 1 / single pass (default: the policy's initial weights)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow code shipped with the model to run"})
    precision: str = field(default="auto", metadata={
        "help": "auto (bf16 on a CUDA GPU with bf16, else fp32) | fp32 | bf16 (fp32 master weights and AdamW "
                "state, bf16 autocast compute) | bf16-pure (bf16 weights: half the memory, but updates below "
                "bf16's resolution round away; see docs/multi-gpu.md)"})
    fused_logprobs: str = field(default="auto", metadata={
        "help": "LM head: auto (liger on CUDA when liger-kernel is installed, else chunked) | chunked (torch: token "
                "chunks, recomputed in backward, so no (tokens, vocab) logits are kept) | liger | off (all at once)"})
    attention: str = field(default="auto", metadata={
        "help": "auto (flex on CUDA, sdpa on CPU) | flex (FlexAttention, block mask of the packing: masked blocks "
                "skipped; forward-only on CPU in torch 2.13) | sdpa | eager | flash_attention_2 | flash_attention_3 "
                "(passed to transformers; packing needs sdpa, eager or flex, so these pad instead, with one note)"})
    disable_dropout: bool = field(default=True, metadata={
        "help": "set every dropout probability to 0 in policy and reference, LoRA dropout included (TRL's "
                "disable_dropout, default true): the reference is scored without dropout, so a policy trained "
                "with it disagrees with its own reference from the first update"})
    load_in_4bit: bool = field(default=False, metadata={
        "help": "QLoRA: load the base weights in 4 bits with bitsandbytes (CUDA; needs model.lora true; "
                "pip install 'currydpo[qlora]')"})
    load_in_8bit: bool = field(default=False, metadata={
        "help": "load the base weights in 8 bits with bitsandbytes (CUDA; needs model.lora true)"})
    gradient_checkpointing: str = field(default="auto", metadata={
        "help": "auto (on when a micro-batch's estimated activations exceed model.memory_budget_gb; logged) | on "
                "| off"})
    memory_budget_gb: float | None = field(default=None, metadata={
        "help": "activation budget for gradient_checkpointing auto (default: this process's share of the device's "
                "free memory, less gradients and AdamW state)"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters (peft) instead of all weights"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "comma-separated module names, or all-linear"})


@dataclass
class DataConfig:
    path: str = field(default="", metadata={"help": "training data: local json/jsonl/parquet/csv or a hub dataset"})
    format: str = field(default="auto", metadata={
        "help": "auto | ultrafeedback | nectar | oasst | pairwise | ranked | nemo-rl | curri-dpo (the authors' "
                "released easy/medium/hard pairs)"})
    split: str = field(default="train", metadata={"help": "dataset split"})
    mixture: list[dict] | None = field(default=None, metadata={
        "help": "several sources instead of data.path: a list of {path, subset, split, columns, weight} "
                "(weight: the fraction of the source's rows kept, seeded; columns: the only columns read), as "
                "the alignment-handbook's dataset_mixture and TRL's datasets: list"})
    eval_path: str | None = field(default=None, metadata={
        "help": "held-out preference data of its own (a file or hub dataset, read like data.path): its pairs "
                "give the eval/ metrics instead of a data.eval_fraction of the training prompts"})
    eval_split: str = field(default="test", metadata={"help": "split of data.eval_path (hub datasets)"})
    subset: str | None = field(default=None, metadata={"help": "dataset subset/config name (hub datasets)"})
    score: str = field(default="mean-aspects", metadata={
        "help": "UltraFeedback score: mean-aspects (mean of aspect ratings, 1..5, the paper's) | overall"})
    on_bad_row: str = field(default="error", metadata={"help": "error | skip (skip counts bad rows per reason)"})
    limit: int | None = field(default=None, metadata={"help": "read at most this many rows"})
    sample_prompts: int | None = field(default=None, metadata={
        "help": "train on a random subset of this many prompts (seeded by run.seed), as the paper's 5K "
                "UltraFeedback prompts"})
    strategy: str = field(default="best-vs-rest", metadata={
        "help": "pair builder: best-vs-rest | all-pairs | adjacent | best-vs-worst | best-vs-random"})
    min_gap: float = field(default=0.0, metadata={"help": "drop pairs whose score gap is below this"})
    allow_ties: bool = field(default=False, metadata={"help": "make pairs from tied responses too"})
    chat_template: str = field(default="auto", metadata={
        "help": "auto (plain-text prompts become one user turn when the tokenizer has a chat template) | "
                "always | never"})
    max_length: int = field(default=512, metadata={"help": "max tokens of prompt + response (response cut right)"})
    max_prompt_length: int = field(default=256, metadata={"help": "max prompt tokens (prompt cut from the left)"})
    select: str = field(default="none", metadata={
        "help": "none | ref-margin: keep only the pairs whose reference log-prob margin is largest (\"Clear "
                "Preferences Leave Traces\", 2024), computed from the reference cache"})
    select_fraction: float = field(default=0.4, metadata={
        "help": "ref-margin: fraction of training pairs kept (ours, inside the paper's 30-50%)"})
    eval_fraction: float = field(default=0.0, metadata={
        "help": "fraction of prompts held out for preference metrics after each stage"})
    eval_prompts: int | None = field(default=None, metadata={
        "help": "hold out this many prompts instead of a fraction (the handbook's test_split_size as a count)"})


@dataclass
class CurriculumConfig:
    schedule: str = field(default="iterative", metadata={
        "help": "iterative | single-pass | random | anti | single-pair | cyclical | self-paced"})
    difficulty: str = field(default="score-gap", metadata={
        "help": "score-gap | rank-gap | ref-logratio | reward-margin | length-gap | column:NAME | "
                "function:MODULE:FN | dynamic"})
    stages: int = field(default=3, metadata={"help": "number of stages (iterative, cyclical, self-paced)"})
    reference: str = field(default="auto", metadata={
        "help": "auto (previous-stage for iterative, else initial) | previous-stage | initial | all-previous (MRPO: "
                "the initial model and every earlier stage's policy combined, Le et al. 2024) | mixture (a soft swap: "
                "stage k's reference is the geometric mixture reference_mix * previous stage's policy + "
                "(1 - reference_mix) * stage k-1's reference, in log space; ours, after TR-DPO's soft update)"})
    reference_mix: float = field(default=0.5, metadata={
        "help": "mixture: weight alpha of the previous stage's policy in log space (1 = the hard swap of "
                "previous-stage, 0 = the initial model throughout); 0.5 is ours"})
    mrpo_eta: float = field(default=0.1, metadata={
        "help": "all-previous: MRPO's clipping rate eta around the initial model's log-probs (ours)"})
    shuffle_within_stage: str = field(default="auto", metadata={
        "help": "shuffle pairs inside each stage (seeded; the stage order itself is kept): auto (true for iterative, "
                "as the paper trains each stage as a standard DPO run; false otherwise: single-pass keeps "
                "easy -> hard, ours) | true | false"})
    split_by: str = field(default="auto", metadata={
        "help": "iterative stage split: auto (one stage per difficulty value when it has <= stages values, e.g. "
                "curri-dpo levels; else rejected rank for best-vs-rest; else quantiles) | rank | value | quantile"})
    single_pair_strategy: str = field(default="best-vs-random", metadata={
        "help": "builder for the single-pair baseline: best-vs-random | best-vs-worst"})
    cyclical_start: float = field(default=0.25, metadata={"help": "cyclical: starting data fraction"})
    cyclical_end: float = field(default=1.0, metadata={"help": "cyclical: the other end of the data fraction cycle"})
    cyclical_factor: float = field(default=2.0, metadata={"help": "cyclical: fraction multiplier per stage"})
    self_paced_start: float = field(default=0.5, metadata={
        "help": "self-paced: fraction of (easiest) pairs admitted in stage 1; grows linearly to 1"})
    reward_model: str | None = field(default=None, metadata={"help": "reward model path for reward-margin"})


def _option(name: str) -> Any:
    """A ``loss.*`` option field with the registry's default and help."""
    return field(default=OPTIONS[name].default, metadata={"help": OPTIONS[name].help})


@dataclass
class LossConfig:
    name: str | list[str] = field(default="dpo", metadata={
        "help": "a loss, or a list of losses summed with loss.weights (e.g. [dpo, bco-pair, sft], MPO): dpo | cdpo | "
                "robust | ipo | hinge | simpo | orpo | mmpo | discopop | exo | nca | bco-pair | apo-zero | apo-down | "
                "sigmoid-norm | sft; listwise (one loss per ranked list): plackett-luce | pro | lipo"})
    beta: float = field(default=0.1, metadata={"help": "inverse temperature of the implicit reward"})
    weights: list[float] | None = field(default=None, metadata={
        "help": "one weight per loss of loss.name (default 1 each), as TRL's loss_weights"})
    # The per-loss options: default, help and range are the loss registry's (losses.registry.OPTIONS).
    label_smoothing: float = _option("label_smoothing")
    gamma: float = _option("gamma")
    ipo_length_normalise: bool = _option("ipo_length_normalise")
    discopop_tau: float = _option("discopop_tau")
    pro_sft_weight: float = _option("pro_sft_weight")
    pro_score_temperature: bool = _option("pro_score_temperature")
    wpo: bool = field(default=False, metadata={"help": "weight each pair by the policy's probability of it (WPO)"})
    rpo_alpha: float | None = field(default=None, metadata={"help": "add alpha * NLL of the chosen response"})

    def label(self) -> str:
        """``dpo``, or ``0.8 dpo + 0.2 bco-pair + 1 sft`` for a weighted combination."""
        if isinstance(self.name, str):
            return self.name
        return " + ".join(f"{w:g} {n}" for n, w in zip(self.name, self.weights or [1.0] * len(self.name)))

    def options(self) -> dict[str, Any]:
        """The per-loss options (`losses.OPTIONS`' keys), as `pair_loss` takes them."""
        return {k: getattr(self, k) for k in OPTIONS}


@dataclass
class OptimConfig:
    lr: float = field(default=5e-6, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    batch_size: int = field(default=8, metadata={"help": "pairs per micro-batch per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per update"})
    epochs_per_stage: float = field(default=1.0, metadata={"help": "passes over each stage's pairs"})
    total_updates: int | None = field(default=None, metadata={
        "help": "force this many updates in all (split over stages by size) so arms are comparable"})
    lr_schedule: str = field(default="linear", metadata={"help": "linear | cosine | constant (after warm-up)"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of the schedule spent warming up"})
    across_stages: str = field(default="auto", metadata={
        "help": "auto (restart for iterative: each stage a fresh DPO run, the paper's recipe; continue otherwise, "
                "ours) | continue (one optimiser and LR schedule over all stages) | restart (fresh per stage)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    max_tokens_per_micro_batch: int | str | None = field(default="auto", metadata={
        "help": "split each update's pairs (a listwise loss: its ranked lists, each kept whole) into micro-batches of "
                "at most this many tokens (a prompt's responses kept together where they fit); same pairs, same "
                "update as the whole batch. auto (ours): 768 on CPU "
                "(the lowest peak measured), on CUDA the most tokens whose estimated activations fit half of "
                "model.memory_budget_gb, in [2048, 16384]; logged. null = one micro-batch per batch_size pairs"})


@dataclass
class RunConfig:
    output_dir: str = field(default="runs/currydpo", metadata={"help": "where checkpoints and logs go"})
    seed: int = field(default=0, metadata={"help": "fixes data order, sampling and initialisation"})
    save_every: int = field(default=0, metadata={"help": "mid-stage checkpoint every N updates (0 = stage ends)"})
    logging_steps: int = field(default=1, metadata={
        "help": "write every Nth update's line to metrics.jsonl and the trackers (and each stage's last); ours: 1"})
    eval_steps: int = field(default=0, metadata={
        "help": "held-out metrics every N updates within stages too (0 = at stage ends only); needs held-out pairs"})
    push_to_hub: bool = field(default=False, metadata={
        "help": "push final/ (with its model card) to run.hub_model_id, and each stage-K/ to its branch stage-K"})
    hub_model_id: str | None = field(default=None, metadata={
        "help": "the Hub repo to push to (default: the name of run.output_dir)"})
    hub_private_repo: bool = field(default=False, metadata={"help": "create the Hub repo private"})
    hub_revision: str = field(default="main", metadata={
        "help": "the branch final/ is pushed to (the handbook's hub_model_revision)"})
    report_to: str = field(default="", metadata={"help": "comma-separated accelerate trackers: tensorboard,wandb"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    cache_dir: str = field(default="auto", metadata={
        "help": "token ids and initial-reference log-probs shared across runs (keyed by fingerprints): auto "
                "($CURRYDPO_CACHE, else $XDG_CACHE_HOME/currydpo, else ~/.cache/currydpo) | none | a directory"})
    final_model: str = field(default="last", metadata={
        "help": "final/ = last (the last stage's policy) | best (the stage with the highest run.best_metric on the "
                "held-out pairs; needs data.eval_fraction > 0)"})
    best_metric: str = field(default="eval/rewards/accuracies", metadata={
        "help": "held-out metric for final_model best, higher is better: eval/rewards/accuracies | "
                "eval/rewards/margins | eval/ranking_accuracy | eval/ranking_accuracy_normalised"})
    save_dtype: str = field(default="auto", metadata={
        "help": "dtype of stage-K/ and final/: auto (the dtype the model.path checkpoint was saved in) | fp32 | bf16"})


@dataclass
class GenerateConfig:
    engine: str = field(default="hf", metadata={
        "help": "hf (batched transformers generate) | vllm (pip install 'currydpo[vllm]', GPUs); online sampling"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generate call (one saved chunk when online)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1.0 = off)"})
    vllm_gpu_memory_utilization: float = field(default=0.4, metadata={
        "help": "vllm: fraction of GPU memory for its weights and KV cache (the trainer holds the rest); ours"})


@dataclass
class OnlineConfig:
    enabled: bool = field(default=False, metadata={
        "help": "online stages: before each stage from online.from_stage, sample answers from the current policy, "
                "judge them and train on their ranked pairs"})
    from_stage: int = field(default=2, metadata={"help": "first online stage (1-based; stage 1 = the initial policy)"})
    samples: int = field(default=4, metadata={"help": "answers sampled per prompt"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the online answers"})
    max_new_tokens: int = field(default=64, metadata={"help": "tokens per online answer at most"})
    judge: str | None = field(default=None, metadata={
        "help": "gold:MODULE:FN | reward-model:PATH | openai:URL#MODEL (pairwise: ranked by wins over both orders)"})
    mix: float = field(default=0.0, metadata={"help": "fraction of the stage's offline pairs mixed in (0..1)"})
    prompts: str | None = field(default=None, metadata={
        "help": "JSONL of prompts to sample for (default: the training prompts)"})


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    generation: GenerateConfig = field(default_factory=GenerateConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in fields(TrainConfig)}
BEST_METRICS = ("eval/rewards/accuracies", "eval/rewards/margins", "eval/ranking_accuracy",
                "eval/ranking_accuracy_normalised")


def _section_classes() -> dict[str, type]:
    hints = get_type_hints(TrainConfig)
    return {name: hints[name] for name in SECTIONS}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Turn a YAML/CLI value into the field's type; raise naming the key on mismatch."""
    text = str(typ)
    optional = "None" in text
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise CurryError(f"config key '{key}' may not be null")
    base = text.replace(" | None", "").replace("typing.Optional[", "").rstrip("]")
    if "list[" in text:  # a YAML list, or a comma-separated string from --set
        items = value if isinstance(value, list) else str(value).split(",")
        item_type = text.split("list[", 1)[1].split("]", 1)[0]
        if item_type == "dict":  # data.mixture: a list of mappings, checked by data.loading.mixture_sources
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise CurryError(f"config key '{key}': expected a list of mappings, got {value!r:.80}")
            return value
        got = [_coerce(v.strip() if isinstance(v, str) else v, item_type, key) for v in items]
        return got[0] if base.startswith("str | ") and len(got) == 1 and not isinstance(value, list) else got
    try:
        if base in ("bool", "<class 'bool'>"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if base in ("int", "<class 'int'>"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base in ("float", "<class 'float'>"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans (validate maps them back)
            return str(value).lower()
        return str(value)
    except (TypeError, ValueError):
        raise CurryError(f"config key '{key}': expected {base.replace('<class ', '').strip(chr(39) + '>')}, "
                         f"got {value!r}") from None


def from_dict(d: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Build a config from nested dicts, starting from ``base`` (default: defaults)."""
    cfg = base or TrainConfig()
    classes = _section_classes()
    if not isinstance(d, dict):
        raise CurryError(f"config must be a mapping of sections ({', '.join(SECTIONS)}), got {type(d).__name__}")
    for section, values in d.items():
        if section not in classes:
            raise CurryError(f"unknown config section '{section}'; valid sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise CurryError(f"config section '{section}' must be a mapping, got {values!r}")
        obj = getattr(cfg, section)
        hints = get_type_hints(classes[section])
        for key, value in values.items():
            if key not in hints:
                raise CurryError(f"unknown config key '{section}.{key}'; valid keys in '{section}': "
                                 f"{', '.join(hints)}")
            setattr(obj, key, _coerce(value, hints[key], f"{section}.{key}"))
    return cfg


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["loss.beta=0.2", "run.seed=3"]`` -> nested dict (values parsed as YAML scalars). TRL names
    (``learning_rate=1e-6``, from ``--set`` or a TRL-style ``--learning_rate 1e-6`` flag) go through `from_trl`
    together, so eval_strategy and eval_steps are read as a pair."""
    out: dict[str, dict[str, Any]] = {}
    trl: dict[str, Any] = {}
    for item in items:
        key = item.split("=", 1)[0]
        if "=" in item and known(key):
            trl[key] = yaml.safe_load(item.split("=", 1)[1])
            continue
        if "=" not in item or "." not in key:
            raise CurryError(f"--set expects section.key=value (or a TRL name: learning_rate=1e-6), got {item!r}")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = yaml.safe_load(value) if value != "" else ""
    for section, values in (from_trl(trl, "command line") if trl else {}).items():
        out.setdefault(section, {}).update(values)
    return out


def load_config(path: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (optional), apply ``--set`` overrides, validate."""
    cfg = TrainConfig()
    if path:
        if not os.path.exists(path):
            raise CurryError(f"config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise CurryError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
        cfg = from_dict(from_trl(data, source=path) if is_flat_trl(data) else data, cfg)
    if overrides:
        cfg = from_dict(parse_overrides(overrides), cfg)
    return validate(cfg)


def _finite(cfg: TrainConfig) -> None:
    """Every float in the config is finite: an lr or beta of inf/nan trains to NaN weights, not to an error."""
    for section in SECTIONS:
        for key, value in vars(getattr(cfg, section)).items():
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, float) and not math.isfinite(v):
                    raise CurryError(f"config key '{section}.{key}' must be a finite number, got {v}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Every range and choice check: each registry's own section (module doc; the ``loss:`` section is
    `losses.check_section`'s), then the rest and the rules that span sections."""

    model, data, curriculum, loss, optim, run = cfg.model, cfg.data, cfg.curriculum, cfg.loss, cfg.optim, cfg.run
    _finite(cfg)
    if model.precision == "fp16":  # fp16 weights or autocast without a GradScaler would train wrongly, not fail
        raise CurryError("model.precision fp16 is not supported: fp16 training needs dynamic loss scaling, which "
                         "this trainer does not do; use bf16 (GPUs since Ampere) or fp32")
    _choice("model.precision", model.precision, ["auto", "fp32", "bf16", "bf16-pure"])
    _positive("model.lora_r", model.lora_r)
    on_off = {"true": "on", "false": "off"}  # YAML's `on`/`off` arrive as booleans
    model.gradient_checkpointing = on_off.get(model.gradient_checkpointing, model.gradient_checkpointing)
    model.fused_logprobs = {"false": "off"}.get(model.fused_logprobs, model.fused_logprobs)
    _choice("model.fused_logprobs", model.fused_logprobs, ["auto", "chunked", "liger", "off"])
    _choice("model.attention", model.attention,
            ["auto", "flex", "sdpa", "eager", "flash_attention_2", "flash_attention_3"])
    if model.load_in_4bit and model.load_in_8bit:
        raise CurryError("model.load_in_4bit and model.load_in_8bit are both set; choose one")
    if (model.load_in_4bit or model.load_in_8bit) and not model.lora:
        raise CurryError("model.load_in_4bit/load_in_8bit: quantised weights cannot be trained directly; set "
                         "model.lora true (QLoRA trains adapters over the quantised base)")
    _choice("model.gradient_checkpointing", model.gradient_checkpointing, ["auto", "on", "off"])
    if model.memory_budget_gb is not None:
        _positive("model.memory_budget_gb", model.memory_budget_gb)
    formats.check_section(data)
    pairs.check_section(data)
    schedules.check_section(curriculum)
    difficulty.check_section(curriculum)
    _choice("data.chat_template", data.chat_template, ["auto", "always", "never"])
    check_loss_section(loss)
    _positive("data.max_length", data.max_length)
    _positive("data.max_prompt_length", data.max_prompt_length)
    if data.max_prompt_length >= data.max_length:
        raise CurryError(f"config key 'data.max_prompt_length' ({data.max_prompt_length}) must be below "
                         f"'data.max_length' ({data.max_length}) to leave room for the response")
    _choice("data.select", data.select, ["none", "ref-margin"])
    if not 0 < data.select_fraction <= 1:
        raise CurryError(f"config key 'data.select_fraction' must be in (0, 1], got {data.select_fraction}")
    if data.sample_prompts is not None:
        _positive("data.sample_prompts", data.sample_prompts)
    if not 0 <= data.eval_fraction < 1:
        raise CurryError(f"config key 'data.eval_fraction' must be in [0, 1), got {data.eval_fraction}")
    if data.eval_prompts is not None:
        _positive("data.eval_prompts", data.eval_prompts)
    if data.mixture is not None:
        check_mixture(data.mixture)
    _choice("curriculum.reference", curriculum.reference,
            ["auto", "previous-stage", "initial", "all-previous", "mixture"])
    if not 0 <= curriculum.reference_mix <= 1:
        raise CurryError(f"config key 'curriculum.reference_mix' must be in [0, 1], got {curriculum.reference_mix}")
    if curriculum.reference == "all-previous":
        if curriculum.schedule == "self-paced" or is_listwise(loss.name):
            raise CurryError("config: curriculum.reference all-previous (MRPO) combines references per pair; it does "
                             "not apply to self-paced or listwise losses")
        if not 0 <= curriculum.mrpo_eta < 1:
            raise CurryError(f"config key 'curriculum.mrpo_eta' must be in [0, 1), got {curriculum.mrpo_eta}")
    if is_listwise(loss.name) and curriculum.schedule == "self-paced":
        raise CurryError("config: schedule 'self-paced' admits single pairs by their current loss; with a listwise "
                         "loss use iterative, anti, single-pass, random, single-pair or cyclical")
    _positive("optim.lr", optim.lr)
    _positive("optim.weight_decay", optim.weight_decay, allow_zero=True)
    _positive("optim.batch_size", optim.batch_size)
    _positive("optim.grad_accum", optim.grad_accum)
    _positive("optim.epochs_per_stage", optim.epochs_per_stage)
    if optim.total_updates is not None:
        _positive("optim.total_updates", optim.total_updates)
    _choice("optim.lr_schedule", optim.lr_schedule, ["linear", "cosine", "constant"])
    if not 0 <= optim.warmup_ratio < 1:
        raise CurryError(f"config key 'optim.warmup_ratio' must be in [0, 1), got {optim.warmup_ratio}")
    _choice("optim.across_stages", optim.across_stages, ["auto", "continue", "restart"])
    _positive("optim.max_grad_norm", optim.max_grad_norm, allow_zero=True)
    if optim.max_tokens_per_micro_batch is not None and optim.max_tokens_per_micro_batch != "auto":
        try:
            optim.max_tokens_per_micro_batch = int(optim.max_tokens_per_micro_batch)
        except ValueError:
            raise CurryError("config key 'optim.max_tokens_per_micro_batch' must be auto, null or a positive "
                             f"integer, got {optim.max_tokens_per_micro_batch!r}") from None
        _positive("optim.max_tokens_per_micro_batch", optim.max_tokens_per_micro_batch)
    _positive("run.save_every", run.save_every, allow_zero=True)
    _positive("run.logging_steps", run.logging_steps)
    _positive("run.eval_steps", run.eval_steps, allow_zero=True)
    if run.eval_steps and not has_held_out(data):
        raise CurryError(f"run.eval_steps {run.eval_steps} evaluates held-out pairs: set data.eval_fraction > 0 or "
                         f"data.eval_path")
    if data.mixture is not None and data.path:
        raise CurryError(f"data.path ({data.path}) and data.mixture are both set; give the sources in one of them")
    _choice("run.final_model", run.final_model, ["last", "best"])
    _choice("run.save_dtype", run.save_dtype, ["auto", "fp32", "bf16"])
    _choice("run.best_metric", run.best_metric, list(BEST_METRICS))
    if run.final_model == "best" and not has_held_out(data):
        raise CurryError("run.final_model best picks a stage by held-out metrics: set data.eval_fraction > 0 "
                         "or data.eval_path")
    validate_online(cfg)
    return cfg


def has_held_out(data: DataConfig) -> bool:
    """Whether the config asks for held-out pairs (a fraction or count of the prompts, or a file of their own)."""
    return data.eval_fraction > 0 or bool(data.eval_prompts) or bool(data.eval_path)


JUDGE_KINDS = ("gold", "reward-model", "openai")  # the forms of a judge spec (evaluation/judges.make_judge builds them)


def validate_online(cfg: TrainConfig) -> None:
    gen, online = cfg.generation, cfg.online
    _choice("generation.engine", gen.engine, ["hf", "vllm"])  # generation/engines.py
    _positive("generation.batch_size", gen.batch_size)
    if not 0 < gen.top_p <= 1:
        raise CurryError(f"config key 'generation.top_p' must be in (0, 1], got {gen.top_p}")
    if not 0 < gen.vllm_gpu_memory_utilization < 1:
        raise CurryError(f"config key 'generation.vllm_gpu_memory_utilization' must be in (0, 1), "
                         f"got {gen.vllm_gpu_memory_utilization}")
    if gen.engine == "vllm" and cfg.model.lora:
        raise CurryError("generation.engine vllm does not load LoRA stage adapters yet; use generation.engine hf "
                         "or model.lora false")
    if not online.enabled:
        return
    if not online.judge or online.judge.partition(":")[0] not in JUDGE_KINDS:
        raise CurryError(f"config key 'online.judge': {online.judge!r} is not a judge spec; give gold:MODULE:FN, "
                         f"reward-model:PATH or openai:URL#MODEL")
    if online.samples < 2:
        raise CurryError(f"config key 'online.samples' must be >= 2 (a pair needs two answers), got {online.samples}")
    _positive("online.temperature", online.temperature)
    _positive("online.max_new_tokens", online.max_new_tokens)
    if not 0 <= online.mix <= 1:
        raise CurryError(f"config key 'online.mix' must be in [0, 1], got {online.mix}")
    one_stage = cfg.curriculum.schedule in ("single-pass", "random", "single-pair")
    n_stages = 1 if one_stage else cfg.curriculum.stages
    if not 1 <= online.from_stage <= n_stages:
        raise CurryError(f"config key 'online.from_stage' ({online.from_stage}) must be a stage of the schedule "
                         f"(1..{n_stages} for {cfg.curriculum.schedule} with {n_stages} stage(s))")
    if is_listwise(cfg.loss.name):
        raise CurryError("online stages build pairs; a listwise loss (plackett-luce, pro, lipo) is not supported "
                         "with online.enabled yet: use a pairwise loss")
    if resolve(cfg).reference != "previous-stage" and needs_reference(cfg.loss.name):
        raise CurryError("online stages train with the previous stage's policy as reference: set "
                         "curriculum.reference previous-stage (or auto with schedule iterative)")


def changed_keys(a: TrainConfig, b: TrainConfig) -> list[str]:
    """``section.key`` of every value that differs between two configs."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s][k]]


@dataclass(frozen=True)
class Resolved:
    """Every ``auto`` of a config, resolved once: consumers past validation read these, never the raw strings.

    `resolve` fills the choices the config alone decides; training's ``setup`` adds those that need the
    device and the model (``dataclasses.replace``), and ``summary.json`` logs the whole object."""

    reference: str  # previous-stage | initial | all-previous | mixture (auto: the paper swaps only when iterative)
    across_stages: str  # continue | restart (auto: restart for iterative, each stage a fresh DPO run)
    shuffle_within_stage: bool  # auto: true for iterative (each stage a standard DPO run), else false (ours)
    # a stage trained for more than one pass: later passes are reshuffled (seeded) when the order is random or
    # shuffled within the stage; a curriculum order is repeated as it is, a stated second pass (issue #32)
    reshuffle_passes: bool = False
    split_by: str | None = None  # rank | value | quantile, as the plan split the pairs (None: no split)
    precision: str | None = None  # fp32 | bf16 | bf16-pure
    lm_head: str | None = None  # off | chunked | liger: one kernel for policy, reference, held-out, dynamic
    attention: str | None = None  # the attention implementation the model loaded with
    gradient_checkpointing: bool | None = None
    max_tokens_per_micro_batch: int | None = None
    save_dtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve(cfg: TrainConfig) -> Resolved:
    """The config-level ``auto`` choices of a validated config (see `Resolved`)."""
    c = cfg.curriculum
    iterative = c.schedule == "iterative"
    reference = c.reference if c.reference != "auto" else ("previous-stage" if iterative else "initial")
    across = cfg.optim.across_stages if cfg.optim.across_stages != "auto" else ("restart" if iterative else "continue")
    shuffle = str(c.shuffle_within_stage).lower()
    shuffle = iterative if shuffle == "auto" else shuffle == "true"
    return Resolved(reference=reference, across_stages=across, shuffle_within_stage=shuffle,
                    reshuffle_passes=shuffle or c.schedule in RANDOM_ORDER)


RANDOM_ORDER = ("random", "single-pair")  # schedules whose stage order is a random permutation, not a curriculum


def to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


SECTION_HELP = {
    "model": "the policy, its reference, precision, LoRA, attention and memory",
    "data": "where the data is, its format, how responses are scored, paired and tokenised, held-out prompts",
    "curriculum": "difficulty measure, schedule and stages, which reference each stage uses",
    "loss": "the pairwise or listwise loss and its options",
    "optim": "learning rate, batch, updates or passes per stage, LR schedule, what happens between stages",
    "run": "output directory, seed, logging, evaluation cadence, checkpoints, Hub push",
    "generation": "how answers are sampled (online stages, evaluation)",
    "online": "online stages: fresh answers from the current policy, judged and ranked",
}


def section_table() -> str:
    """Markdown: one row per config section with its keys (the README's short reference; docs/config.md has
    every key with its default and meaning: `help_table`)."""
    lines = ["| section | what it sets | keys |", "|---|---|---|"]
    for section, cls in _section_classes().items():
        keys = ", ".join(f"`{f.name}`" for f in fields(cls))
        lines.append(f"| `{section}` | {SECTION_HELP.get(section, '')} | {keys} |")
    return "\n".join(lines)


def help_table() -> str:
    """Markdown reference of every key (used by the README and `currydpo train --help-config`)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section, cls in _section_classes().items():
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            lines.append(f"| `{section}.{f.name}` | `{default}` | {f.metadata.get('help', '')} |")
    return "\n".join(lines)
