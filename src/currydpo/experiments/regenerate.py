"""Every shipped number from a shipped file: re-render a comparison's reports, and the README's result blocks,
from its ``results.json`` alone (`currydpo report`).

A comparison directory (``compare`` or ``demo`` output, or a copy of it under ``docs/``) keeps every per-seed
result in ``results.json``. `rerender` writes results.md, frontier.md and the plots again from it, without any
model or run directory. A markdown file embeds renderings between two markers::

    <!-- generated: currydpo report docs/demo_frontier/pool --block budget -->
    ...
    <!-- end generated -->

`sync` rewrites every such block from its directory's results.json, and `stale_blocks` lists the blocks that
differ (tests/test_readme_numbers.py fails on any), so a table in the README cannot drift from its file.
"""

from __future__ import annotations

import json
import os
import re

from ..errors import CurryError
from ..io import write_json, write_text
from .demo import stages_report
from .frontier import frontier_sections
from .report import aggregate, markdown, write_report

BLOCK = re.compile(r"(<!-- generated: currydpo report (\S+) --block (\S+) -->\n)(.*?)(<!-- end generated -->)",
                   re.S)


def load_results(directory: str) -> dict:
    path = os.path.join(directory, "results.json")
    if not os.path.exists(path):
        raise CurryError(f"{path}: not found; `currydpo report` re-renders a compare or demo output directory "
                         "(the one holding its results.json)")
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if not isinstance(saved, dict) or not isinstance(saved.get("results"), list):
        raise CurryError(f"{path}: field 'results': expected the per-seed results a compare writes")
    return saved


def rerender(directory: str) -> dict:
    """results.md, frontier.md and the plots of ``directory`` written again from its results.json alone."""
    saved = load_results(directory)
    arms = [r["arm"] for r in saved.get("rows", [])] or list(dict.fromkeys(r["arm"] for r in saved["results"]))
    report = write_report(directory, saved["results"], arms, notes=saved.get("notes"))
    stages = saved.get("demo_stages")
    if stages:  # the demo's per-stage tables, from what the demo measured on its world
        extra = stages_report(stages, saved["results"])
        write_text(os.path.join(directory, "results.md"), markdown_of(directory) + "\n" + extra)
        write_json(os.path.join(directory, "results.json"), {**load_results(directory), "demo_stages": stages})
        report["markdown"] += "\n" + extra
    return report


def markdown_of(directory: str) -> str:
    with open(os.path.join(directory, "results.md"), encoding="utf-8") as f:
        return f.read()


def block(directory: str, name: str) -> str:
    """One rendering of ``directory``'s results.json: ``table`` (each arm's final models), or a frontier section
    (``budget``: best reward within each KL budget; ``matched``: reward at matched KL; ``finals``: per swept
    value)."""
    saved = load_results(directory)
    if name == "table":
        rows = aggregate(saved["results"], [r["arm"] for r in saved.get("rows", [])]
                         or list(dict.fromkeys(r["arm"] for r in saved["results"])))
        lines = markdown(rows).split("\n")
        return "\n".join(lines[:next(i for i, line in enumerate(lines) if not line.startswith("|"))]) + "\n"
    sections = frontier_sections(saved["results"])
    if name not in sections:
        raise CurryError(f"{directory}: no block {name!r}; choose one of: table, {', '.join(sections)}")
    return sections[name]


def render_blocks(text: str, root: str = ".") -> str:
    """``text`` with every generated block rendered again from its directory (relative to ``root``)."""
    return BLOCK.sub(lambda m: m.group(1) + block(os.path.join(root, m.group(2)), m.group(3)) + m.group(5), text)


def stale_blocks(path: str, root: str = ".") -> list[str]:
    """The generated blocks of ``path`` whose text differs from a fresh rendering: ``DIR --block NAME`` each."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [f"{m.group(2)} --block {m.group(3)}" for m in BLOCK.finditer(text)
            if m.group(4) != block(os.path.join(root, m.group(2)), m.group(3))]


def sync(path: str, root: str = ".") -> int:
    """Rewrite every generated block of ``path`` (atomically); returns how many blocks it holds."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    write_text(path, render_blocks(text, root))
    return len(BLOCK.findall(text))
