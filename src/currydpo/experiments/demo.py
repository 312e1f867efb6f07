"""`currydpo demo`: the whole Curry-DPO comparison on the embedded world, offline.

The world (built once, cached) supplies an SFT model, UltraFeedback-layout preference
data (4 responses per prompt, rated 1..5 by a noisy judge of the gold reward) and
held-out prompts. ``responses`` picks the data regime: ``pool`` (default, the paper's:
UltraFeedback rates answers of 4 distinct models from a pool of graded quality) or
``self`` (all 4 answers sampled from the SFT model, on-policy). The report records it.

The demo is an ordinary `compare` spec over that world — loader, pairs, difficulty,
schedule, training and evaluation all run through the public code paths — with five
arms that share the loss, beta, peak learning rate and number of updates:

- ``sft``: the SFT model itself (the baseline of every win rate);
- ``single-pair``: DPO on one pair per prompt, best vs a random other (Zephyr recipe);
- ``multi-pair-random``: DPO on all best-vs-rest pairs in random order;
- ``curry-iterative``: Curry-DPO, 3 stages (R1,R4) -> (R1,R3) -> (R1,R2), each stage's
  reference the previous stage's policy, each stage a fresh DPO run (optimiser and LR schedule
  restarted: the paper's recipe, the library's default for ``schedule: iterative``);
- ``curry-single-pass``: all best-vs-rest pairs in one pass, easy -> hard, SFT reference.

``--ablations`` adds arms that take the iterative arm apart (one change each, except
``anti-curriculum``), and evaluates the iterative arm's ``stage-K/`` checkpoints:

- ``iterative-continue``: one optimiser and LR schedule over all three stages (the fairness
  rule of Weber et al. 2024 taken to the schedule too), still 100 updates per stage;
- ``iterative-fixed-ref``: the iterative stages with the SFT model as reference throughout
  (isolates the reference swap);
- ``anti-curriculum``: the iterative stages reversed, (R1,R2) first, each stage's pairs
  hard -> easy and not shuffled, SFT reference, one LR schedule. Four changes of the
  iterative arm (order, shuffling, reference, LR schedule). Not single-pass reversed: it walks
  rank stages, not one score-gap order;
- ``iterative-best-stage``: the iterative arm with ``run.final_model: best`` (the evaluated
  model is the stage with the best held-out reward accuracy: stage-level early stopping);
- ``iterative-mrpo``: the iterative stages with ``curriculum.reference: all-previous``: each stage's
  reference combines the SFT model and every earlier stage's policy (MRPO, Le et al. 2024).
- ``curry-online``: the iterative arm whose stages 2 and 3 are online (issue #16): before
  each, 4 answers per training prompt are sampled from the current policy and rated by the
  world's noisy judge (`world.preferences.judge_score`, the judge that rated the offline
  data), and the stage trains on their best-vs-rest pairs, easy -> hard. Stage 1 is the
  offline data, which is itself sampled from the initial (SFT) policy.

Nothing in the world knows which arm is running; the table reports what comes out. The
budget (peak lr, updates) is the default-budget rule's pick on the frontier (``--frontier``),
and the report's first line says so; ``--budget passes`` is its ablation (one pass per stage).
"""

from __future__ import annotations

import json
import os

from ..errors import CurryError
from ..io import write_json
from ..training.references import stage_name
from ..world.build import build_world
from .compare import CompareSpec, arm_config, evaluate_checkpoint, expand_sweeps, run_compare

# Set explicitly (not left to the library's `auto`), so the demo's arms do not move when defaults do.
ITERATIVE = {"schedule": "iterative", "stages": 3, "shuffle_within_stage": True}
# The paper's iterative recipe: each stage a standard DPO run, its optimiser and LR schedule restarted.
CURRY_ITERATIVE = {"curriculum": ITERATIVE, "optim": {"across_stages": "restart"}}
ARMS = {
    "single-pair": {"curriculum": {"schedule": "single-pair", "single_pair_strategy": "best-vs-random"}},
    "multi-pair-random": {"curriculum": {"schedule": "random"}},
    "curry-iterative": CURRY_ITERATIVE,
    "curry-single-pass": {"curriculum": {"schedule": "single-pass"}},
}


def _iterative(**over) -> dict:
    """The curry-iterative arm with the given sections' keys changed (one change per ablation)."""
    return {section: {**CURRY_ITERATIVE.get(section, {}), **over.get(section, {})}
            for section in dict.fromkeys([*CURRY_ITERATIVE, *over])}


