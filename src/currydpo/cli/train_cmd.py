"""`currydpo train`: run a curriculum from a YAML config (+ --set overrides)."""

from __future__ import annotations

import argparse
import os

from ..config import help_table, load_config
from ..trl_names import SAME


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", help="train a policy with a curriculum of preference pairs",
        description="Train with Curry-DPO or a baseline schedule. Every config key is listed by --help-config; "
                    "launch with `accelerate launch -m currydpo train ...` on several devices.",
    )
    p.add_argument("--config", help="YAML config file with sections model/data/curriculum/loss/optim/run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key, e.g. --set loss.beta=0.2 (repeatable)")
    p.add_argument("--model", help="shortcut for --set model.path=...")
    p.add_argument("--data", help="shortcut for --set data.path=...")
    p.add_argument("--output", help="shortcut for --set run.output_dir=...")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest complete checkpoint in run.output_dir")
    p.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with the model/data to run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--help-config", action="store_true", help="print every config key with its default and exit")
    trl = p.add_argument_group("TRL-style flags", "every TRL / alignment-handbook name we map, as `trl dpo` takes it "
                               "(--learning_rate 1e-6 --beta 0.05); applied after --config, like --set NAME=VALUE")
    for name in sorted(SAME):
        if name not in ("dataset_mixture", "datasets"):  # nested lists: YAML only
            trl.add_argument(f"--{name}", dest=f"trl_{name}", metavar="VALUE", nargs="?", const="true",
                             default=argparse.SUPPRESS, help=f"-> {SAME[name]}")
    return p


def config_from_args(args):
    overrides = list(args.overrides)
    overrides += [f"{k.removeprefix('trl_')}={v}" for k, v in vars(args).items() if k.startswith("trl_")]
    for flag, key in (("model", "model.path"), ("data", "data.path"), ("output", "run.output_dir")):
        if getattr(args, flag, None):
            overrides.append(f"{key}={getattr(args, flag)}")
    if getattr(args, "trust_remote_code", False):
        overrides.append("model.trust_remote_code=true")
    if getattr(args, "no_progress", False):
        overrides.append("run.progress=false")
    return load_config(args.config, overrides)


def run(args) -> int:
    if args.help_config:
        print(help_table())
        return 0
    cfg = config_from_args(args)
    from ..training import loop

    stages = None
    if cfg.online.enabled:  # the judge comes from the evaluation layer, handed in as the stage source
        from ..evaluation.online import online_stages

        stages = online_stages()
    summary = loop.train(cfg, resume=args.resume, stages=stages)
    if os.environ.get("RANK", "0") != "0":  # one report per launch, from the main process
        return 0
    print(f"trained {summary['total_updates']} updates over {len(summary['stages'])} stage(s) "
          f"({summary['schedule']}, reference {summary['reference']}); final loss {summary['final_loss']:.4f}")
    if summary.get("resumed_from"):
        r = summary["resumed_from"]
        print(f"  resumed at stage {r['stage']}, update {r['update'] + 1} (step {r['global_step'] + 1}): "
              f"{summary['updates_run']} updates run by this launch")
    for s in summary["stages"]:
        extra = f", held-out reward acc {s['eval/rewards/accuracies']:.3f}" if "eval/rewards/accuracies" in s else ""
        if "online/samples" in s:
            extra += (f"; online: {s['online/samples']} samples of {s['online/prompts']} prompts, judge mean score "
                      f"{s['online/judge_mean_score']:.3f}, sampling {s['online/sampling_seconds']:.0f} s, judging "
                      f"{s['online/judging_seconds']:.0f} s, training {s['train_seconds']:.0f} s")
        print(f"  stage {s['stage']}: {s.get('label', '')} — {s.get('pairs', '?')} pairs, {s['updates']} updates, "
              f"reference {s['reference']}{extra}")
    print(f"final model: {cfg.run.output_dir}/final")
    return 0
