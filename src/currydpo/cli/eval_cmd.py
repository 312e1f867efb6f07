"""`currydpo eval`: preference metrics, sampled answers, judge scores, win rate and KL for one model."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval", help="evaluate a model: preference metrics, generations, judge, win rate, KL",
        description="Evaluate MODEL. With --data: held-out preference metrics: ranking accuracy (plain, "
                    "length-normalised, idealised) per rejected rank, and with --reference the implicit-reward "
                    "accuracy and margins. With --prompts: sample answers, score them with --judge, win rate against "
                    "--baseline (a model dir, or a JSON list of answers) with a bootstrap 95%% CI, and "
                    "KL(model || reference) when sampling at temperature 1. With --mt-bench: every turn of FastChat "
                    "questions answered turn by turn, each turn rated 1-10 by --judge openai:URL#MODEL "
                    "(single-answer grading), written to OUT/mt_bench.json, eval.md and mt_bench_categories.png.",
    )
    p.add_argument("model", help="model directory (save_pretrained) or hub name")
    p.add_argument("--reference", help="reference model (default: none; needed for KL and reward metrics; without "
                                       "it --data gives the reference-free ranking accuracies)")
    p.add_argument("--data", help="ranked/pairwise preference data for preference metrics (any loader format)")
    p.add_argument("--format", default="auto", help="format of --data (default auto)")
    p.add_argument("--strategy", default=None, help="pair builder for --data (default: data.strategy, best-vs-rest)")
    p.add_argument("--config", help="the run's YAML config: its data section (chat template, length limits, pair "
                                    "builder) decides how --data is paired and tokenised, and model.fused_logprobs "
                                    "the LM-head kernel that scores, as in training")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                   help="override a data key, e.g. --set data.chat_template=never, or the LM-head kernel that "
                        "scores (model.fused_logprobs, as in training; default: the --config's, else auto) "
                        "(repeatable)")
    p.add_argument("--limit", type=int, help="use at most this many records of --data")
    p.add_argument("--beta", type=float, default=0.1, help="beta of the implicit reward (default 0.1)")
    p.add_argument("--prompts", help="JSONL of prompts (prompt / messages / FastChat questions: the first turn) for "
                                     "judge scores, win rate and KL")
    p.add_argument("--mt-bench", dest="mt_bench", metavar="QUESTIONS.jsonl",
                   help="FastChat question file (MT-bench): answer every turn, rate each 1-10 with --judge openai:...")
    p.add_argument("--mt-bench-reference", metavar="FILE.jsonl",
                   help="reference answers for math/reasoning/coding in FastChat's layout (default: "
                        "reference_answer/gpt-4.jsonl beside the questions, if there)")
    p.add_argument("--category-temperature", action="append", default=[], metavar="CATEGORY=T",
                   help="override an MT-bench sampling temperature (defaults: writing/roleplay 0.7, extraction/math/"
                        "coding/reasoning 0 = greedy, stem/humanities 0.1; 'default=T' for other categories, 0.7)")
    p.add_argument("--judge-prompt", metavar="FILE.py",
                   help="your own MT-bench grading prompt: a .py defining grading_messages and parse_rating "
                        "(default: currydpo/evaluation/grading_prompt.py)")
    p.add_argument("--judge", help="gold:MODULE:FN | reward-model:PATH | openai:URL[#MODEL]")
    p.add_argument("--baseline", help="baseline model dir, a .json list of baseline answers (--prompts) or a FastChat "
                                      "answer .jsonl (--mt-bench)")
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
    from ..evaluation.evaluate import evaluate_model
    from ..evaluation.judges import make_judge
    from ..generation.engines import make_engine
    from ..generation.generate import GenerationConfig, export_alpaca_eval, export_mt_bench, load_prompts
    from ..io import write_json, write_text
    from ..training.model import load_model, load_tokenizer

    overrides = list(args.overrides)
    other = [o for o in overrides if not o.startswith(("data.", "model.fused_logprobs="))]
    if other:
        raise CurryError(f"eval --set takes data.* keys (how responses are tokenised and paired) and "
                         f"model.fused_logprobs (the LM-head kernel that scores them) only, got {other[0]!r}")
    if args.strategy:
        overrides.append(f"data.strategy={args.strategy}")
    run_cfg = load_config(args.config, overrides)
    data_cfg = run_cfg.data
    if not (args.data or args.prompts or args.mt_bench):
        raise CurryError("nothing to evaluate: give --data (preference metrics), --prompts (generation) and/or "
                         "--mt-bench (multi-turn questions rated 1-10)")
    if args.baseline and args.baseline.endswith(".jsonl") and args.prompts and not args.mt_bench:
        raise CurryError(f"--baseline {args.baseline}: a FastChat answer file is a baseline for --mt-bench; for "
                         "--prompts give a baseline model directory or a .json list of answers")
    mt = prepare_mt_bench(args) if args.mt_bench else None  # bad input fails before any model is loaded
    device = default_device()
    mcfg = ModelConfig(path=args.model, trust_remote_code=args.trust_remote_code)
    tokenizer = load_tokenizer(args.model, args.trust_remote_code)
    policy = load_model(args.model, mcfg, device)
    same = args.reference and os.path.normpath(args.reference) == os.path.normpath(args.model)
    reference = policy if same else (load_model(args.reference, mcfg, device) if args.reference else None)
    heldout = load_records(args.data, args.format, limit=args.limit).records if args.data else None
    prompts = load_prompts(args.prompts) if args.prompts else []
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           do_sample=args.temperature > 0, batch_size=args.batch_size, seed=args.seed)
    judge = make_judge(args.judge, cache_dir=os.path.join(args.out, "judge-cache"),
                       trust_remote_code=args.trust_remote_code) if args.judge else None
    baseline_answers = None
    if args.baseline and prompts and not args.baseline.endswith(".jsonl"):
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
                                      progress=not args.no_progress, engine=engine,
                                      fused_logprobs=run_cfg.model.fused_logprobs)
    os.makedirs(args.out, exist_ok=True)
    written = ["eval.json", "eval.md"]
    if prompts:
        name = model_name(args.model)
        export_alpaca_eval(os.path.join(args.out, "alpaca_eval.json"), prompts, answers, name)
        written.append("alpaca_eval.json")
        if any(p.turns and len(p.turns) > 1 for p in prompts):  # FastChat's grader would read a missing turn 2
            print("currydpo eval: --prompts answers the first turn only, so no mt_bench_answers.jsonl is written for "
                  "multi-turn questions; use --mt-bench QUESTIONS.jsonl to answer and grade every turn",
                  file=sys.stderr)
        else:
            export_mt_bench(os.path.join(args.out, "mt_bench_answers.jsonl"), [p.id for p in prompts], answers, name)
            written.append("mt_bench_answers.jsonl")
    md_mt = ""
    if mt is not None:
        results = run_mt_bench(args, mt, tokenizer, policy, mcfg, device, gen)
        md_mt = mt_bench_report(args.out, results)
        metrics["mt_bench"] = {name: {k: r[k] for k in ("score", "score_ci", "turn_1", "turn_2", "n_questions",
                                                        "abstained") if k in r} for name, r in results.items()}
        written += ["mt_bench.json", "mt_bench_categories.png", *(f"model_answer/{n}.jsonl" for n in results)]
    write_json(os.path.join(args.out, "eval.json"), metrics)
    md = (summary_markdown(metrics) if metrics.keys() - {"mt_bench"} else "") + md_mt
    write_text(os.path.join(args.out, "eval.md"), md)
    print(md)
    print(f"written: {args.out}/" + ", ".join(written))
    return 0


def model_name(path: str) -> str:
    """The name answer files and tables use: the directory's name, with its run's name before a checkpoint's
    (runs/curry/final -> curry-final), a FastChat answer file's stem."""
    parts = os.path.normpath(path).split(os.sep)
    name = os.path.splitext(parts[-1])[0] if parts[-1].endswith(".jsonl") else parts[-1]
    if len(parts) > 1 and re.fullmatch(r"final|stage-\d+", name):
        name = f"{parts[-2]}-{name}"
    return name