ABLATIONS = {
    # the curry-iterative arm with one change each; anti-curriculum: order, shuffling, reference and LR schedule
    "iterative-continue": _iterative(optim={"across_stages": "continue"}),  # one LR schedule over all stages
    "iterative-fixed-ref": _iterative(curriculum={"reference": "initial"}),
    "anti-curriculum": {"curriculum": {"schedule": "anti", "stages": 3}},
    "iterative-best-stage": _iterative(run={"final_model": "best"}),
    "iterative-mrpo": _iterative(curriculum={"reference": "all-previous"}),
    "curry-online": _iterative(online={
        "enabled": True, "from_stage": 2, "samples": 4, "temperature": 1.0, "max_new_tokens": 48,
        "judge": "gold:currydpo.world.preferences:judge_score"}, generation={"batch_size": 32}),
}
MIXTURE = {"iterative-mixture": _iterative(curriculum={"reference": "mixture", "reference_mix": 0.5})}

# --frontier, fixed before its results were read (issue #32): these arms, every one swept over the same two peak
# learning rates and evaluated at FRONTIER_POINTS evenly spaced updates along each run (trajectories), 300
# updates each (the headline budget: equal updates, Weber et al. 2024). The frontier compares the best gold
# reward each arm *measured* within a KL budget, paired by seed against single-pair (frontier.py).
FRONTIER_ARMS = [*ARMS, "iterative-continue", "curry-online", "iterative-fixed-ref", "iterative-mixture"]
FRONTIER_SWEEP = {"optim.lr": [6.0e-5, 2.0e-4]}
FRONTIER_POINTS = 10
# --frontier --budget passes: the ablation of the headline budget. Every arm makes one pass over each stage's
# pairs (the paper's recipe: each stage one DPO epoch), so single-pair trains fewer updates than the multi-pair arms.
BUDGETS = ("updates", "passes")

# Shared by every arm. The same number of updates and peak learning rate, so only the data order, the reference and
# (curry-iterative: the paper's per-stage restart) the LR schedule differ between arms; the fairness table says
# which. The default lr is what the default-budget rule picked on the frontier (DEFAULT_BUDGET).
SETTINGS = {
    "default": {"updates": 300, "batch_size": 8, "lr": 6e-5, "beta": 0.1, "eval_fraction": 0.1,
                "max_new_tokens": 48},
    "quick": {"updates": 24, "batch_size": 8, "lr": 2e-4, "beta": 0.1, "eval_fraction": 0.1,
              "max_new_tokens": 32},
}
DEFAULT_BUDGET = (
    "peak lr 6e-05, 300 updates of 8 pairs (every arm). Why: the default-budget rule, fixed before any frontier "
    "result was read, takes the swept lr at which the reference arm single-pair has its best mean gold reward; on "
    "the 3-seed frontier (docs/demo_frontier/, `currydpo demo --frontier`) it picks 6e-05. One budget compares how "
    "far each arm drifted, not the methods: the comparison of methods is the frontier "
    "(docs/demo_frontier/pool/frontier.md)")


RESPONSES = {
    "pool": "each prompt's 4 answers come from 4 distinct writers of graded quality (rule-based writers with "
            "controlled error rates, the SFT model at 3 temperatures, an early SFT checkpoint), as UltraFeedback "
            "rates 4 of 17 models: the paper's regime",
    "self": "all 4 answers sampled from the SFT model itself (on-policy)",
}


def demo_spec(world, output_dir: str, seeds: list[int], quick: bool = False, progress: bool = True,
              ablations: bool = False, responses: str = "pool", frontier: bool = False,
              budget: str = "updates") -> CompareSpec:
    s = SETTINGS["quick" if quick else "default"]
    if budget not in BUDGETS:
        raise CurryError(f"demo: budget {budget!r} is not one of {', '.join(BUDGETS)}")
    per_arm = {"total_updates": s["updates"]} if budget == "updates" else {"epochs_per_stage": 1.0}
    base = {
        "model": {"path": str(world.sft_model)},
        "data": {"path": str(world.train_data), "format": "ultrafeedback", "score": "mean-aspects",
                 "strategy": "best-vs-rest", "eval_fraction": s["eval_fraction"], "max_length": 128,
                 "max_prompt_length": 48},
        "loss": {"name": "dpo", "beta": s["beta"]},
        "optim": {"lr": s["lr"], "batch_size": s["batch_size"], **per_arm,
                  "lr_schedule": "linear", "warmup_ratio": 0.1, "across_stages": "continue"},
        "run": {"progress": progress},
    }
    arms = {**ARMS, **(ABLATIONS if ablations else {})}
    sweeps, points = {}, 1
    if frontier:  # arm x lr, evaluated along each run: each arm's reward-KL frontier (frontier.md)
        every = {**ARMS, **ABLATIONS, **MIXTURE}
        arms, sweeps = expand_sweeps({a: every[a] for a in FRONTIER_ARMS}, FRONTIER_SWEEP, "demo")
        points = FRONTIER_POINTS
    return CompareSpec(base=base, arms=arms, seeds=seeds, output_dir=output_dir, prompts=str(world.eval_prompts),
                       judge="gold:currydpo.world.language:gold_reward",
                       generation={"max_new_tokens": s["max_new_tokens"], "temperature": 1.0, "top_p": 1.0,
                                   "do_sample": True, "batch_size": 50},
                       notes={"budget": budget_note(quick, frontier, budget), "responses": responses,
                              "responses_detail": RESPONSES[responses]}, sweeps=sweeps, points=points)


