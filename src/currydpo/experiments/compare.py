"""`currydpo compare`: a grid of arms × seeds through train + evaluate, resumable per arm.

A spec (YAML) holds a ``base`` config (the sections of `TrainConfig`), the ``arms``
(each a name + config overrides; or a ``grid`` of keys → value lists, expanded as a
cartesian product), ``seeds`` and ``eval`` settings. A ``sweep`` of one budget key (``{optim.lr:
[2e-5, 6e-5, 2e-4]}``) crosses every arm with its values as arms ``ARM@VALUE`` (an arm's own
``sweep:`` overrides it, ``sweep: {}`` opts out): the points of each arm's reward–KL frontier.
The untrained base model is always evaluated too, as the ``sft`` arm: it is the baseline every win rate is
judged against, with answers sampled under the same seed.

Every (arm, seed) writes ``ARM/seed-S/result.json`` last; a re-run skips finished
ones and resumes an interrupted training from its checkpoint. The report states each
arm's update count, LR schedule, optimiser resets and reference, so fairness
(Weber et al. 2024) is visible.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
from dataclasses import dataclass, field

import yaml

from .. import lifetime
from ..config import TrainConfig, from_dict, resolve, validate
from ..device import default_device
from ..errors import CurryError
from ..generation.generate import GenerationConfig, load_prompts
from ..io import write_json
from ..progress import progress_bar
from ..training.model import load_model, load_tokenizer
from .trajectory import TRAJECTORY_DIR, TrajectoryHook, read_trajectory, trajectory_point

BASELINE = "sft"


@dataclass
class CompareSpec:
    base: dict
    arms: dict[str, dict]  # name -> overrides (nested sections)
    seeds: list[int]
    output_dir: str
    prompts: str | None = None
    judge: str | None = None
    generation: dict = field(default_factory=dict)
    trust_remote_code: bool = False
    notes: dict = field(default_factory=dict)  # facts about the setup the report states (e.g. the data regime)
    sweeps: dict[str, dict] = field(default_factory=dict)  # "ARM@VALUE" -> {"arm", "key", "value"}
    points: int = 1  # evaluations along each run (eval.points; 1: the final model only)
    source: str = "spec"  # where the spec came from, for error messages


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for section, values in over.items():
        out.setdefault(section, {}).update(values)
    return out


def _grid(grid: dict) -> dict[str, dict]:
    keys = list(grid)
    arms = {}
    for combo in itertools.product(*(grid[k] for k in keys)):
        over: dict = {}
        for key, value in zip(keys, combo):
            section, name = key.split(".", 1)
            over.setdefault(section, {})[name] = value
        arms["+".join(str(v) for v in combo).replace("/", "_")] = over  # a path value names no directory
    return arms


def _one_sweep(sweep, source: str, where: str) -> tuple[str, list] | None:
    """``{section.key: [values]}`` -> (key, values); ``None``/``{}`` -> no sweep."""
    if not sweep:
        return None
    if not isinstance(sweep, dict) or len(sweep) != 1:
        raise CurryError(f"{source}: {where}sweep takes one budget key, e.g. 'sweep: {{optim.lr: [2.0e-5, 6.0e-5]}}'"
                         f"; got {sweep!r}")
    (key, values), = sweep.items()
    if "." not in str(key) or not isinstance(values, list) or not values:
        raise CurryError(f"{source}: {where}sweep key '{key}' needs the form section.key and a non-empty list")
    if len(set(map(str, values))) != len(values):
        raise CurryError(f"{source}: {where}sweep '{key}' repeats a value: {values}")
    return str(key), values


def expand_sweeps(arms: dict[str, dict], sweep, source: str = "spec") -> tuple[dict[str, dict], dict[str, dict]]:
    """Cross every arm with the spec's ``sweep`` (an arm's own ``sweep:`` overrides it; ``sweep: {}`` opts out):
    arm ``A`` swept over ``optim.lr: [2e-05, 6e-05]`` becomes arms ``A@2e-05`` and ``A@6e-05``."""
    out, swept = {}, {}
    for name, over in arms.items():
        over = dict(over or {})
        own = _one_sweep(over.pop("sweep", sweep), source, f"arm '{name}': ")
        if own is None:
            out[name] = over
            continue
        key, values = own
        section, field_name = key.split(".", 1)
        for value in values:
            label = f"{name}@{value}"
            out[label] = _merge(over, {section: {field_name: value}})
            swept[label] = {"arm": name, "key": key, "value": value}
    return out, swept


def arm_config(spec: CompareSpec, arm: str, seed: int) -> TrainConfig:
    over = _merge(spec.arms.get(arm, {}), {"run": {"seed": seed, "output_dir": os.path.join(
        spec.output_dir, arm, f"seed-{seed}", "train")}})
    try:
        return validate(from_dict(_merge(spec.base, over)))
    except CurryError as e:
        raise CurryError(f"arm '{arm}': {e}") from None


def load_spec(path: str, output_dir: str | None = None) -> CompareSpec:
    """Read and validate a compare spec; every arm's config is checked before any work."""
    if not os.path.exists(path):
        raise CurryError(f"compare spec not found: {path}")
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    return spec_from_dict(raw, output_dir, source=path)


