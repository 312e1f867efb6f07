"""`currydpo eval`: preference metrics, sampled answers, judge scores, win rate and KL for one model."""

from __future__ import annotations

import argparse
import json
import os


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval", help="evaluate a model: preference metrics, generations, judge, win rate, KL",
        description="Evaluate MODEL. With --data: held-out preference metrics: ranking accuracy (plain, "
                    "length-normalised, idealised) per rejected rank, and with --reference the implicit-reward "
                    "accuracy and margins. With --prompts: sample answers, score them with --judge, win rate against "
                    "--baseline (a model dir, or a JSON list of answers) with a bootstrap 95%% CI, and "
                    "KL(model || reference) when sampling at temperature 1.",
    )
    p.add_argument("model", help="model directory (save_pretrained) or hub name")
    p.add_argument("--reference", help="reference model (default: none; needed for KL and reward metrics; without "
                                       "it --data gives the reference-free ranking accuracies)")
    p.add_argument("--data", help="ranked/pairwise preference data for preference metrics (any loader format)")
    p.add_argument("--format", default="auto", help="format of --data (default auto)")
    p.add_argument("--strategy", default=None, help="pair builder for --data (default: data.strategy, best-vs-rest)")
    p.add_argument("--config", help="the run's YAML config: its data section (chat template, length limits, pair "
                                    "builder) decides how --data is paired and tokenised, as in training")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                   help="override a data key, e.g. --set data.chat_template=never (repeatable)")
    p.add_argument("--limit", type=int, help="use at most this many records of --data")
    p.add_argument("--beta", type=float, default=0.1, help="beta of the implicit reward (default 0.1)")
    p.add_argument("--prompts", help="JSONL of prompts (prompt / messages / MT-bench turns)")
    p.add_argument("--judge", help="gold:MODULE:FN | reward-model:PATH | openai:URL[#MODEL]")
    p.add_argument("--baseline", help="baseline model dir, or a .json list of baseline answers")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens per answer (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0; 0 = greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0 = off)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch (default 16)")
    p.add_argument("--engine", default="hf", choices=["hf", "vllm"],
                   help="generation engine: hf (transformers generate) or vllm (pip install 'currydpo[vllm]', GPUs)")
    p.add_argument("--seed", type=int, default=0, help="sampling and bootstrap seed (default 0)")
    p.add_argument("--out", default="eval-out", help="output directory (default eval-out)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with models to run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args) -> int:
    from ..lifetime import hold_output_dir

    with hold_output_dir(args.out):  # one writer: the judge cache and the reports live in --out
        return evaluate(args)


def evaluate(args) -> int:
    from ..config import ModelConfig, load_config
    from ..data.loading import load_records
    from ..device import default_device
    from ..errors import CurryError
    from ..evaluation.engines import make_engine
    from ..evaluation.evaluate import evaluate_model
    from ..evaluation.generation import GenerationConfig, export_alpaca_eval, export_mt_bench, load_prompts
    from ..evaluation.judges import make_judge
    from ..io import write_json, write_text
    from ..training.model import load_model, load_tokenizer

    overrides = list(args.overrides)
    if [o for o in overrides if not o.startswith("data.")]:
        raise CurryError(f"eval --set takes data.* keys only (how responses are tokenised and paired), got "
                         f"{[o for o in overrides if not o.startswith('data.')][0]!r}")
    if args.strategy:
        overrides.append(f"data.strategy={args.strategy}")
    data_cfg = load_config(args.config, overrides).data
    if not (args.data or args.prompts):
        raise CurryError("nothing to evaluate: give --data (preference metrics) and/or --prompts (generation)")
    device = default_device()
    mcfg = ModelConfig(path=args.model, trust_remote_code=args.trust_remote_code)
    tokenizer = load_tokenizer(args.model, args.trust_remote_code)
    policy = load_model(args.model, mcfg, device)
    reference = load_model(args.reference, mcfg, device) if args.reference else None
    heldout = load_records(args.data, args.format, limit=args.limit).records if args.data else None
    prompts = load_prompts(args.prompts) if args.prompts else []
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           do_sample=args.temperature > 0, batch_size=args.batch_size, seed=args.seed)
    judge = make_judge(args.judge, cache_dir=os.path.join(args.out, "judge-cache"),
                       trust_remote_code=args.trust_remote_code) if args.judge else None
    baseline_answers = None
    if args.baseline and prompts:
        if args.baseline.endswith(".json"):
            with open(args.baseline) as f:
                baseline_answers = json.load(f)
        else:
            base = load_model(args.baseline, mcfg, device) if args.engine == "hf" else None
            engine = make_engine(args.engine, model=base, tokenizer=tokenizer, path=args.baseline, seed=args.seed,
                                 trust_remote_code=args.trust_remote_code)
            baseline_answers = engine.generate(prompts, gen, progress=not args.no_progress)
            del base, engine
    engine = make_engine(args.engine, model=policy, tokenizer=tokenizer, path=args.model, seed=args.seed,
                         trust_remote_code=args.trust_remote_code) if prompts else None
    metrics, answers = evaluate_model(policy, tokenizer, prompts=prompts, gen=gen, judge=judge,
                                      baseline_answers=baseline_answers, reference=reference, heldout=heldout,
                                      beta=args.beta, seed=args.seed, data=data_cfg,
                                      progress=not args.no_progress, engine=engine)
    os.makedirs(args.out, exist_ok=True)
    if prompts:
        name = os.path.basename(os.path.normpath(args.model))
        export_alpaca_eval(os.path.join(args.out, "alpaca_eval.json"), prompts, answers, name)
        export_mt_bench(os.path.join(args.out, "mt_bench_answers.jsonl"), [p.id for p in prompts], answers, name)
    write_json(os.path.join(args.out, "eval.json"), metrics)
    md = summary_markdown(metrics)
    write_text(os.path.join(args.out, "eval.md"), md)
    print(md)
    print(f"written: {args.out}/eval.json, eval.md" + (", alpaca_eval.json, mt_bench_answers.jsonl" if prompts else ""))
    return 0


