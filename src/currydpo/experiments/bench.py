"""Benchmark: currydpo against TRL's DPOTrainer on the same machine, model and data.

Arms (each in a fresh subprocess, so peak RSS is per arm):

- ``trl-single``: TRL DPOTrainer over all best-vs-rest pairs, one epoch;
- ``ours-single``: ``currydpo.training.loop.train``, schedule single-pass, reference initial;
- ``trl-iterative``: TRL run once per stage (stage k = pairs whose rejected response has
  rank 4, 3, 2), each run starting from the previous run's model, with that model as
  reference (``ref_model=None`` + ``precompute_ref_log_probs=True``: the reference log-probs
  are computed by the policy's own weights before training, i.e. by the previous stage);
- ``ours-iterative``: schedule iterative, 3 stages, reference previous-stage, optimiser
  restarted per stage (like three TRL runs).

TRL is configured fairly for the device: fp32 on CPU; with ``--dtype bf16`` (for a GPU) both run
bf16 mixed precision — fp32 weights and AdamW state, bf16 autocast: TRL's ``bf16=True`` and
our ``model.precision: bf16``; no gradient checkpointing on CPU (on a GPU TRL keeps its default,
on), ``precompute_ref_log_probs=True``, the same batch size, max_length, learning rate and
schedule, ``report_to="none"``, no intermediate saves; each
arm saves its final (per-stage) model like ours does. Every arm's time is the whole run
from raw records to a saved model: model load, tokenisation, reference log-probs, training,
saving. Every arm counts the pairs it actually trained (distinct pairs, and visits with
repeats) where it trains them, and records its first batch's loss.
A ``check`` arm compares per-pair losses of a first batch with TRL's (policy perturbed
away from the reference so the losses are not all log 2).

Run: ``currydpo bench --sizes 3m,30m --prompts 48 --out bench-out``; ``--quick`` is a
seconds-long configuration for tests. On a GPU: ``--device cuda --sizes 0.5b --dtype bf16``
(peak GPU memory, ``torch.cuda.max_memory_allocated``, is recorded per arm), or
``benchmarks/gpu_check.sh``, which runs that and the other GPU checks.
``--model PATH`` measures your own model (any HF causal LM directory) on the same data; each arm's
peak RSS (and peak GPU memory on CUDA) is in the table.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time

import torch

# model shapes for make_llama; "0.5b" is for a GPU run (--device cuda --dtype bf16)
SIZES = {
    "tiny": dict(hidden=32, layers=2, heads=2, vocab=512),
    "3m": dict(hidden=192, layers=6, heads=6, vocab=4096),
    "30m": dict(hidden=512, layers=8, heads=8, vocab=4096),
    "0.5b": dict(hidden=1024, layers=24, heads=16, vocab=32000),
}
ARMS = ["check", "trl-single", "ours-single", "trl-iterative", "ours-iterative"]
BATCH, LR, MAX_LENGTH, MAX_PROMPT = 8, 1e-4, 1024, 512


# ---------------------------------------------------------------- data and model

def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "da", "fi", "gu", "he", "ja", "qu", "ri",
            "st", "ar", "en", "on", "th", "ch", "ly", "ing", "er", "ed", "al", "ou", "ble"]
    return sorted({"".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(n)})


def make_records(n_prompts: int, seed: int = 0, quick: bool = False):
    """UltraFeedback-shaped records: 4 responses per prompt, distinct 1..5 scores, log-normal lengths.

    Prompt lengths ~ 40 words (median, 6..120), responses ~ 60 words (4..240): the spread
    of real preference data, where padding to the longest sequence of a batch is costly.
    """
    from ..data.records import Record, Response

    rng = random.Random(seed)
    vocab = _words(3000, seed)
    cap_p, cap_r = (20, 30) if quick else (120, 240)

    def text(median, lo, hi):
        n = int(min(hi, max(lo, rng.lognormvariate(math.log(median), 0.7))))
        return " ".join(rng.choice(vocab) for _ in range(n))

    recs = []
    for i in range(n_prompts):
        prompt = text(8 if quick else 40, 3, cap_p) + "?"
        scores = rng.sample([s / 4 for s in range(4, 21)], 4)
        resps = [Response(" " + text(10 if quick else 60, 2, cap_r) + ".", score=s) for s in scores]
        recs.append(Record(str(i), prompt, resps))
    return recs


def build_model(size: str, path: str, seed: int = 0) -> dict:
    """Random-init Llama of ``size`` + a BPE tokenizer trained on the benchmark's words; saved to ``path``."""
    from ..world.tiny import make_llama, make_tokenizer

    spec = SIZES[size]
    corpus = [" ".join(_words(3000, seed)[i:i + 50]) for i in range(0, 3000, 50)] * 2
    corpus += [r.prompt + "".join(x.text for x in r.responses) for r in make_records(200, seed + 1)]
    tok = make_tokenizer(corpus, vocab_size=spec["vocab"])
    tok.chat_template = None  # plain-text prompts, exactly as TRL tokenises them
    model = make_llama(tok, hidden=spec["hidden"], layers=spec["layers"], heads=spec["heads"],
                       max_positions=MAX_LENGTH + 8, seed=seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return {"params": sum(p.numel() for p in model.parameters()), "vocab": len(tok)}


def describe_model(path: str) -> dict:
    """Parameters and vocabulary of a user's model (``--model PATH``), counted on the meta device."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {"params": sum(p.numel() for p in model.parameters()), "vocab": len(AutoTokenizer.from_pretrained(path))}


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Measured dense matmul FLOP/s (best of ``reps``)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(reps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


# ---------------------------------------------------------------- arms (run in a child process)

def _cfg(args, schedule: str, out: str):
    from ..config import from_dict, validate

    return validate(from_dict({
        "model": {"path": args.model, "precision": args.dtype},
        "data": {"max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT, "chat_template": "never"},
        "curriculum": {"schedule": schedule, "stages": 3, "reference": "initial" if schedule == "single-pass"
                       else "previous-stage"},
        "optim": {"lr": LR, "batch_size": BATCH, "warmup_ratio": 0.0, "lr_schedule": "linear",
                  "across_stages": "restart"},
        "run": {"output_dir": out, "progress": False, "seed": 0},
    }))


def _stages(args, records):
    """Pair lists per stage, exactly as our iterative schedule splits them."""
    from ..pipeline import prepare, stage_plan

    cfg = _cfg(args, "iterative", os.path.join(args.work, "plan"))
    data = prepare(cfg, records)
    return [[data.train_pairs[i] for i in s.pairs] for s in stage_plan(cfg, data.train_pairs)]


def _trl_args(args, out: str, **kw):
    import trl

    cuda = args.device == "cuda"
    settings = dict(
        output_dir=out, report_to="none", use_cpu=not cuda, bf16=args.dtype == "bf16", fp16=False,
        beta=0.1, loss_type=["sigmoid"], per_device_train_batch_size=BATCH, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0, num_train_epochs=1,
        max_length=MAX_LENGTH, precompute_ref_log_probs=True, precompute_ref_batch_size=2 * BATCH,
        save_strategy="no", logging_steps=10 ** 6, disable_tqdm=True, seed=0, dataloader_num_workers=0)
    if not cuda:  # TRL turns gradient checkpointing on by default; on a GPU we keep its default, on CPU ours (off)
        settings["gradient_checkpointing"] = False
    return trl.DPOConfig(**{**settings, **kw})


def _trl_dataset(records, pairs):
    import datasets

    return datasets.Dataset.from_dict({
        "prompt": [records[p.record].prompt for p in pairs],
        "chosen": [records[p.record].responses[p.chosen].text for p in pairs],
        "rejected": [records[p.record].responses[p.rejected].text for p in pairs]})


def _load(args, dtype: str = "fp32"):
    """The benchmark model in ``dtype`` weights; bf16 mixed precision also loads fp32 weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = {"bf16": torch.float32, "fp32": torch.float32, "fp64": torch.float64}[dtype]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device)
    return model, AutoTokenizer.from_pretrained(args.model)


