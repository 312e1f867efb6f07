"""`currydpo bench --quick` keeps working (no timing assertions: CPU timings here are noise)."""

import json
import math
import os

import pytest

from currydpo.cli import main
from currydpo.experiments.bench import _trained, make_records, markdown

pytest.importorskip("trl")


def test_records_are_ultrafeedback_shaped():
    recs = make_records(6, seed=0)
    assert all(len(r.responses) == 4 for r in recs)
    assert all(len({x.score for x in r.responses}) == 4 for r in recs)  # no ties: 3 best-vs-rest pairs each
    lengths = [len(x.text.split()) for r in recs for x in r.responses]
    assert max(lengths) > 2 * min(lengths)  # a realistic length spread


def test_pairs_count_distinct_pairs_not_wrap_around_repeats():
    # 3 pairs, the last update wrapped around to the first pair: 3 pairs trained, 4 visits
    t = _trained([(0, 0, 3), (0, 0, 2), (0, 0, 1), (0, 0, 3)], 0.69)
    assert (t["pairs"], t["pair_visits"], t["pair_keys"]) == (3, 4, [[0, 0, 1], [0, 0, 2], [0, 0, 3]])


def test_bench_quick(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--arms", "trl-single,ours-single", "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    arms = result["sizes"]["tiny"]["arms"]
    assert set(arms) == {"trl-single", "ours-single"}
    ours, trl = arms["ours-single"], arms["trl-single"]
    # Both arms trained the same pairs, counted where each trains them, each pair once.
    assert ours["pair_keys"] == trl["pair_keys"] and len(ours["pair_keys"]) == ours["pairs"] == trl["pairs"]
    assert ours["pairs"] == result["sizes"]["tiny"]["model"]["pairs"] == 24  # 8 prompts x 3 best-vs-rest pairs
    assert ours["pair_visits"] == trl["pair_visits"] == 24  # 24 = 3 batches of 8: no wrap-around repeats
    # Same loss on the first batch: DPO with the policy as its own reference gives log 2 per pair on both sides
    # (a wrong reference, beta or reduction on either side would show here).
    assert abs(ours["first_batch_loss"] - trl["first_batch_loss"]) < 1e-5
    assert abs(ours["first_batch_loss"] - math.log(2)) < 1e-5
    assert "both arms trained the same pairs" in (out / "bench.md").read_text()
    table = (out / "bench.md").read_text()
    assert "ours-single" in table and table == markdown(result)
    assert os.path.isdir(out / "model-tiny")


def test_bench_rejects_bad_options(tmp_path, capsys):
    assert main(["bench", "--sizes", "7b", "--out", str(tmp_path)]) == 2
    assert "unknown benchmark size" in capsys.readouterr().err


def test_bench_check_arm_agrees_with_trl_in_float64(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--arms", "check", "--out", str(out)]) == 0
    check = json.loads((out / "bench.json").read_text())["sizes"]["tiny"]["arms"]["check"]
    assert len(check["trl_fp64"]) == len(check["ours_fp64"]) > 1
    assert check["max_rel_diff_fp64"] < 1e-5 and check["max_rel_diff_fp64_padded"] < 1e-5  # the criterion
    assert check["max_rel_diff_fp32"] < 1e-3  # fp32: summation order only
    assert "in float64 (target 1e-5)" in (out / "bench.md").read_text()


def test_bench_without_trl_is_a_one_line_error(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a))
    assert main(["bench", "--quick", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'currydpo[dev]'" in err[0]


def test_markdown_shows_peak_gpu_memory_when_measured():
    arm = {"pairs": 24, "seconds": 2.0, "pairs_per_s": 12.0, "tokens_per_s": 900.0, "peak_rss_mb": 900.0,
           "nominal_flops_per_s": 1e12, "mfu": 0.4, "peak_gpu_mb": 4096.0}
    result = {"trl_version": "x", "torch_version": "y", "device": "cuda", "dtype": "bf16", "gpu": "H100",
              "threads": 8, "prompts": 8, "batch_size": 8, "matmul_peak_flops": 2.5e12, "sizes": {"0.5b": {
                  "model": {"params": 4.4e8}, "arms": {"trl-iterative": arm, "ours-iterative": dict(
                      arm, speedup_vs_trl=2.0, rss_ratio_vs_trl=1.0, gpu_mem_ratio_vs_trl=0.5)}}}}
    table = markdown(result)
    assert "cuda bf16 (H100)" in table and "| peak GPU MB | GPU mem vs TRL |" in table
    assert table.splitlines()[5].endswith("| 4096 | 0.50 |")
    result["device"] = "cpu"
    for a in result["sizes"]["0.5b"]["arms"].values():
        del a["peak_gpu_mb"]
    assert "peak GPU" not in markdown(result)


def test_bench_measures_the_users_model(tiny_model_dir, tmp_path, capsys):
    """--model PATH: the user's own model instead of the random-init sizes, peak memory per arm reported."""
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--model", tiny_model_dir, "--arms", "ours-single", "--out", str(out)]) == 0
    result = json.loads((out / "bench.json").read_text())
    assert list(result["sizes"]) == ["model"]
    assert result["sizes"]["model"]["model"]["params"] > 0
    assert result["sizes"]["model"]["arms"]["ours-single"]["peak_rss_mb"] > 0
    assert not (out / "model-tiny").exists()  # nothing was built
    # the same --out again: the arms' scratch runs from the first call do not stop the second
    assert main(["bench", "--quick", "--model", tiny_model_dir, "--arms", "ours-single", "--out", str(out)]) == 0
    assert main(["bench", "--model", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "not a directory" in capsys.readouterr().err
