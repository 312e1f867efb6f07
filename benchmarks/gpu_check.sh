#!/usr/bin/env bash
# The prepared GPU check (issue #12): one script, at most ~8 minutes on one GPU, that prints a
# table and writes it to OUT/gpu_check.md (each check's raw output stays under OUT/).
#
#   benchmarks/gpu_check.sh --out gpu-check              # on a CUDA GPU (the numbers that count)
#   benchmarks/gpu_check.sh --device cpu --tiny --out /tmp/gc   # seconds-long smoke run (CI:
#                                                        # tests/experiments/test_gpu_check.py)
#
# Checks:
#   1. Curry-DPO, 3 iterative stages, on the bench's ~0.5B random-init Llama in bf16 mixed
#      precision: pairs/s, tokens/s, MFU against the bf16 matmul peak measured on this GPU,
#      peak GPU memory (torch.cuda.max_memory_allocated);
#   2. the same work with TRL's DPOTrainer (bf16=True, precompute_ref_log_probs, its GPU
#      defaults) and the ratios;
#   3. first-batch per-pair losses in bf16 mixed precision against fp32 (max relative difference).
# Each check is one invocation that prints table rows "| check | value | target | verdict |"
# on stdout; add a check by adding one invocation in the marked section below.
#
# Options: --out DIR (or DIR as the only argument), --device cuda|cpu (default cuda),
# --tiny (tiny model and data: checks that the script runs, numbers mean nothing),
# --prompts N (prompts x 4 responses for the 0.5B run; default 96 -> 3 stages of 96 pairs; keep N a
# multiple of the bench's batch of 8 so both trainers see exactly the same pairs).
# Environment: PYTHON (default python) with currydpo's dev dependencies (trl) installed.
# Exit status 1 when a check fails or misses its target (verdict FAIL), else 0.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python}"
OUT="" DEVICE=cuda TINY=0 PROMPTS=96
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --prompts) PROMPTS="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) OUT="$1"; shift ;;
  esac
done
if [[ -z "$OUT" ]]; then echo "gpu_check.sh: give an output directory: --out DIR" >&2; exit 2; fi
mkdir -p "$OUT"
TABLE="$OUT/gpu_check.md"
# What the checks below share: the device, and either the tiny size or the real one.
if [[ $TINY == 1 ]]; then SIZE=(--quick); TINY_FLAG=(--tiny); else SIZE=(--sizes 0.5b --prompts "$PROMPTS"); TINY_FLAG=(); fi
START=$SECONDS

# run_check NAME CMD...: run one check, its rows go to the table, its full output to OUT/NAME.log.
run_check() {
  local name="$1"; shift
  local t=$SECONDS
  echo "== $name" >&2
  if "$@" > "$OUT/$name.rows" 2> "$OUT/$name.log"; then
    cat "$OUT/$name.rows" >> "$TABLE"
  else
    echo "| $name | failed (exit $?; see $OUT/$name.log) | - | FAIL |" >> "$TABLE"
    tail -5 "$OUT/$name.log" >&2
  fi
  echo "   $((SECONDS - t)) s" >&2
}

{
  echo "# gpu_check ($(date -u +%Y-%m-%dT%H:%MZ), device $DEVICE$([[ $TINY == 1 ]] && echo ', tiny: smoke run, numbers mean nothing'))"
  echo
  "$PY" -m currydpo.experiments.gpu_check header
} > "$TABLE"

# Checks 1-3: one `currydpo bench` run (bf16 mixed precision for both trainers), then its rows.
bench_rows() {
  "$PY" -m currydpo.experiments.bench --device "$DEVICE" --dtype bf16 "${SIZE[@]}" \
    --arms check,trl-iterative,ours-iterative --out "$OUT/bench" >&2 &&
  "$PY" -m currydpo.experiments.gpu_check rows "$OUT/bench/bench.json"
}
run_check curry-vs-trl bench_rows

# ---- more checks: one invocation each, printing "| check | value | target | verdict |" rows ------
# Use "$PY", "$DEVICE", "${TINY_FLAG[@]}" (--tiny or nothing) and write scratch files under "$OUT".
# For example (not built yet):
#   run_check flex-vs-sdpa  "$PY" -m currydpo.experiments.attention_bench --device "$DEVICE" "${TINY_FLAG[@]}" --rows
# vLLM vs hf generation (online stages, eval): answers/s; the vLLM row is SKIP without CUDA or the vllm extra.
run_check vllm-vs-hf "$PY" -m currydpo.experiments.generation_bench --device "$DEVICE" "${TINY_FLAG[@]}" \
  --out "$OUT/generation"
# ---- end of more checks ----------------------------------------------------------------------------

echo >> "$TABLE"
echo "total: $((SECONDS - START)) s" >> "$TABLE"
cat "$TABLE"
if grep -q "| FAIL |" "$TABLE"; then exit 1; fi