def _compute(args, dtype: str):
    """The forward-pass context of ``dtype``: bf16 autocast for bf16 mixed precision (as both trainers use)."""
    import contextlib

    return torch.autocast(args.device, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


def _trained(visits: list[tuple], first_loss: float | None) -> dict:
    """What an arm actually trained, counted as it trained: distinct pairs (the pairs/s numerator,
    the same on both sides), pair visits (wrap-around repeats included) and the first batch's loss."""
    keys = sorted(set(visits))
    return {"pairs": len(keys), "pair_visits": len(visits), "pair_keys": [list(k) for k in keys],
            "first_batch_loss": first_loss}


def arm_trl(args, records, stages) -> dict:
    """TRL once per stage; the pairs it trains are recorded in its collator, the first loss in compute_loss."""
    import trl

    from ..training.references import stage_name

    out = os.path.join(args.work, args.arm)
    t = time.perf_counter()  # the model load is inside the timer, as in ours (train() loads its model)
    model, tok = _load(args, args.dtype)  # fp32 weights; bf16=True adds autocast
    visits, first = [], []
    for k, pairs in enumerate(stages):
        trainer = trl.DPOTrainer(model=model, ref_model=None, args=_trl_args(args, f"{out}/run{k}"),
                                 train_dataset=_trl_dataset(records, pairs), processing_class=tok)
        _record_trl(trainer, pairs, visits, first)
        trainer.train()
        trainer.save_model(os.path.join(out, stage_name(k)))
        model = trainer.model
    seconds = time.perf_counter() - t
    return {"seconds": seconds, **_trained(visits, first[0] if first else None)}


def _record_trl(trainer, pairs, visits: list, first: list) -> None:
    """Wrap the trainer's collator (each training example it batches) and compute_loss (the first loss)."""
    def ids(row):
        return tuple(row["prompt_ids"]), tuple(row["chosen_ids"]), tuple(row["rejected_ids"])

    rows = trainer.train_dataset  # tokenised by TRL, in the order given
    assert len(rows) == len(pairs), "TRL dropped rows"  # only if max_length filtered some: never at 1024
    key_of = {ids(r): (p.record, p.chosen, p.rejected) for r, p in zip(rows, pairs)}
    collate, compute_loss = trainer.data_collator, trainer.compute_loss

    def recording_collate(examples):
        visits.extend(key_of[ids(e)] for e in examples)
        return collate(examples)

    def first_loss(model, inputs, *a, **kw):
        out = compute_loss(model, inputs, *a, **kw)
        if model.training and not first:
            first.append((out[0] if isinstance(out, tuple) else out).item())
        return out

    trainer.data_collator, trainer.compute_loss = recording_collate, first_loss


def arm_ours(args, records, schedule: str) -> dict:
    """Our trainer; the pairs it trains are recorded by an ``on_batch`` hook, the first loss from its log."""
    from ..training import loop

    out = os.path.join(args.work, args.arm)
    visits = []

    def record(run, update):
        visits.extend((p.record, p.chosen, p.rejected) for m in update.micro for p in run.objective.items(m))

    t = time.perf_counter()
    summary = loop.train(_cfg(args, schedule, out), records, hooks=loop.Hooks(on_batch=[record]))
    seconds = time.perf_counter() - t
    with open(os.path.join(out, "metrics.jsonl")) as f:
        first = json.loads(f.readline())["loss"]
    assert len(visits) == summary["total_updates"] * summary["pairs_per_update"]
    return {"seconds": seconds, "final_loss": summary["final_loss"], "memory": summary["memory"],
            **_trained(visits, first)}


def arm_check(args, records, stages) -> dict:
    """Per-pair DPO losses of one batch (policy perturbed from the reference): ours vs TRL's.

    Run with both models in float64 and in the arm's dtype (with ``--dtype bf16`` also in fp32,
    for ``max_rel_diff_bf16_vs_fp32``: our bf16 mixed-precision losses against our fp32 ones).
    Ours stays float64 in float64;
    TRL's fused LM head computes log-probs in float32 whatever the model dtype, so even the
    float64 agreement is bounded by float32 rounding of the sequence log-probs (~2.4e-4 nats
    at |log p| ~ 2000): ~5e-7 relative on short sequences, ~1e-5 on the benchmark's long ones.
    """
    import trl

    from ..losses import PairLogps, pair_loss
    from ..training.logprobs import response_logps
    from ..training.tokenize import encode

    pairs = [p for s in stages for p in s][:BATCH]
    out = {}
    for dtype in ("fp64", "fp32") + (("bf16",) if args.dtype == "bf16" else ()):
        policy, tok = _load(args, dtype)
        ref, _ = _load(args, dtype)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_((0.02 * torch.randn(p.shape, generator=g)).to(p))
        trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=_trl_check_args(args, dtype),
                                 train_dataset=_trl_dataset(records, pairs), processing_class=tok)
        trl_losses = []
        with torch.no_grad(), _compute(args, dtype):
            for row in trainer.train_dataset:
                trl_losses.append(trainer.compute_loss(trainer.model, trainer.data_collator([row])).item())
        enc = [encode(tok, records[p.record].prompt, records[p.record].responses[i].text, max_length=MAX_LENGTH,
                      max_prompt_length=MAX_PROMPT) for p in pairs for i in (p.chosen, p.rejected)]
        theirs = torch.tensor(trl_losses, dtype=torch.float64)
        out[f"trl_{dtype}"] = theirs.tolist()
        for packing in (True, False):
            with torch.no_grad(), _compute(args, dtype):
                lp, n = response_logps(policy.eval(), enc, tok.pad_token_id, packing=packing)
                rlp, _ = response_logps(ref.eval(), enc, tok.pad_token_id, packing=packing)
            x = PairLogps(lp[0::2], lp[1::2], n[0::2], n[1::2], rlp[0::2], rlp[1::2])
            ours = pair_loss("dpo", x, beta=0.1).per_item.double().cpu()
            tag = f"_{dtype}" + ("" if packing else "_padded")
            out["ours" + tag] = ours.tolist()
            out["max_rel_diff" + tag] = ((ours - theirs).abs() / theirs.abs().clamp_min(1e-12)).max().item()
            out["max_abs_diff" + tag] = (ours - theirs).abs().max().item()
            out["max_abs_logp" + tag] = lp.abs().max().item()
    if "ours_bf16" in out:
        b, f = torch.tensor(out["ours_bf16"]), torch.tensor(out["ours_fp32"])
        out["max_rel_diff_bf16_vs_fp32"] = ((b - f).abs() / f.abs().clamp_min(1e-12)).max().item()
    return out