def spec_from_dict(raw: dict, output_dir: str | None = None, source: str = "spec") -> CompareSpec:
    allowed = {"base", "arms", "grid", "sweep", "seeds", "output_dir", "eval"}
    unknown = set(raw) - allowed
    if unknown:
        raise CurryError(f"{source}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(allowed)}")
    arms = dict(raw.get("arms") or {})
    if raw.get("grid"):
        arms.update(_grid(raw["grid"]))
    if not arms:
        raise CurryError(f"{source}: no arms; give 'arms: {{name: {{section: {{key: value}}}}}}' or a 'grid'")
    if BASELINE in arms:
        raise CurryError(f"{source}: arm name '{BASELINE}' is reserved for the untrained baseline")
    for name in arms:
        check_arm_name(name, source)
    _one_sweep(raw.get("sweep"), source, "")
    arms, sweeps = expand_sweeps(arms, raw.get("sweep"), source)
    ev = raw.get("eval") or {}
    bad = set(ev) - {"prompts", "judge", "generation", "points"}
    if bad:
        raise CurryError(f"{source}: unknown eval key(s) {sorted(bad)}; valid: generation, judge, points, prompts")
    points = ev.get("points", 1)
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise CurryError(f"{source}: eval.points must be a positive integer (evaluations along each run, the last "
                         f"included); got {points!r}")
    if points > 1 and not ev.get("prompts"):
        raise CurryError(f"{source}: eval.points {points} evaluates generations along each run: it needs "
                         "eval.prompts (and a judge for rewards)")
    spec = CompareSpec(base=raw.get("base") or {}, arms=arms, seeds=[int(s) for s in raw.get("seeds", [0])],
                       output_dir=output_dir or raw.get("output_dir") or "runs/compare", prompts=ev.get("prompts"),
                       judge=ev.get("judge"), generation=ev.get("generation") or {}, sweeps=sweeps, source=source,
                       points=points)
    GenerationConfig(**spec.generation)  # validates the generation keys
    for arm in spec.arms:
        arm_config(spec, arm, spec.seeds[0])
    return spec


