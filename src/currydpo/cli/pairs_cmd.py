"""`currydpo pairs DATA --out pairs.jsonl`: load rated data, build preference pairs, write them.

The pairs, their difficulty and the stage plan come from `pipeline.prepare` and `pipeline.plan`,
the functions `train` calls, so `pairs --config run.yaml` shows exactly what `train` would train;
the flags are shortcuts for config keys (`FLAG_KEYS`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Iterator

from ..config import TrainConfig, load_config
from ..curriculum.difficulty import check_measure
from ..curriculum.schedules import SCHEDULES, Stage
from ..data.formats import FORMATS, SCORES
from ..data.loading import ON_BAD_ROW
from ..data.pairs import BUILDERS, Pair
from ..data.records import Record, Text
from ..errors import CurryError
from ..io import quiet_bars, save_figure, write_jsonl
from ..pipeline import Prepared, plan, prepare, stage_plan


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pairs", help="build preference pairs from rated responses",
        description="Read rated responses (a local file, directory or glob, or a Hub dataset name), "
                    "build (chosen, rejected) pairs per prompt and write them as JSON lines.")
    p.add_argument("data", metavar="DATA", nargs="?", default=None,
                   help="local .jsonl/.json/.parquet/.csv file, directory or glob; or a Hugging Face Hub dataset "
                        "name (default with --config: its data.path)")
    p.add_argument("--format", default=None, choices=("auto",) + FORMATS,
                   help="source layout (default: auto-detect from the first row's keys)")
    p.add_argument("--split", default=None, help="Hub split to read (default: train)")
    p.add_argument("--subset", default=None, help="Hub dataset configuration / subset name")
    p.add_argument("--score", default=None, choices=SCORES,
                   help="UltraFeedback score: mean of the aspect ratings (1..5, the paper's) or overall_score")
    p.add_argument("--strategy", default=None, choices=tuple(BUILDERS),
                   help="pair builder (default: best-vs-rest, the Curry-DPO pairs)")
    p.add_argument("--min-gap", type=float, default=None,
                   help="drop pairs whose score gap is below this (default: 0, keep all)")
    p.add_argument("--allow-ties", action="store_true", help="also pair responses with equal scores")
    p.add_argument("--seed", type=int, default=None, help="random seed for best-vs-random (default: 0)")
    p.add_argument("--on-bad-row", default=None, choices=ON_BAD_ROW,
                   help="stop at the first bad row (error, default) or count and skip it (skip)")
    p.add_argument("--limit", type=int, default=None, help="read at most this many prompts")
    p.add_argument("--out", required=True, help="output JSON lines file, written atomically")
    p.add_argument("--trl", action="store_true",
                   help="write only TRL's prompt/chosen/rejected columns (conversational form for chat data)")
    g = p.add_argument_group("curriculum inspection")
    g.add_argument("--difficulty", default=None,
                   help="difficulty measure to compute and write: score-gap | rank-gap | length-gap | ref-logratio "
                        "(needs --model) | reward-margin (needs --reward-model) | column:NAME | function:MODULE:FN")
    g.add_argument("--schedule", default=None, choices=tuple(SCHEDULES),
                   help="print the stage plan of this schedule and plot difficulty by stage")
    g.add_argument("--stages", type=int, default=None, help="number of stages for --schedule (default 3)")
    g.add_argument("--config", default=None,
                   help="a training YAML config: its data and curriculum sections give the pairs and the stage "
                        "plan exactly as `currydpo train` builds them (flags given here override it)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key, e.g. --set curriculum.split_by=quantile (repeatable)")
    g.add_argument("--select", action="store_true",
                   help="reference-guided selection (data.select ref-margin, keeping data.select_fraction, "
                        "default 0.4): mark the kept pairs and show the kept fraction per stage (needs --model)")
    g.add_argument("--model", default=None, help="reference model for --difficulty ref-logratio and --select")
    g.add_argument("--reward-model", default=None, help="sequence-classification model for reward-margin")
    g.add_argument("--plot", default=None,
                   help="PNG path of the difficulty histogram by stage (default: OUT with .stages.png)")
    g.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with the models to run")
    g.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    return p


# ----------------------------------------------------------------------------- steps

# flag -> config key: the flags are shortcuts for keys of the training config, so `pairs` builds
# the pairs and the stage plan with the same code and settings as `train`
FLAG_KEYS = {"format": "data.format", "split": "data.split", "subset": "data.subset", "score": "data.score",
             "strategy": "data.strategy", "min_gap": "data.min_gap", "on_bad_row": "data.on_bad_row",
             "limit": "data.limit", "seed": "run.seed", "difficulty": "curriculum.difficulty",
             "schedule": "curriculum.schedule", "stages": "curriculum.stages", "model": "model.path",
             "reward_model": "curriculum.reward_model"}


def pairs_config(args: argparse.Namespace) -> TrainConfig:
    """--config, then --set, then the flags given on the command line."""
    overrides = list(args.overrides) + [f"{key}={getattr(args, flag)}" for flag, key in FLAG_KEYS.items()
                                        if getattr(args, flag, None) is not None]
    overrides += ["data.allow_ties=true"] if args.allow_ties else []
    overrides += ["data.select=ref-margin"] if getattr(args, "select", False) else []
    overrides += ["model.trust_remote_code=true"] if args.trust_remote_code else []
    overrides += ["run.progress=false"] if getattr(args, "no_progress", False) else []
    return load_config(args.config, overrides)


def _as_messages(t: Text, role: str) -> list[dict]:
    return t if isinstance(t, list) else [{"role": role, "content": t}]


def pair_row(rec: Record, pair: Pair, trl: bool) -> dict:
    """One output line. TRL form: conversational whenever the prompt or a response is chat."""
    chosen, rejected = rec.responses[pair.chosen].text, rec.responses[pair.rejected].text
    if trl:
        if rec.is_chat or isinstance(chosen, list) or isinstance(rejected, list):
            return {"prompt": _as_messages(rec.prompt, "user"), "chosen": _as_messages(chosen, "assistant"),
                    "rejected": _as_messages(rejected, "assistant")}
        return {"prompt": rec.prompt, "chosen": chosen, "rejected": rejected}
    return {
        "prompt_id": rec.id, "prompt": rec.prompt, "chosen": chosen, "rejected": rejected,
        "chosen_score": pair.chosen_score, "rejected_score": pair.rejected_score,
        "chosen_rank": rec.responses[pair.chosen].rank, "rejected_rank": rec.responses[pair.rejected].rank,
        "score_gap": pair.score_gap, "rank_gap": pair.rank_gap, "rejected_position": pair.rejected_position,
        "source": rec.source, "row": rec.row,
    }


def pair_rows(records: list[Record], pairs: list[Pair], trl: bool) -> Iterator[dict]:
    for pair in pairs:
        yield pair_row(records[pair.record], pair, trl)


# ----------------------------------------------------------------------------- summary

def histogram(counts: dict, width: int = 40) -> list[str]:
    """Text bars, one line per key in the given order."""
    top = max(counts.values(), default=0) or 1
    label_w = max((len(str(k)) for k in counts), default=0)
    return [f"  {str(k):>{label_w}} | {'#' * max(1, round(width * v / top)) if v else '':<{width}} {v}"
            for k, v in counts.items()]


def gap_bins(gaps: list[float], bins: int = 8) -> dict[str, int]:
    lo, hi = min(gaps), max(gaps)
    if hi == lo:
        return {f"{lo:g}": len(gaps)}
    step = (hi - lo) / bins
    counts = [0] * bins
    for g in gaps:
        counts[min(bins - 1, int((g - lo) / step))] += 1
    return {f"[{lo + k * step:.2f}, {lo + (k + 1) * step:.2f}{']' if k == bins - 1 else ')'}": c
            for k, c in enumerate(counts)}


def summary(result: Prepared, pairs: list[Pair], out: str) -> str:
    per_prompt = [0] * len(result.records)
    for p in pairs:
        per_prompt[p.record] += 1
    lines = [
        f"format           {result.format}",
        f"rows read        {result.rows_read}",
        f"prompts read     {len(result.records)}",
        f"bad rows         {sum(result.bad_rows.values())}",
    ]
    lines += [f"  {reason}: {n}" for reason, n in sorted(result.bad_rows.items())]
    lines.append(f"pairs total      {len(pairs)}  -> {out}")
    if per_prompt:
        lines.append(f"pairs per prompt min {min(per_prompt)} / mean {statistics.mean(per_prompt):.2f} "
                     f"/ max {max(per_prompt)}")
        hist: dict[int, int] = {}
        for n in sorted(per_prompt):
            hist[n] = hist.get(n, 0) + 1
        lines += histogram(hist)
    gaps = [p.score_gap for p in pairs if p.score_gap is not None]
    if gaps:
        lines.append("score gap")
        lines += histogram(gap_bins(gaps))
    elif pairs:
        lines.append("rank gap")
        hist = {}
        for g in sorted(p.rank_gap for p in pairs):
            hist[g] = hist.get(g, 0) + 1
        lines += histogram(hist)
    return "\n".join(lines)


# ------------------------------------------------------------------ curriculum inspection

def check_measure_here(cfg: TrainConfig, args: argparse.Namespace) -> str:
    """``curriculum.difficulty``, if `pairs` can measure it (the flags it needs given)."""
    name = check_measure(cfg.curriculum.difficulty)
    if name == "dynamic":
        raise CurryError("difficulty 'dynamic' is measured by the policy during training; use `currydpo train`")
    if name == "reward-margin" and not cfg.curriculum.reward_model:
        raise CurryError("difficulty 'reward-margin' needs --reward-model PATH")
    return name


def reference_logps(cfg: TrainConfig, data: Prepared) -> dict[tuple[int, int], float]:
    """The reference model's (``model.path``, i.e. --model) summed log-prob of every response of the pairs,
    tokenised and scored by the rule `train` uses (`training.tokenize.encode_for`, `training.responses.Scorer`
    with the config's LM-head kernel)."""
    from ..device import default_device
    from ..training.model import load_model, load_tokenizer
    from ..training.responses import ResponseTable, Scorer
    from ..training.tokenize import encode_for

    m, device = cfg.model, default_device()
    tok = load_tokenizer(m.path, m.trust_remote_code)
    model = load_model(m.path, m, device)
    scorer = Scorer.for_model(model, tok.pad_token_id, m.fused_logprobs, device, None, cfg.optim.batch_size * 2,
                              cfg.run.progress)
    table = ResponseTable.from_pairs(data.train_pairs + data.eval_pairs, encode_for(tok, data.records, cfg.data,
                                                                                   progress=cfg.run.progress))
    lp, _ = scorer.score(model, table, list(range(len(table.keys))), desc="reference log-probs")
    return dict(zip(table.keys, lp.tolist()))


def selection_report(kept: set[int], n: int, stages: list[Stage] | None, fraction: float) -> str:
    lines = [f"selection (ref-margin, keep {fraction:.0%}): {len(kept)}/{n} pairs kept"]
    for s in stages or []:
        k = sum(1 for i in s.pairs if i in kept)
        lines.append(f"  stage {s.index + 1}: {k:6d}/{len(s.pairs)} kept ({k / max(1, len(s.pairs)):.0%})  {s.label}")
    return "\n".join(lines)


def stage_report(pairs: list[Pair], stages: list[Stage], name: str) -> str:
    lines = [f"stage plan ({name}, easy -> hard unless the schedule says otherwise)"]
    for s in stages:
        lo, hi = s.difficulty_range(pairs, name)
        extra = f", admits {s.admit_fraction:.0%} by current loss" if s.admit_fraction is not None else ""
        lines.append(f"  stage {s.index + 1}: {len(s.pairs):6d} pairs  difficulty [{lo:.3g}, {hi:.3g}]  "
                     f"{s.label}{extra}")
    return "\n".join(lines)


def plot_stages(path: str, pairs: list[Pair], stages: list[Stage], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    values = [[pairs[i].difficulty[name] for i in s.pairs] for s in stages]
    ax.hist(values, bins=30, stacked=True, label=[f"stage {s.index + 1}: {s.label}" for s in stages])
    ax.set_xlabel(f"difficulty ({name}; higher = harder)")
    ax.set_ylabel("pairs")
    ax.legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise CurryError(f"--limit must be >= 1, got {args.limit}")
    if args.stages is not None and args.stages < 1:
        raise CurryError(f"--stages must be >= 1, got {args.stages}")
    cfg = pairs_config(args)
    quiet_bars(cfg.run.progress)
    cfg.data.path = args.data or cfg.data.path
    if not cfg.data.path:
        raise CurryError("no data: give DATA, or --config with a data.path")
    show_plan = args.schedule is not None or args.config is not None or any(
        o.startswith("curriculum.") for o in args.overrides)
    name = check_measure_here(cfg, args) if (args.difficulty or show_plan or args.select) else None
    wants_model = cfg.data.select != "none" or name == "ref-logratio"
    if wants_model and not args.model:
        what = "--select ranks pairs by their reference log-prob margin: it" if args.select else \
            "difficulty 'ref-logratio'"
        raise CurryError(f"{what} needs --model PATH")
    data = prepare(cfg, require_pairs=False)  # the pairs train builds: same held-out split, builder, difficulty
    pairs = list(data.train_pairs)
    stages, kept = None, None
    if name and pairs:  # model-based difficulty, selection and the stages, as train plans them (pipeline.plan)
        plan(cfg, data, reference_logps(cfg, data) if wants_model else None)
        stages = data.stages if show_plan else None
        if args.select:
            kept = {id(p) for p in data.train_pairs}
    rows = list(pair_rows(data.records, pairs, args.trl))
    if name and not args.trl:
        stage_of = {id(data.train_pairs[i]): s.index + 1 for s in stages or [] for i in s.pairs}
        for row, pair in zip(rows, pairs):
            row["difficulty"] = dict(pair.difficulty)  # only what was measured
            if stages:
                row["stage"] = stage_of.get(id(pair))
    if kept is not None and not args.trl:
        for row, pair in zip(rows, pairs):
            row["selected"] = id(pair) in kept
    write_jsonl(args.out, rows)
    print(summary(data, pairs, args.out))
    if not pairs:
        print("warning: no pairs were made (all responses tied, or --min-gap too large); "
              "try --allow-ties or a smaller --min-gap", file=sys.stderr)
    if stages:
        print(stage_report(data.train_pairs, stages, name))
        plot = args.plot or str(args.out).rsplit(".", 1)[0] + ".stages.png"
        plot_stages(plot, data.train_pairs, stages, name)
        print(f"difficulty histogram by stage -> {plot}")
    if kept is not None:  # per stage of the plan over every pair: which difficulties the selection drops
        everything = stage_plan(cfg, pairs) if show_plan else None
        print(selection_report({i for i, p in enumerate(pairs) if id(p) in kept}, len(pairs), everything,
                               cfg.data.select_fraction))
    return 0