def _trl_check_args(args, dtype: str):
    return _trl_args(args, os.path.join(args.work, "check"), precompute_ref_log_probs=False, bf16=dtype == "bf16")


def child(args) -> None:
    """Run one arm and print its JSON result (peak RSS of this process included)."""
    import psutil
    import trl  # noqa: F401  same import footprint in every arm

    from ..training import loop  # noqa: F401

    torch.manual_seed(0)
    records = make_records(args.prompts, seed=0, quick=args.quick)
    stages = _stages(args, records)
    rss0 = psutil.Process().memory_info().rss
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if args.arm == "check":
        res = arm_check(args, records, stages)
    elif args.arm.startswith("trl-"):
        res = arm_trl(args, records, [[p for s in stages for p in s]] if args.arm == "trl-single" else stages)
    else:
        res = arm_ours(args, records, "single-pass" if args.arm == "ours-single" else "iterative")
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["rss_before_mb"] = rss0 / 2 ** 20
    if args.device == "cuda":
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print("BENCH-RESULT " + json.dumps(res))


# ---------------------------------------------------------------- driver

def pair_tokens(model_dir: str, records) -> tuple[int, int]:
    """(pairs, tokens) of one pass over the best-vs-rest pairs: prompt+chosen+prompt+rejected per pair."""
    from transformers import AutoTokenizer

    from ..data.pairs import build_pairs
    from ..training.tokenize import encode_records

    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = encode_records(records, tok, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT, progress=False)
    pairs = build_pairs(records, "best-vs-rest")
    return len(pairs), sum(len(enc[p.record][p.chosen]) + len(enc[p.record][p.rejected]) for p in pairs)


