"""benchmarks/gpu_check.sh runs end to end on CPU with --tiny, so the GPU script cannot rot."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from currydpo.experiments.gpu_check import bench_rows

pytest.importorskip("trl")
SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "gc"
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "gpu_check.md").read_text()
    assert table in proc.stdout
    for row in ("| Curry-DPO 3 stages, tiny bf16 |", "| TRL DPOTrainer, same 3 stages, tiny bf16 |",
                "| pairs/s, ours / TRL, tiny bf16 |", "| first-batch per-pair losses, bf16 mixed vs fp32"):
        assert row in table
    assert "FAIL" not in table and "| - |" in table  # no verdicts off the GPU
    assert "| memory policy chosen (ours), tiny bf16 | micro-batches of at most 768 tokens" in table  # auto on CPU
    result = json.loads((out / "bench" / "bench.json").read_text())
    assert result["dtype"] == "bf16"
    arms = result["sizes"]["tiny"]["arms"]
    assert arms["ours-iterative"]["pairs"] == arms["trl-iterative"]["pairs"]  # the same work
    assert arms["check"]["max_rel_diff_bf16_vs_fp32"] < 1e-2


def test_gpu_check_needs_an_output_dir():
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--out DIR" in proc.stderr


def test_rows_give_verdicts_only_for_the_gpu_run():
    arm = {"pairs": 288, "seconds": 10.0, "pairs_per_s": 28.8, "tokens_per_s": 9000.0, "mfu": 0.45,
           "peak_gpu_mb": 20000.0}
    ours = dict(arm, speedup_vs_trl=2.5, gpu_mem_ratio_vs_trl=1.1)
    result = {"device": "cuda", "dtype": "bf16", "matmul_peak_flops": 7e14, "sizes": {"0.5b": {"arms": {
        "ours-iterative": ours, "trl-iterative": arm, "check": {"max_rel_diff_bf16_vs_fp32": 3e-3}}}}}
    rows = bench_rows(result)
    assert rows[0].endswith("| PASS |") and "peak GPU 19.53 GiB" in rows[0]  # MFU 45% >= 40%
    assert [r.split("|")[-2].strip() for r in rows] == ["PASS", "-", "PASS", "FAIL", "PASS"]  # memory 1.1 > 1.0
    result["device"] = "cpu"
    assert all(r.endswith("| - |") for r in bench_rows(result))
