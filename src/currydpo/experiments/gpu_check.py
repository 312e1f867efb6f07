"""Rows of the table `benchmarks/gpu_check.sh` prints, from one `currydpo bench` result.

Every check of that script prints markdown rows ``| check | value | target | verdict |`` on
stdout; this module makes the rows of the Curry-DPO vs TRL run (``rows BENCH_JSON``).
Verdicts are given only for the run the targets are about (``0.5b`` on CUDA); a ``--tiny``
CPU run checks that the script works, its numbers mean nothing.
"""

from __future__ import annotations

import json
import sys

HEADER = ["| check | value | target | verdict |", "|---|---|---|---|"]
TARGETS = {"speedup": 2.0, "mfu": 0.40, "gpu_mem_ratio": 1.0, "bf16_vs_fp32": 1e-2}  # issue #12


def _verdict(ok: bool, judged: bool) -> str:
    return ("PASS" if ok else "FAIL") if judged else "-"


def _arm(a: dict) -> str:
    mem = f", peak GPU {a['peak_gpu_mb'] / 1024:.2f} GiB" if "peak_gpu_mb" in a else ""
    return (f"{a['pairs_per_s']:.2f} pairs/s, {a['tokens_per_s']:.0f} tokens/s, MFU {100 * a['mfu']:.1f}%"
            f"{mem} ({a['pairs']} pairs, {a['seconds']:.0f} s)")


def bench_rows(result: dict) -> list[str]:
    """Rows for Curry-DPO (3 stages) vs TRL, MFU, peak GPU memory and bf16 vs fp32 losses."""
    rows = []
    for size, s in result["sizes"].items():
        judged = result["device"] == "cuda" and size == "0.5b"
        arms, tag = s["arms"], f"{size} {result['dtype']}"
        peak = f"measured {result['dtype']} matmul peak {result['matmul_peak_flops'] / 1e12:.3g} TFLOP/s"
        if "ours-iterative" in arms:
            o = arms["ours-iterative"]
            rows.append(f"| Curry-DPO 3 stages, {tag} | {_arm(o)} | MFU >= {TARGETS['mfu']:.0%} of the {peak} | "
                        f"{_verdict(o['mfu'] >= TARGETS['mfu'], judged)} |")
        if "memory" in arms.get("ours-iterative", {}):  # what the memory policy chose on this device
            m = arms["ours-iterative"]["memory"]
            bound = m.get("max_tokens_per_micro_batch")
            rows.append(f"| memory policy chosen (ours), {tag} | micro-batches of at most {bound or 'unbounded'} "
                        f"tokens, gradient checkpointing {'on' if m['gradient_checkpointing'] else 'off'} "
                        f"({m['activation_gb']:.2f} GB activations vs {m['memory_budget_gb']:.2f} GB budget), "
                        f"attention {m['attention']} | logged | - |")
        if "trl-iterative" in arms:
            rows.append(f"| TRL DPOTrainer, same 3 stages, {tag} | {_arm(arms['trl-iterative'])} | baseline | - |")
        if "speedup_vs_trl" in arms.get("ours-iterative", {}):
            x = arms["ours-iterative"]["speedup_vs_trl"]
            rows.append(f"| pairs/s, ours / TRL, {tag} | {x:.2f}x | >= {TARGETS['speedup']:.1f}x | "
                        f"{_verdict(x >= TARGETS['speedup'], judged)} |")
        if "gpu_mem_ratio_vs_trl" in arms.get("ours-iterative", {}):
            m = arms["ours-iterative"]["gpu_mem_ratio_vs_trl"]
            rows.append(f"| peak GPU memory, ours / TRL, {tag} | {m:.2f} | <= {TARGETS['gpu_mem_ratio']:.1f} | "
                        f"{_verdict(m <= TARGETS['gpu_mem_ratio'], judged)} |")
        c = arms.get("check", {})
        if "max_rel_diff_bf16_vs_fp32" in c:
            d = c["max_rel_diff_bf16_vs_fp32"]
            rows.append(f"| first-batch per-pair losses, bf16 mixed vs fp32 (max rel. diff), {size} | {d:.1e} | "
                        f"<= {TARGETS['bf16_vs_fp32']:.0e} | {_verdict(d <= TARGETS['bf16_vs_fp32'], judged)} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["header"]:
        print("\n".join(HEADER))
        return 0
    if len(argv) != 2 or argv[0] != "rows":
        print("usage: python -m currydpo.experiments.gpu_check header | rows BENCH_JSON", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        print("\n".join(bench_rows(json.load(f))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
