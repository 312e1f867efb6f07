"""benchmarks/memory.py runs its listwise arms end to end on the tiny model, so the benchmark cannot rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "memory.py"
DATA = os.path.join(SHARED_DATA, "oasst_en_100_tree.jsonl")


@pytest.mark.skipif(not os.path.exists(DATA), reason="shared data absent")
def test_listwise_arms_run_and_count_lists_as_their_pairs(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_model_dir), "--data", DATA,
                           "--arms", "pro-before,pro-after", "--trees", "4", "--updates", "1", "--max-length", "48",
                           "--out", str(out)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(SCRIPT.parents[1] / "src")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "memory.json").read_text())
    for name in ("pro-before", "pro-after"):
        r = results[name]
        assert r["unit"] == "list" and r["items_per_update"] == 4
        assert r["pairs_per_update"][0] > 4  # 4 lists of 2 or more answers stand for more than 4 pairs
        assert r["pairs_per_s"] == pytest.approx(r["pairs_per_update"][0] / r["step_seconds"][0])
    assert results["pro-before"]["memory"]["max_tokens_per_micro_batch"] is None
    assert results["pro-after"]["memory"]["max_tokens_per_micro_batch"] == 768
    row = next(line for line in (out / "memory.md").read_text().splitlines() if line.startswith("| pro-after |"))
    ratio = results["pro-after"]["peak_rss_mb"] / results["pro-before"]["peak_rss_mb"]
    assert row.split(" | ")[3] == f"{ratio:.2f}x"  # compared with the same loss's levers-off arm