def run_arm(args, size: str, model_dir: str, arm: str, work: str) -> dict:
    cmd = [sys.executable, "-m", "currydpo.experiments.bench", "--child", arm, "--model", model_dir, "--work", work,
           "--prompts", str(args.prompts), "--device", args.device, "--dtype", args.dtype] + (
        ["--quick"] if args.quick else [])
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH-RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"benchmark arm {arm} ({size}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(line[len("BENCH-RESULT "):])


def benchmark(args) -> dict:
    import trl

    os.makedirs(args.out, exist_ok=True)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    peak = matmul_peak(args.device, dtype, n=512 if args.quick else 8192 if args.device == "cuda" else 2048)
    result = {"trl_version": trl.__version__, "torch_version": torch.__version__, "device": args.device,
              "dtype": args.dtype, "threads": torch.get_num_threads(), "prompts": args.prompts,
              "batch_size": BATCH, "matmul_peak_flops": peak, "sizes": {}}
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    print(f"TRL {trl.__version__}, torch {torch.__version__}, {args.device} {args.dtype}, "
          f"{torch.get_num_threads()} threads, matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)
    for size in args.sizes:
        model_dir = args.model or os.path.join(args.out, f"model-{size}")
        info = describe_model(model_dir) if args.model else build_model(size, model_dir)
        records = make_records(args.prompts, seed=0, quick=args.quick)
        n_pairs, tokens = pair_tokens(model_dir, records)
        info.update(pairs=n_pairs, pair_tokens=tokens)
        arms, work = {}, os.path.join(args.out, f"work-{size}")
        shutil.rmtree(work, ignore_errors=True)  # the arms' scratch runs: a rerun into the same --out starts afresh
        for arm in args.arms:
            arms[arm] = run_arm(args, size, model_dir, arm, work)
            if arm != "check":
                a = arms[arm]
                a["pairs_per_s"] = a["pairs"] / a["seconds"]
                a["tokens_per_s"] = a["pairs_per_s"] * tokens / n_pairs
                # nominal work of a pair trainer: fwd+bwd (6N) + reference fwd (2N) per pair token
                a["nominal_flops_per_s"] = 8 * info["params"] * a["tokens_per_s"]
                a["mfu"] = a["nominal_flops_per_s"] / peak
            print(f"  {size} {arm}: {json.dumps(arms[arm])[:200]}", flush=True)
        for kind in ("single", "iterative"):
            if f"ours-{kind}" not in arms or f"trl-{kind}" not in arms:
                continue
            o, t = arms[f"ours-{kind}"], arms[f"trl-{kind}"]
            o["speedup_vs_trl"] = o["pairs_per_s"] / t["pairs_per_s"]
            o["rss_ratio_vs_trl"] = o["peak_rss_mb"] / t["peak_rss_mb"]
            if "peak_gpu_mb" in o and "peak_gpu_mb" in t:
                o["gpu_mem_ratio_vs_trl"] = o["peak_gpu_mb"] / t["peak_gpu_mb"]
        result["sizes"][size] = {"model": info, "arms": arms}
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = markdown(result)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(table)
    print(table)
    return result


def markdown(result: dict) -> str:
    gpu = any("peak_gpu_mb" in a for s in result["sizes"].values() for a in s["arms"].values())
    lines = [f"TRL {result['trl_version']}, torch {result['torch_version']}, {result['device']} {result['dtype']}"
             f"{' (' + result['gpu'] + ')' if 'gpu' in result else ''}, "
             f"{result['threads']} threads, batch {result['batch_size']} pairs, {result['prompts']} prompts x 4 "
             f"responses (best-vs-rest: 3 pairs/prompt); measured matmul peak "
             f"{result['matmul_peak_flops'] / 1e9:.1f} GFLOP/s.", "",
             "| size | params | arm | pairs | time s | pairs/s | tokens/s | vs TRL | peak RSS MB | RSS vs TRL "
             "| nominal GFLOP/s | nominal % peak |" + (" peak GPU MB | GPU mem vs TRL |" if gpu else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if gpu else "")]
    for size, s in result["sizes"].items():
        for arm in [a for a in ARMS[1:] if a in s["arms"]]:
            a = s["arms"][arm]
            lines.append(
                f"| {size} | {s['model']['params'] / 1e6:.1f}M | {arm} | {a['pairs']} | {a['seconds']:.1f} | "
                f"{a['pairs_per_s']:.2f} | {a['tokens_per_s']:.0f} | "
                f"{a.get('speedup_vs_trl', 1.0):.2f}x | {a['peak_rss_mb']:.0f} | "
                f"{a.get('rss_ratio_vs_trl', 1.0):.2f} | "
                f"{a['nominal_flops_per_s'] / 1e9:.2f} | {100 * a['mfu']:.1f} |"
                + (f" {a.get('peak_gpu_mb', math.nan):.0f} | {a.get('gpu_mem_ratio_vs_trl', 1.0):.2f} |"
                   if gpu else ""))
    lines.append("")
    lines.append("pairs = distinct pairs trained, counted as each arm trained them (the pairs/s numerator); "
                 "nominal % peak = nominal GFLOP/s over the measured matmul peak (work a pair trainer would do, "
                 "not the work done).")
    lines.append("")
    for size, s in result["sizes"].items():
        for kind in ("single", "iterative"):
            o, t = s["arms"].get(f"ours-{kind}"), s["arms"].get(f"trl-{kind}")
            if o and t and "pair_keys" in o and "pair_keys" in t:  # (results of older benches lack them)
                same = "the same" if o["pair_keys"] == t["pair_keys"] else "DIFFERENT"
                lines.append(f"- {size} {kind}: both arms trained {same} pairs ({o['pairs']} ours, {t['pairs']} TRL; "
                             f"pair visits {o['pair_visits']} ours, {t['pair_visits']} TRL); first-batch loss "
                             f"{o['first_batch_loss']:.6f} ours, {t['first_batch_loss']:.6f} TRL")
        if "check" in s["arms"]:
            c = s["arms"]["check"]
            lines.append(f"- {size}: first-batch per-pair DPO loss, max relative difference ours vs TRL: "
                         f"{c['max_rel_diff_fp64']:.1e} in float64 (target 1e-5), "
                         f"{c.get('max_rel_diff_' + result['dtype'], float('nan')):.1e} in {result['dtype']}")
            if "max_rel_diff_bf16_vs_fp32" in c:
                lines.append(f"- {size}: first-batch per-pair DPO loss, ours in bf16 mixed precision vs ours in "
                             f"fp32: max relative difference {c['max_rel_diff_bf16_vs_fp32']:.1e} (target 1e-2)")
    return "\n".join(lines) + "\n"


def add_arguments(p) -> None:
    p.add_argument("--sizes", default="3m,30m", help=f"comma-separated model sizes: {', '.join(SIZES)}")
    p.add_argument("--prompts", type=int, default=48, help="prompts (x 4 responses, 3 pairs each)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of: {', '.join(ARMS)}")
    p.add_argument("--quick", action="store_true", help="seconds-long tiny configuration (for tests)")
    p.add_argument("--out", default="bench-out", help="output directory (bench.json, bench.md, models)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help=(
        "bf16 = bf16 mixed precision for both trainers (fp32 weights, bf16 autocast; TRL bf16=True, ours "
        "model.precision bf16): for a GPU run of 0.5b (works on CPU, slowly)"))
    p.add_argument("--model", default=None, help="measure this HF causal-LM directory (yours) instead of the "
                                                 "random-init --sizes models; reported as size 'model'")


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="currydpo bench", description=__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--child", dest="arm", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.arm:
        child(args)
        return 0
    return run_args(args)


