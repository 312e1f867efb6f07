"""The public API: the few calls a Python user needs, importable as ``from currydpo import ...``.

Each is a thin front door to the function the CLI uses, so Python and the CLI train, plan and
evaluate identically. A config may be given as a `TrainConfig`, a nested dict (our sections), a
flat dict in TRL's names (``learning_rate``, ``model_name_or_path``, ...) or a YAML path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import TrainConfig, from_dict, load_config, validate
from .curriculum.schedules import Stage
from .data.loading import load_records as _load
from .data.pairs import Pair
from .data.records import Record
from .errors import CurryError


def as_config(config: TrainConfig | dict | str | None = None, **overrides: Any) -> TrainConfig:
    """A validated `TrainConfig` from any accepted form; ``overrides`` are ``section__key=value``
    (``optim__lr=1e-6``) or TRL names (``learning_rate=1e-6``)."""
    from .trl_names import from_trl, is_flat_trl

    if isinstance(config, str):
        cfg = load_config(config)
    elif isinstance(config, TrainConfig):
        cfg = from_dict(config.to_dict())  # a copy: the caller's object is not edited
    elif isinstance(config, dict):
        cfg = from_dict(from_trl(config, source="config") if is_flat_trl(config) else config)
    elif config is None:
        cfg = TrainConfig()
    else:
        raise CurryError(f"config must be a TrainConfig, a dict or a YAML path, got {type(config).__name__}")
    nested: dict[str, dict] = {}
    flat = {k: v for k, v in overrides.items() if "__" not in k}
    for key, value in overrides.items():
        if "__" in key:
            section, name = key.split("__", 1)
            nested.setdefault(section, {})[name] = value
    for section, values in (from_trl(flat, source="overrides") if flat else {}).items():
        nested.setdefault(section, {}).update(values)
    return validate(from_dict(nested, cfg))


def load_records(source, format: str = "auto", **kwargs) -> list[Record]:
    """Records from a file, a glob, a directory, a hub name, a `datasets.Dataset` / `DatasetDict` or a
    ``save_to_disk`` folder (see `data.loading.load_records` for the keyword arguments)."""
    return _load(source, format, **kwargs).records


@dataclass
class Plan:
    """What `train` would train on: the records, the training pairs (indices into each record's responses,
    with their difficulty), the held-out pairs, and the stages (indices into ``pairs``, in training order)."""

    records: list[Record]
    pairs: list[Pair]
    eval_pairs: list[Pair]
    stages: list[Stage]

    def stage_pairs(self, k: int) -> list[Pair]:
        """The pairs of stage ``k`` (0-based), in training order."""
        return [self.pairs[i] for i in self.stages[k].pairs]


def plan_stages(config: TrainConfig | dict | str, records=None) -> Plan:
    """The stages `train` would train with this config: the same held-out split, pairs, difficulty and
    schedule (`pipeline.prepare` and `pipeline.plan`, which `train` calls). Difficulty from the reference
    model (``ref-logratio``, ``data.select``) needs the model run: `train` or ``currydpo pairs --model``."""
    from .pipeline import plan, prepare

    cfg = as_config(config)
    if records is not None and not isinstance(records, list):
        records = load_records(records, cfg.data.format, score=cfg.data.score)
    prepared = prepare(cfg, records)
    plan(cfg, prepared)
    return Plan(prepared.records, prepared.train_pairs, prepared.eval_pairs, prepared.stages)


def train(config: TrainConfig | dict | str, records=None, resume: bool = False, hooks=None, **overrides: Any) -> dict:
    """Train every stage; returns the run summary (also ``summary.json``). ``records``: `Record`s or a
    `datasets.Dataset` (instead of ``data.path``); online stages are handled as by ``currydpo train``.
    ``hooks``: a `training.loop.Hooks` (``on_batch(run, update)``, ``on_stage_end(run, k, info)``)."""
    from .training import loop

    cfg = as_config(config, **overrides)
    if records is not None and not isinstance(records, list):
        records = load_records(records, cfg.data.format, score=cfg.data.score, on_bad_row=cfg.data.on_bad_row,
                               limit=cfg.data.limit)
    stages = None
    if cfg.online.enabled:  # the judge comes from the evaluation layer, handed in as the stage source
        from .evaluation.online import online_stages

        stages = online_stages()
    return loop.train(cfg, records, resume=resume, stages=stages, hooks=hooks)


def evaluate(model: str, *, reference: str | None = None, records=None, prompts=None, judge: str | None = None,
             baseline: str | None = None, beta: float = 0.1, seed: int = 0, config=None,
             max_new_tokens: int = 256, temperature: float = 1.0, progress: bool = True) -> dict:
    """Metrics of a saved model (as ``currydpo eval``): held-out preference metrics on ``records`` (Records, a
    path or a Dataset; paired and tokenised by ``config``'s data section, scored with its ``model.fused_logprobs``),
    and on ``prompts`` sampled answers, the judge's scores, the win rate over ``baseline``'s answers and the KL
    to ``reference``."""
    from .device import default_device
    from .evaluation.evaluate import evaluate_model
    from .evaluation.judges import make_judge
    from .generation.generate import GenerationConfig, load_prompts
    from .training.model import load_model, load_tokenizer

    run_cfg = as_config(config)
    data = run_cfg.data
    device = default_device()
    mcfg = as_config({"model": {"path": model}}).model
    tokenizer = load_tokenizer(model, False)
    policy = load_model(model, mcfg, device)
    ref = load_model(reference, mcfg, device) if reference else None
    heldout = records if records is None or isinstance(records, list) else load_records(records, data.format)
    prompt_list = load_prompts(prompts) if isinstance(prompts, str) else list(prompts or [])
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, do_sample=temperature > 0,
                           seed=seed)
    baseline_answers = None
    if baseline and prompt_list:
        from .generation.engines import HFEngine

        base = load_model(baseline, mcfg, device)
        baseline_answers = HFEngine(base, tokenizer).generate(prompt_list, gen, progress=progress)
    metrics, _ = evaluate_model(policy, tokenizer, prompts=prompt_list, gen=gen,
                                judge=make_judge(judge) if judge else None, baseline_answers=baseline_answers,
                                reference=ref, heldout=heldout, beta=beta, seed=seed, data=data, progress=progress,
                                fused_logprobs=run_cfg.model.fused_logprobs)
    return metrics


def compare(spec: dict | str, seeds: list[int] | None = None, output_dir: str | None = None,
            progress: bool = True) -> dict:
    """Run a comparison spec (a dict or a YAML path, as ``currydpo compare``): arms x sweep values x seeds,
    resumable per run; returns the report (also ``report.md``, ``results.json`` and the plots)."""
    from .experiments.compare import load_spec, run_compare, spec_from_dict

    s = load_spec(spec, output_dir) if isinstance(spec, str) else spec_from_dict(spec, output_dir)
    if seeds:
        s.seeds = list(seeds)
    return run_compare(s, progress=progress)
