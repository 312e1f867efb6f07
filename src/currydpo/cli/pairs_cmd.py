"""`currydpo pairs DATA --out pairs.jsonl`: load rated data, build preference pairs, write them.

The work is three small steps so later flags (difficulty, schedule) slot in between:
`load(args)` -> `make_pairs(records, args)` -> `write_pairs(...)`, then `summary(...)`.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Iterator

from ..data.formats import FORMATS, SCORES
from ..data.loading import ON_BAD_ROW, LoadResult, load_records
from ..data.pairs import BUILDERS, Pair, build_pairs
from ..data.records import Record, Text
from ..errors import CurryError
from ..io import write_jsonl


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pairs", help="build preference pairs from rated responses",
        description="Read rated responses (a local file, directory or glob, or a Hub dataset name), "
                    "build (chosen, rejected) pairs per prompt and write them as JSON lines.")
    p.add_argument("data", metavar="DATA", help="local .jsonl/.json/.parquet/.csv file, directory or glob; "
                                                "or a Hugging Face Hub dataset name")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMATS,
                   help="source layout (default: auto-detect from the first row's keys)")
    p.add_argument("--split", default="train", help="Hub split to read (default: train)")
    p.add_argument("--subset", default=None, help="Hub dataset configuration / subset name")
    p.add_argument("--score", default="mean-aspects", choices=SCORES,
                   help="UltraFeedback score: mean of the aspect ratings (1..5, the paper's) or overall_score")
    p.add_argument("--strategy", default="best-vs-rest", choices=tuple(BUILDERS),
                   help="pair builder (default: best-vs-rest, the Curry-DPO pairs)")
    p.add_argument("--min-gap", type=float, default=0.0,
                   help="drop pairs whose score gap is below this (default: 0, keep all)")
    p.add_argument("--allow-ties", action="store_true", help="also pair responses with equal scores")
    p.add_argument("--seed", type=int, default=0, help="random seed for best-vs-random (default: 0)")
    p.add_argument("--on-bad-row", default="error", choices=ON_BAD_ROW,
                   help="stop at the first bad row (error, default) or count and skip it (skip)")
    p.add_argument("--limit", type=int, default=None, help="read at most this many prompts")
    p.add_argument("--out", required=True, help="output JSON lines file, written atomically")
    p.add_argument("--trl", action="store_true",
                   help="write only TRL's prompt/chosen/rejected columns (conversational form for chat data)")
    return p


# ----------------------------------------------------------------------------- steps

def load(args: argparse.Namespace) -> LoadResult:
    return load_records(args.data, args.format, split=args.split, subset=args.subset, score=args.score,
                        on_bad_row=args.on_bad_row, limit=args.limit)


def make_pairs(records: list[Record], args: argparse.Namespace) -> list[Pair]:
    return build_pairs(records, args.strategy, min_gap=args.min_gap, allow_ties=args.allow_ties, seed=args.seed)


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


def summary(result: LoadResult, pairs: list[Pair], out: str) -> str:
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


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise CurryError(f"--limit must be >= 1, got {args.limit}")
    result = load(args)
    pairs = make_pairs(result.records, args)
    write_jsonl(args.out, pair_rows(result.records, pairs, args.trl))
    print(summary(result, pairs, args.out))
    return 0