def prepare_mt_bench(args) -> dict:
    """Questions, reference answers, temperatures and the grader of ``--mt-bench``, checked before loading models."""
    from ..errors import CurryError
    from ..evaluation.mt_bench import SingleGrader, default_reference_path, load_references, warn_missing_references
    from ..generation.generate import MT_BENCH_DEFAULT_TEMPERATURE, MT_BENCH_TEMPERATURES, load_prompts

    if not (args.judge or "").startswith("openai:"):
        raise CurryError(f"--mt-bench rates answers 1-10 with an LLM judge: give --judge openai:URL#MODEL "
                         f"(got {args.judge!r})")
    if args.baseline and args.baseline.endswith(".json"):
        raise CurryError(f"--baseline {args.baseline}: with --mt-bench give a model directory or a FastChat answer "
                         ".jsonl (a .json list holds one answer per prompt, not every turn)")
    questions = load_prompts(args.mt_bench)
    temperatures, default = dict(MT_BENCH_TEMPERATURES), MT_BENCH_DEFAULT_TEMPERATURE
    for item in args.category_temperature:
        cat, sep, value = item.partition("=")
        try:
            t = float(value)
        except ValueError:
            t = -1.0
        if not sep or not cat or not 0 <= t < float("inf"):
            raise CurryError(f"--category-temperature {item!r}: expected CATEGORY=T with T >= 0, e.g. writing=0.7")
        if cat == "default":
            default = t
        else:
            temperatures[cat] = t
    ref_path = args.mt_bench_reference or default_reference_path(args.mt_bench)
    references = load_references(ref_path) if ref_path else {}
    warn_missing_references(questions, references)
    grader = SingleGrader(args.judge, cache_dir=os.path.join(args.out, "judge-cache"), prompt_file=args.judge_prompt,
                          progress=not args.no_progress)
    return {"questions": questions, "references": references, "temperatures": temperatures, "default": default,
            "grader": grader}