def budget_note(quick: bool, frontier: bool, budget: str) -> str:
    """The first line of every demo report: which training budget its numbers are at, and why."""
    s = SETTINGS["quick" if quick else "default"]
    each = (f"{s['updates']} updates of {s['batch_size']} pairs (every arm: equal updates, the headline budget)"
            if budget == "updates" else "one pass over each stage's pairs (every arm: equal passes, the ablation "
            "of the headline budget)")
    if frontier:
        lrs = ", ".join(f"{v:g}" for v in FRONTIER_SWEEP["optim.lr"])
        return (f"the frontier: every arm at peak lr {lrs}, {each}, evaluated at {FRONTIER_POINTS} evenly spaced "
                "updates along each run; methods are compared in frontier.md")
    if quick:
        return f"peak lr {s['lr']:g}, {each}: a smoke check of the pipeline, not a comparison"
    if budget == "passes":
        return f"peak lr {s['lr']:g}, {each}"
    return DEFAULT_BUDGET


def run_demo(output_dir: str = "runs/demo", seeds: list[int] | None = None, quick: bool = False,
             cache_dir: str | None = None, world_seed: int = 0, progress: bool = True,
             ablations: bool = False, responses: str = "pool", frontier: bool = False,
             budget: str = "updates") -> dict:
    """Build (or reuse) the world of the ``responses`` regime, run every arm for every seed, write the report
    (+ the per-stage report)."""
    world = build_world(cache_dir, seed=world_seed, quick=quick, progress=progress, responses=responses)
    spec = demo_spec(world, output_dir, seeds or [1], quick=quick, progress=progress, ablations=ablations,
                     responses=responses, frontier=frontier, budget=budget)
    if frontier:  # the swept arms are reported on the frontier (frontier.md); no per-stage report
        os.makedirs(output_dir, exist_ok=True)
        return run_compare(spec, progress=progress)
    os.makedirs(output_dir, exist_ok=True)
    report = run_compare(spec, progress=progress)
    stages = {"seeds": spec.seeds, "stage_data": stage_data(spec),
              "checkpoints": stage_checkpoints(spec, progress=progress) if ablations else []}
    extra = stages_report(stages, report["results"])
    with open(os.path.join(output_dir, "results.md"), "a") as f:
        f.write("\n" + extra)
    path = os.path.join(output_dir, "results.json")  # what `currydpo report` re-renders the stage tables from
    with open(path) as f:
        saved = json.load(f)
    write_json(path, {**saved, "demo_stages": stages})
    return {**report, "markdown": report["markdown"] + "\n" + extra}


# ---------------------------------------------------------------- the iterative arm, stage by stage

STAGED = "curry-iterative"


def stage_data(spec: CompareSpec) -> list[dict]:
    """The training pairs of each iterative stage, judged by the world's gold reward (mean over seeds):
    how many are mislabeled (gold(chosen) < gold(rejected)) or gold ties, and the mean gold gap."""
    from ..pipeline import prepare, stage_plan
    from ..world.language import gold_reward

    per_seed = []
    for seed in spec.seeds:
        cfg = arm_config(spec, STAGED, seed)
        data = prepare(cfg)
        rows = []
        for stage in stage_plan(cfg, data.train_pairs):
            gaps = []
            for i in stage.pairs:
                p = data.train_pairs[i]
                rec = data.records[p.record]
                gaps.append(gold_reward(rec.prompt, rec.responses[p.chosen].text)
                            - gold_reward(rec.prompt, rec.responses[p.rejected].text))
            rows.append({"stage": stage.index + 1, "label": stage.label, "pairs": len(gaps),
                         "mislabeled": sum(g < 0 for g in gaps) / len(gaps), "gold_ties": sum(g == 0 for g in gaps)
                         / len(gaps), "gold_gap": sum(gaps) / len(gaps)})
        per_seed.append(rows)
    return [{**rows[0], **{k: sum(r[k] for r in rows) / len(rows) for k in ("pairs", "mislabeled", "gold_ties",
                                                                          "gold_gap")}}
            for rows in zip(*per_seed)]


