"""`currydpo compare`: a grid of arms × seeds through train + evaluate, one table and plots."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "compare", help="run a grid of arms x seeds (train + evaluate) and tabulate them",
        description="Run every arm of a compare spec (YAML: base, arms or grid, seeds, eval) for every seed, "
                    "resumably, then write results.md / results.json and PNG plots. See examples/compare.yaml.",
    )
    p.add_argument("spec", help="compare spec YAML")
    p.add_argument("--out", help="output directory (default: the spec's output_dir)")
    p.add_argument("--seeds", help="comma-separated seeds, overriding the spec's (e.g. 1,2,3)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with models to run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def print_report(report: dict, output_dir: str) -> None:
    print(report["markdown"])
    print(f"written: {output_dir}/results.md, results.json, " + ", ".join(
        p.rsplit("/", 1)[-1] for p in report["plots"]))


def run(args) -> int:
    from ..experiments.compare import load_spec, run_compare

    spec = load_spec(args.spec, args.out)
    if args.seeds:
        spec.seeds = [int(s) for s in args.seeds.split(",")]
    spec.trust_remote_code = args.trust_remote_code
    report = run_compare(spec, progress=not args.no_progress)
    print_report(report, spec.output_dir)
    return 0