def run_mt_bench(args, mt: dict, tokenizer, policy, mcfg, device, gen) -> dict[str, dict]:
    """Answer every turn (model, and --baseline when given), write the FastChat answer files, then grade:
    {name: summary}. Answers are written before grading, so a killed grading run keeps them."""
    from dataclasses import replace

    from ..evaluation.mt_bench import load_answer_file, summarise
    from ..generation.engines import make_engine
    from ..generation.generate import answer_turns, export_mt_bench
    from ..training.model import load_model

    questions = mt["questions"]
    gen = replace(gen, do_sample=True)  # the per-category temperatures decide (0 = greedy)
    name = model_name(args.model)
    models = [(name, args.model, policy)]
    if args.baseline:
        base_name = model_name(args.baseline)
        models.append((base_name if base_name != name else f"{base_name}-baseline", args.baseline, None))
    answers = {}
    for label, path, model in models:
        if path.endswith(".jsonl"):  # a FastChat answer file, e.g. another model's answers
            got = load_answer_file(path)
            missing = [q.id for q in questions if q.id not in got]
            if missing:
                from ..errors import CurryError

                raise CurryError(f"--baseline {path}: no answer for question {missing[0]} ({len(missing)} missing)")
            answers[label] = [got[q.id] for q in questions]
        else:
            model = model if model is not None else (load_model(path, mcfg, device) if args.engine == "hf" else None)
            engine = make_engine(args.engine, model=model, tokenizer=tokenizer, path=path, seed=args.seed,
                                 trust_remote_code=args.trust_remote_code)
            answers[label] = answer_turns(engine, questions, gen, temperatures=mt["temperatures"],
                                               default_temperature=mt["default"], progress=not args.no_progress)
            del engine
        export_mt_bench(os.path.join(args.out, "model_answer", f"{label}.jsonl"), [q.id for q in questions],
                        answers[label], label)
    return {n: {"model": n, "judge": args.judge,
                **summarise(questions, mt["grader"].grade(questions, a, mt["references"]), seed=args.seed)}
            for n, a in answers.items()}


def mt_bench_report(out: str, results: dict[str, dict]) -> str:
    """OUT/mt_bench.json (the model's summary at the top level, every model under ``models``), the
    category plot, and the markdown table for eval.md."""
    from ..evaluation.mt_bench import markdown_table, plot_categories
    from ..io import write_json

    first = next(iter(results.values()))
    write_json(os.path.join(out, "mt_bench.json"), {**first, "models": results})
    plot_categories(os.path.join(out, "mt_bench_categories.png"), results)
    return "\n## MT-bench\n\n" + markdown_table(results)


def summary_markdown(m: dict) -> str:
    lines = ["| metric | value |", "|---|---|"]
    if "judge_score" in m:
        lo, hi = m["judge_score_ci"]
        lines.append(f"| mean judge score | {m['judge_score']:.4f} (95% CI {lo:.4f}–{hi:.4f}) |")
    if "win_rate" in m:
        w = m["win_rate"]
        abstained = f" / {w['abstained']} abstained" if w.get("abstained") else ""
        lines.append(f"| adjusted win rate vs baseline | {w['win_rate']:.3f} (95% CI {w['ci_low']:.3f}–"
                     f"{w['ci_high']:.3f}; {w['wins']} W / {w['ties']} T / {w['losses']} L{abstained}) |")
    if m.get("kl") is not None:
        noise = " (negative: Monte-Carlo noise around a small KL; KL itself is >= 0)" if m.get("kl_noise") else ""
        lines.append(f"| KL(model ‖ reference), nats/answer | {m['kl']:.3f}{noise} |")
    for k, v in (m.get("preference") or {}).items():
        if not k.startswith("bucket=") and k != "n":
            lines.append(f"| held-out {k} | " + ("n/a (the model is its own reference)" if v is None else f"{v:.4f}")
                         + " |")
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
