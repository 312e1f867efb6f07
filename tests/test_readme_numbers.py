"""Every number in the README's results comes from a shipped results file, and every shipped report re-renders
from its results.json: a table edited by hand, or a file that drifted from its data, fails here."""

import glob
import os
import re
import shutil

import pytest

from currydpo.experiments.regenerate import BLOCK, rerender, stale_blocks

ROOT = os.path.join(os.path.dirname(__file__), "..")
SHIPPED = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(ROOT, "docs", "**", "results.json"),
                                                       recursive=True))
DOCS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+\.\d+")


def test_results_are_shipped():
    assert SHIPPED, "no docs/**/results.json: the README's results must come from shipped files"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_generated_blocks_match_their_results_file(doc, monkeypatch):
    monkeypatch.chdir(ROOT)  # block directories are relative to the repository root
    assert stale_blocks(doc) == [], f"run: currydpo report --sync {os.path.relpath(doc, ROOT)}"


@pytest.mark.parametrize("directory", SHIPPED, ids=lambda p: os.path.relpath(p, ROOT))
def test_shipped_reports_rerender_from_their_results_json(directory, tmp_path):
    shutil.copy(os.path.join(directory, "results.json"), tmp_path / "results.json")
    rerender(str(tmp_path))
    for name in ("results.md", "frontier.md"):
        if os.path.exists(os.path.join(directory, name)):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                assert (tmp_path / name).read_text() == f.read(), f"run: currydpo report {directory}"


def test_every_number_in_the_readme_results_is_in_a_generated_block():
    """Between <!-- results --> and <!-- /results -->, a number outside a generated block (in prose) must be one
    that a generated block of the README shows."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    sections = re.findall(r"<!-- results -->(.*?)<!-- /results -->", text, re.S)
    assert sections, "the README marks its results sections with <!-- results --> ... <!-- /results -->"
    shown = " ".join(m.group(4) for m in BLOCK.finditer(text))
    shown_numbers = set(NUMBER.findall(shown))
    for section in sections:
        prose = re.sub(r"```.*?```", "", BLOCK.sub("", section), flags=re.S)
        missing = [n for n in NUMBER.findall(prose) if n not in shown_numbers and n.lstrip("+-") not in shown]
        assert not missing, f"README results prose cites numbers no generated block shows: {missing}"


def test_the_readme_headline_matches_the_shipped_verdicts(monkeypatch):
    """The README says no arm is separated from single-pair: every paired verdict in both shipped frontiers is
    'level'. If a re-run finds an arm ahead or behind, this fails until the sentence is redrawn."""
    from currydpo.experiments.regenerate import block

    monkeypatch.chdir(ROOT)
    with open("README.md", encoding="utf-8") as f:
        readme = f.read()
    claim = "no arm is separated from single-pair DPO at any KL budget"
    verdicts = [block(f"docs/demo_frontier/{regime}", "summary") for regime in ("pool", "self")]
    all_level = all(", ahead)" not in v and ", behind)" not in v and ", level)" in v for v in verdicts)
    assert (claim in readme) == all_level, "redraw the README's verdict from docs/demo_frontier/*/frontier.md"
