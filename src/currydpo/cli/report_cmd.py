"""`currydpo report`: re-render a comparison's reports, or a markdown file's result blocks, from results.json."""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report", help="re-render a compare/demo directory's reports (or README blocks) from its results.json",
        description="Every number we ship comes from a shipped file. `currydpo report DIR` writes DIR's results.md, "
                    "frontier.md and plots again from DIR/results.json alone (no model, no run directories); "
                    "`--block NAME` prints one rendering (table | head | summary | budget | budget-table | matched | "
                    "matched-table | finals); `--sync FILE` "
                    "rewrites every `<!-- generated: currydpo report DIR --block NAME -->` block of FILE.",
    )
    p.add_argument("directory", nargs="?", help="a compare or demo output directory (or its copy under docs/)")
    p.add_argument("--block", help="print this rendering of DIR instead of rewriting its files")
    p.add_argument("--sync", nargs="+", metavar="FILE", help="rewrite the generated blocks of these markdown files")
    return p


def run(args) -> int:
    from ..errors import CurryError
    from ..experiments.regenerate import block, rerender, sync

    if args.sync:
        for path in args.sync:
            print(f"{path}: {sync(path)} block(s) rendered")
        return 0
    if not args.directory:
        raise CurryError("give a directory (currydpo report DIR) or --sync FILE")
    if args.block:
        print(block(args.directory, args.block), end="")
        return 0
    report = rerender(args.directory)
    print(report["markdown"])
    return 0