def require_trl() -> None:
    """TRL is the baseline and a dev extra, not a runtime dependency: say how to get it."""
    import importlib.util

    from ..errors import CurryError

    if importlib.util.find_spec("trl") is None:
        raise CurryError("currydpo bench compares against TRL, which is not installed; "
                         "pip install 'currydpo[dev]' (or pip install 'trl>=1.16')")


def run_args(args) -> int:
    from ..errors import CurryError

    args.sizes = [s.strip() for s in (args.sizes if isinstance(args.sizes, str) else ",".join(args.sizes)).split(",")]
    if args.quick:
        args.sizes, args.prompts = ["tiny"], min(args.prompts, 8)
    args.arms = [a.strip() for a in (args.arms if isinstance(args.arms, str) else ",".join(args.arms)).split(",")]
    if [a for a in args.arms if a not in ARMS]:
        raise CurryError(f"unknown benchmark arm in {args.arms}; choose from: {', '.join(ARMS)}")
    bad = [s for s in args.sizes if s not in SIZES]
    if bad:
        raise CurryError(f"unknown benchmark size {bad[0]!r}; choose from: {', '.join(SIZES)}")
    if args.model:
        if not os.path.isdir(os.path.expanduser(args.model)):
            raise CurryError(f"bench --model {args.model}: not a directory; give a model saved with save_pretrained")
        args.model, args.sizes = os.path.expanduser(args.model), ["model"]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CurryError("--device cuda but no CUDA device is available; use --device cpu")
    require_trl()
    benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