def check_arm_name(name: str, source: str) -> None:
    """An arm name is one directory under output_dir: no path separator, not '.' or '..' (``../x`` would write
    outside output_dir; a grid over absolute paths would write into them)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
        raise CurryError(f"{source}: arm name {name!r} is not a plain directory name (it names where the arm's runs "
                         f"are written under output_dir); rename the arm, or name grid arms explicitly with 'arms:'")


def _result_path(spec: CompareSpec, arm: str, seed: int) -> str:
    return os.path.join(spec.output_dir, arm, f"seed-{seed}", "result.json")


def _read(path: str):
    with open(path) as f:
        return json.load(f)


def run_arm(spec: CompareSpec, arm: str, seed: int, judge, prompts, progress: bool) -> dict:
    """Train (unless baseline) and evaluate one (arm, seed), along the run with ``eval.points`` > 1;
    result.json is written last."""
    from ..training import loop

    path = _result_path(spec, arm, seed)
    cfg = arm_config(spec, BASELINE if arm == BASELINE else arm, seed)
    cfg.run.progress = cfg.run.progress and progress  # --no-progress silences the training bars too
    if os.path.exists(path):  # done: the fairness facts are re-derived, so a re-run reports them as defined now
        result = _read(path)
        return {**result, "fairness": fairness(cfg, result["train"])}
    def load_evaluation() -> SeedEvaluation:
        return SeedEvaluation.load(spec, cfg, seed, judge, prompts, BASELINE if arm == BASELINE else None, progress)

    summary, hook, evaluation = None, None, None
    if arm != BASELINE:
        hooks = loop.Hooks()
        if spec.points > 1:  # the policy in memory, evaluated as checkpoints are (generation metrics only)
            evaluation = load_evaluation()  # the initial model stays loaded beside training only for these points
            hook = TrajectoryHook(os.path.join(os.path.dirname(path), TRAJECTORY_DIR), spec.points,
                                  lambda policy: evaluation(policy, heldout=False)[0],
                                  skip_last=cfg.run.final_model == "last")
            hooks.on_batch.append(hook)
        state = os.path.join(cfg.run.output_dir, "state")
        stages = None
        if cfg.online.enabled:  # the judge comes from the evaluation layer, handed in as the stage source
            from ..evaluation.online import online_stages

            stages = online_stages()
        summary = loop.train(cfg, resume=os.path.exists(state), stages=stages, hooks=hooks)
    final = None if arm == BASELINE else load_model(os.path.join(cfg.run.output_dir, "final"), cfg.model,
                                                    default_device())
    metrics, answers = (evaluation or load_evaluation())(final)
    if arm == BASELINE and prompts:
        metrics["kl"] = 0.0 if "kl" in metrics else None
        if judge is not None:  # against its own answers: all ties, 0.5 by construction
            from ..evaluation.winrate import win_rate_report

            metrics["win_rate"] = win_rate_report(judge, prompts, answers, answers, seed=seed)
        write_json(os.path.join(spec.output_dir, BASELINE, f"seed-{seed}", "answers.json"), answers)
    result = {"arm": arm, "seed": seed, **({"sweep": spec.sweeps[arm]} if arm in spec.sweeps else {}),
              "metrics": metrics, "train": summary,
              "fairness": fairness(cfg, summary), "answers_sample": answers[:5]}
    if hook is not None:
        result["trajectory"] = read_trajectory(hook.directory)
        if hook.skip_last:  # final/ is the last update's model: its evaluation is the last point
            result["trajectory"].append(trajectory_point(summary["total_updates"], metrics))
    write_json(path, result)
    return result


@dataclass
class SeedEvaluation:
    """What every evaluation of one (arm, seed) shares — the same prompts and sampling seed, judge, SFT answers
    to win against, initial model for KL and held-out pairs of ``cfg`` — loaded once, so the final model and
    the points along the run (`TrajectoryHook`) are evaluated alike."""

    cfg: TrainConfig
    seed: int
    tokenizer: object
    reference: object  # the initial model: KL is measured to it
    heldout: list
    baseline_answers: list[str] | None
    gen: GenerationConfig
    judge: object
    prompts: list
    progress: bool

    @classmethod
    def load(cls, spec: CompareSpec, cfg: TrainConfig, seed: int, judge, prompts, arm: str | None,
             progress: bool) -> "SeedEvaluation":
        from ..pipeline import prepare

        tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
        reference = load_model(cfg.model.ref_model or cfg.model.path, cfg.model, default_device())
        data = prepare(cfg)
        heldout = [data.records[r] for r in sorted({p.record for p in data.eval_pairs})]
        baseline_answers = None
        if arm != BASELINE and judge is not None and prompts:
            baseline_answers = _read(os.path.join(spec.output_dir, BASELINE, f"seed-{seed}", "answers.json"))
        gen = GenerationConfig(**{**spec.generation, "seed": seed})
        return cls(cfg, seed, tokenizer, reference, heldout, baseline_answers, gen, judge, prompts, progress)

    def __call__(self, policy=None, heldout: bool = True) -> tuple[dict, list[str]]:
        """Evaluate ``policy`` (None: the initial model itself); ``heldout=False``: generation metrics only."""
        from ..evaluation.evaluate import evaluate_model

        cfg = self.cfg
        return evaluate_model(self.reference if policy is None else policy, self.tokenizer, prompts=self.prompts,
                              gen=self.gen, judge=self.judge, baseline_answers=self.baseline_answers,
                              reference=self.reference, heldout=self.heldout if heldout else None,
                              beta=cfg.loss.beta, seed=self.seed, data=cfg.data, progress=self.progress,
                              fused_logprobs=cfg.model.fused_logprobs)


def evaluate_checkpoint(spec: CompareSpec, cfg: TrainConfig, seed: int, model_dir: str | None, judge, prompts,
                        progress: bool) -> tuple[dict, list[str]]:
    """Evaluate ``model_dir`` (None: the base model) as every arm is (`SeedEvaluation`)."""
    evaluation = SeedEvaluation.load(spec, cfg, seed, judge, prompts, None if model_dir else BASELINE, progress)
    return evaluation(None if model_dir is None else load_model(model_dir, cfg.model, default_device()))


def fairness(cfg: TrainConfig, summary: dict | None) -> dict:
    if summary is None:
        return {"updates": 0, "schedule": "none (base model)", "reference": "-", "lr_schedule": "-",
                "optimizer_resets": 0}
    o = cfg.optim
    resolved = summary.get("resolved") or resolve(cfg).to_dict()  # as the run resolved it (summary.json)
    # The evaluated model is final/: with run.final_model best an earlier stage, trained for fewer updates.
    stage = (summary.get("final_model") or {}).get("stage", len(summary["stages"]))
    updates = sum(s["updates"] for s in summary["stages"][:stage])
    return {"updates": updates, "run_updates": summary["total_updates"], "evaluated_stage": stage,
            "schedule": cfg.curriculum.schedule,
            "stages": len(summary["stages"]), "reference": _reference(cfg, resolved["reference"]),
            "lr_schedule": f"{o.lr_schedule}, peak {o.lr:g}, warm-up {o.warmup_ratio:g}, {resolved['across_stages']}",
            "optimizer_resets": summary["optimizer_resets"], "pairs_per_update": _per_update(summary),
            "passes": _passes(summary["stages"][:stage]),
            "train_pairs": summary["train_pairs"], "loss": f"{cfg.loss.label()} (beta {cfg.loss.beta:g})"}


def _passes(stages: list[dict]) -> str:
    """Passes over its items each evaluated stage made, e.g. ``1.65`` or ``0.55/0.55/0.55``."""
    return "/".join(f"{s['passes']:g}" if "passes" in s else "?" for s in stages) or "–"


def _reference(cfg: TrainConfig, mode: str) -> str:
    return f"mixture (alpha {cfg.curriculum.reference_mix:g})" if mode == "mixture" else mode


def _per_update(summary: dict):
    """Pairs per update; for a listwise loss, lists per update and the pairs they stand for."""
    if summary.get("unit", "pair") == "pair":
        return summary["pairs_per_update"]
    stages = summary["stages"]
    per_list = sum(s.get("pairs_equivalent", 0) for s in stages) / max(1, sum(s.get("pairs", 0) for s in stages))
    return f"{summary['pairs_per_update']} lists ≈ {summary['pairs_per_update'] * per_list:.1f} pairs"


def preflight(spec: CompareSpec) -> None:
    """Every model, data file, prompt file and reward model the spec names can be found, checked before
    anything is written or trained: an example's placeholder path fails here in one line, not after the
    baseline has been evaluated."""
    from ..data.loading import in_memory_tables, local_files
    from ..training.model import check_path

    seen = set()
    for arm in [BASELINE, *spec.arms]:
        cfg = arm_config(spec, arm, spec.seeds[0])
        for key, value, check in (("model.path", cfg.model.path, "model"), ("model.ref_model", cfg.model.ref_model,
                                  "model"), ("data.path", cfg.data.path, "data"),
                                  ("curriculum.reward_model", cfg.curriculum.reward_model, "model")):
            if not value or (key, value) in seen:
                continue
            seen.add((key, value))
            try:
                if check == "model":
                    check_path(value, key)
                elif in_memory_tables(value, cfg.data.split) is None:
                    local_files(value)  # a missing local path is an error; a hub dataset name is left to loading
            except CurryError as e:
                raise CurryError(f"{spec.source}: arm {arm}: {e}") from None
    if spec.prompts and not os.path.exists(spec.prompts):
        raise CurryError(f"{spec.source}: eval.prompts {spec.prompts}: file not found")
    if spec.judge and spec.judge.startswith("reward-model:"):
        try:
            check_path(spec.judge.split(":", 1)[1], "eval.judge reward model")
        except CurryError as e:
            raise CurryError(f"{spec.source}: {e}") from None


def check_same_spec(spec: CompareSpec) -> None:
    """Refuse to mix results of different comparisons in one directory. Adding seeds, arms or sweep values
    is fine (each run is keyed by its arm and seed); an arm present in both must be the same arm, and so
    must everything the arms share (base, eval)."""
    path = os.path.join(spec.output_dir, "spec.json")
    mine = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("seeds", "output_dir", "source")}
    mine = json.loads(json.dumps(mine, default=str))
    if os.path.exists(path):
        old = _read(path)
        for spec_dict in (old, mine):  # progress bars change no result: --no-progress may resume a run
            base = spec_dict.get("base", {})
            base.get("run", {}).pop("progress", None)
            if base.get("run") == {}:
                base.pop("run")
        shared = {k for k in mine if k not in ("arms", "sweeps")}
        changed = [k for k in sorted(shared | (set(old) - {"arms", "sweeps"})) if old.get(k) != mine.get(k)]
        changed += [f"arm {a}" for a in old.get("arms", {}) if a in mine["arms"] and old["arms"][a] != mine["arms"][a]]
        if changed:
            raise CurryError(f"{spec.output_dir} holds results of a different comparison ({', '.join(changed)} "
                             f"differ from its spec.json); choose another output directory or delete it")
        if set(mine["arms"]) - set(old.get("arms", {})):  # arms added: the record keeps every arm run here
            mine["arms"] = {**old.get("arms", {}), **mine["arms"]}
            mine["sweeps"] = {**old.get("sweeps", {}), **mine["sweeps"]}
            write_json(path, mine)
    else:
        write_json(path, mine)


def run_compare(spec: CompareSpec, progress: bool = True) -> dict:
    """Run every (arm, seed) not yet done — the baseline first — then write the report."""
    preflight(spec)  # nothing is written for a spec that cannot run (no spec.json left to block the directory)
    lifetime.check_output_dir(spec.output_dir, "compare output_dir")
    with lifetime.hold_output_dir(spec.output_dir):  # one writer; each arm's train holds its own run dir too
        return _run_compare(spec, progress)


def _run_compare(spec: CompareSpec, progress: bool) -> dict:
    from ..evaluation.judges import make_judge
    from .report import write_report

    judge = make_judge(spec.judge, cache_dir=os.path.join(spec.output_dir, "judge-cache"),
                       trust_remote_code=spec.trust_remote_code) if spec.judge else None
    prompts = load_prompts(spec.prompts) if spec.prompts else []
    os.makedirs(spec.output_dir, exist_ok=True)
    check_same_spec(spec)
    jobs = [(a, s) for s in spec.seeds for a in [BASELINE, *spec.arms]]
    results = []
    for arm, seed in progress_bar(jobs, desc="arms", unit="run", enabled=progress):
        results.append(run_arm(spec, arm, seed, judge, prompts, progress))
    return write_report(spec.output_dir, results, [BASELINE, *spec.arms], notes=spec.notes)