def summary_markdown(m: dict) -> str:
    lines = ["| metric | value |", "|---|---|"]
    if "judge_score" in m:
        lo, hi = m["judge_score_ci"]
        lines.append(f"| mean judge score | {m['judge_score']:.4f} (95% CI {lo:.4f}–{hi:.4f}) |")
    if "win_rate" in m:
        w = m["win_rate"]
        lines.append(f"| adjusted win rate vs baseline | {w['win_rate']:.3f} (95% CI {w['ci_low']:.3f}–"
                     f"{w['ci_high']:.3f}; {w['wins']} W / {w['ties']} T / {w['losses']} L) |")
    if m.get("kl") is not None:
        lines.append(f"| KL(model ‖ reference), nats/answer | {m['kl']:.3f} |")
    for k, v in (m.get("preference") or {}).items():
        if not k.startswith("bucket=") and k != "n":
            lines.append(f"| held-out {k} | {v:.4f} |")
    buckets = sorted({k.split("/")[0] for k in m.get("preference", {}) if k.startswith("bucket=")})
    for b in buckets:
        p = m["preference"]
        if b + "/rewards/accuracies" in p:
            lines.append(f"| {b.replace('bucket=', 'rejected rank ')}: reward acc / ranking acc | "
                         f"{p[b + '/rewards/accuracies']:.3f} / {p[b + '/ranking_accuracy']:.3f} (n={p[b + '/n']}) |")
        else:  # no reference: the reference-free accuracies
            lines.append(f"| {b.replace('bucket=', 'rejected rank ')}: ranking acc / normalised / idealised | "
                         f"{p[b + '/ranking_accuracy']:.3f} / {p[b + '/ranking_accuracy_normalised']:.3f} / "
                         f"{p.get(b + '/idealised_ranking_accuracy', float('nan')):.3f} (n={p[b + '/n']}) |")
    return "\n".join(lines) + "\n"