def stage_checkpoints(spec: CompareSpec, arm: str = STAGED, progress: bool = True) -> list[dict]:
    """Evaluate ``arm``'s ``stage-K/`` checkpoints before the last (the last is ``final/``) exactly as
    every arm is evaluated; cached per seed in ``ARM/seed-S/stage-K-result.json``."""
    from ..evaluation.judges import make_judge
    from ..generation.generate import load_prompts

    judge = make_judge(spec.judge, cache_dir=os.path.join(spec.output_dir, "judge-cache"),
                       trust_remote_code=spec.trust_remote_code)
    prompts = load_prompts(spec.prompts)
    out = []
    for seed in spec.seeds:
        cfg = arm_config(spec, arm, seed)
        stages = cfg.curriculum.stages
        for k in range(1, stages):
            name = stage_name(k - 1)  # stage k, 1-based
            path = os.path.join(spec.output_dir, arm, f"seed-{seed}", f"{name}-result.json")
            if not os.path.exists(path):
                metrics, _ = evaluate_checkpoint(spec, cfg, seed, os.path.join(cfg.run.output_dir, name),
                                                 judge, prompts, progress)
                write_json(path, {"arm": f"{arm} {name}/", "seed": seed, "stage": k, "metrics": metrics})
            with open(path) as f:
                out.append(json.load(f))
    return out


def stages_report(stages: dict, results: list[dict]) -> str:
    """Markdown: the data of each iterative stage (``stages``: seeds, `stage_data`, `stage_checkpoints`; kept in
    results.json as ``demo_stages``), held-out metrics after each stage, and (with the ablations) the evaluation
    of each stage's checkpoint."""
    from .report import metrics_table

    checkpoints = stages["checkpoints"]
    lines = [f"Training pairs of each `{STAGED}` stage, judged by the gold reward (mean over seeds "
             f"{', '.join(map(str, stages['seeds']))}):", "",
             "| stage | pairs | mislabeled by gold | gold ties | mean gold gap (chosen - rejected) |",
             "|---|---|---|---|---|"]
    for r in stages["stage_data"]:
        lines.append(f"| {r['stage']}: {r['label']} | {r['pairs']:.1f} | {100 * r['mislabeled']:.1f}% | "
                     f"{100 * r['gold_ties']:.1f}% | {r['gold_gap']:.3f} |")
    staged = [r for r in results if r.get("train") and len(r["train"]["stages"]) > 1
              and all("eval/rewards/accuracies" in s for s in r["train"]["stages"])]
    if staged:
        lines += ["", "Held-out pairs after each stage (mean over seeds): reward accuracy / log p(chosen), nats:", "",
                  "| arm | " + " | ".join(f"after stage {s['stage']}" for s in staged[0]["train"]["stages"]) + " |",
                  "|---|" + "---|" * len(staged[0]["train"]["stages"])]
        for arm in dict.fromkeys(r["arm"] for r in staged):
            runs = [r["train"]["stages"] for r in staged if r["arm"] == arm]
            cells = [f"{_mean(st[k]['eval/rewards/accuracies'] for st in runs):.3f} / "
                     f"{_mean(st[k]['eval/logps/chosen'] for st in runs):.2f}" for k in range(len(runs[0]))]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if checkpoints:
        stages = {r["seed"]: r["train"]["stages"] for r in results if r["arm"] == STAGED and r.get("train")}
        rows = [{**c, "fairness": {"updates": sum(s["updates"] for s in stages[c["seed"]][:c["stage"]]),
                                   "reference": "previous-stage"}} for c in checkpoints]
        rows += [{**r, "arm": f"{STAGED} final/"} for r in results if r["arm"] == STAGED]
        lines += ["", f"`{STAGED}` evaluated after each stage (its `stage-K/` checkpoints, evaluated as every arm; "
                  "`final/` = the last stage):", "", metrics_table(rows)]
    return "\n".join(lines) + "\n"


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
