"""`currydpo demo --quick`: the whole pipeline on the embedded world, as a smoke test."""

import json

from currydpo.cli import main


def test_demo_quick_runs_every_arm_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    rows = {r["arm"]: r for r in res["rows"]}
    assert set(rows) == {"sft", "single-pair", "multi-pair-random", "curry-iterative", "curry-single-pass"}
    trained = [a for a in rows if a != "sft"]
    # Every trained arm: same loss, same number of updates and LR schedule (the fairness controls).
    assert len({rows[a]["fairness"]["updates"] for a in trained}) == 1
    # the same peak lr and warm-up; curry-iterative restarts them per stage (the paper's recipe), as the table says
    assert {a: rows[a]["fairness"]["lr_schedule"].rsplit(", ", 1)[1] for a in trained} == {
        "single-pair": "continue", "multi-pair-random": "continue", "curry-iterative": "restart",
        "curry-single-pass": "continue"}
    assert len({rows[a]["fairness"]["lr_schedule"].rsplit(", ", 1)[0] for a in trained}) == 1
    assert rows["curry-iterative"]["fairness"]["reference"] == "previous-stage"
    assert rows["curry-iterative"]["fairness"]["stages"] == 3
    # What the pipeline must produce: DPO on the judge's ratings learns them, above chance on held-out pairs
    # (~25 pairs in the quick world, so not every arm: quick single-pass sees only its easiest pairs in 24
    # updates and scored 0.48; the SFT model, its own reference, has no implicit reward: n/a, not 0).
    accuracy = {a: rows[a]["reward_accuracy"]["mean"] for a in trained}
    assert max(accuracy.values()) > 0.5, accuracy
    assert rows["sft"]["reward_accuracy"] == "n/a"
    for png in ("scores.png", "reward_vs_kl.png", "training_curves.png", "heldout_by_stage.png"):
        assert (out / png).exists()
    md = (out / "results.md").read_text()
    assert "| curry-iterative |" in printed and "What was held equal" in md
    assert "Training pairs of each `curry-iterative` stage" in md and "Held-out pairs after each stage" in printed

    # The per-stage figures are computed, and the world's ratings order the stages: (R1,R4) pairs are
    # further apart by the gold reward than (R1,R2) pairs.
    from currydpo.experiments.demo import demo_spec, stage_checkpoints, stage_data, stages_report
    from currydpo.world.build import build_world

    spec = demo_spec(build_world(str(tmp_path / "cache"), quick=True, progress=False), str(out), [1], quick=True,
                     progress=False)
    data = stage_data(spec)
    assert [r["label"] for r in data] == ["rejected rank >=4", "rejected rank 3", "rejected rank 2"]
    assert data[0]["gold_gap"] > data[2]["gold_gap"] and all(0 <= r["mislabeled"] <= 1 for r in data)
    # The stage checkpoints are evaluated like every arm (--ablations does this).
    checkpoints = stage_checkpoints(spec, progress=False)
    assert [c["stage"] for c in checkpoints] == [1, 2]
    assert checkpoints[0]["metrics"]["kl"] != rows["curry-iterative"]["kl"]["mean"]  # a different model
    table = stages_report({"seeds": [1], "stage_data": data, "checkpoints": checkpoints}, res["results"])
    assert "| curry-iterative stage-1/ |" in table and "| curry-iterative final/ |" in table
    # the data regime is recorded: the default is the pool of writers (the paper's regime)
    assert res["notes"]["responses"] == "pool"
    assert md.startswith("Budget: ") and "\n\nResponses: pool (" in md


def test_ablation_arms_change_what_the_readme_says(tmp_path):
    from types import SimpleNamespace

    from currydpo.config import resolve
    from currydpo.experiments.compare import arm_config
    from currydpo.experiments.demo import ARMS, demo_spec

    world = SimpleNamespace(sft_model=tmp_path / "sft", train_data=tmp_path / "train.jsonl",
                            eval_prompts=tmp_path / "prompts.jsonl")
    assert set(demo_spec(world, str(tmp_path), [1]).arms) == set(ARMS)
    spec = demo_spec(world, str(tmp_path), [1], ablations=True)
    cfg = {arm: arm_config(spec, arm, 1) for arm in spec.arms}
    base = cfg["curry-iterative"]
    # curry-iterative is the paper's recipe (each stage restarts its optimiser); continue is a labelled variant
    assert (base.optim.across_stages, resolve(base).reference) == ("restart", "previous-stage")
    cont = cfg["iterative-continue"]
    assert (cont.optim.across_stages, resolve(cont).reference) == ("continue", "previous-stage")
    fixed = cfg["iterative-fixed-ref"]
    assert (fixed.optim.across_stages, resolve(fixed).reference) == ("restart", "initial")
    anti = cfg["anti-curriculum"]
    assert (anti.curriculum.schedule, resolve(anti).reference, anti.curriculum.stages) == ("anti", "initial", 3)
    # anti-curriculum changes three things of curry-iterative: order, reference and (no) shuffling
    assert (resolve(base).shuffle_within_stage, resolve(anti).shuffle_within_stage) == (True, False)
    assert resolve(fixed).shuffle_within_stage and fixed.curriculum.schedule == "iterative"
    best = cfg["iterative-best-stage"]
    assert (best.run.final_model, resolve(best).reference, base.run.final_model) == ("best", "previous-stage", "last")
    mrpo = cfg["iterative-mrpo"]
    assert (mrpo.curriculum.schedule, resolve(mrpo).reference) == ("iterative", "all-previous")
    assert {c.optim.across_stages for a, c in cfg.items() if a.startswith("iterative-") and a != "iterative-continue"} \
        == {"restart"}  # one change each
    on = cfg["curry-online"]  # the iterative arm with online stages 2 and 3, rated by the world's noisy judge
    assert (on.online.enabled, on.online.from_stage, on.online.samples, resolve(on).reference) == \
        (True, 2, 4, "previous-stage")
    assert on.online.judge == "gold:currydpo.world.preferences:judge_score" and not base.online.enabled
    for c in cfg.values():  # the fairness controls are shared by every arm
        assert (c.optim.total_updates, c.optim.lr, c.loss.beta) == (base.optim.total_updates, base.optim.lr, 0.1)


def test_demo_spec_records_the_response_regime(tmp_path):
    from types import SimpleNamespace

    from currydpo.cli import build_parser
    from currydpo.experiments.demo import demo_spec

    world = SimpleNamespace(sft_model=tmp_path / "sft", train_data=tmp_path / "train.jsonl",
                            eval_prompts=tmp_path / "prompts.jsonl")
    for regime in ("pool", "self"):
        assert demo_spec(world, str(tmp_path), [1], responses=regime).notes["responses"] == regime
    assert build_parser().parse_args(["demo"]).responses == "pool"
    assert build_parser().parse_args(["demo", "--responses", "self"]).responses == "self"


def test_frontier_spec_sweeps_every_frontier_arm_over_the_same_lrs_along_each_run(tmp_path):
    from types import SimpleNamespace

    from currydpo.config import resolve
    from currydpo.experiments.compare import arm_config
    from currydpo.experiments.demo import FRONTIER_ARMS, FRONTIER_POINTS, FRONTIER_SWEEP, demo_spec

    world = SimpleNamespace(sft_model="m", train_data=str(tmp_path / "t.jsonl"), eval_prompts="e")
    spec = demo_spec(world, str(tmp_path), [1, 2, 3], frontier=True)
    lrs = FRONTIER_SWEEP["optim.lr"]
    # the same values for every arm (fixed before the results), each run evaluated along its training
    assert set(spec.arms) == {f"{a}@{lr}" for a in FRONTIER_ARMS for lr in lrs}
    assert spec.points == FRONTIER_POINTS >= 4
    assert {"curry-iterative", "iterative-continue"} <= set(FRONTIER_ARMS)  # the paper's recipe and its variant
    for label, meta in spec.sweeps.items():
        assert arm_config(spec, label, 1).optim.lr == meta["value"]
    assert arm_config(spec, "curry-iterative@6e-05", 1).optim.across_stages == "restart"
    mix = arm_config(spec, "iterative-mixture@6e-05", 1)
    assert resolve(mix).reference == "mixture" and mix.curriculum.reference_mix == 0.5
    assert spec.notes["budget"].startswith("the frontier: every arm at peak lr 6e-05, 0.0002")


def test_the_demo_states_its_budget_first_and_passes_is_the_ablation(tmp_path):
    from types import SimpleNamespace

    from currydpo.experiments.compare import arm_config
    from currydpo.experiments.demo import demo_spec
    from currydpo.experiments.report import setup_lines

    world = SimpleNamespace(sft_model="m", train_data=str(tmp_path / "t.jsonl"), eval_prompts="e")
    spec = demo_spec(world, str(tmp_path), [1])
    first = setup_lines(spec.notes).splitlines()[0]
    assert first.startswith("Budget: peak lr 6e-05, 300 updates") and "default-budget rule" in first
    assert "docs/demo_frontier/pool/frontier.md" in first
    assert {arm_config(spec, a, 1).optim.lr for a in spec.arms} == {6e-5}
    passes = demo_spec(world, str(tmp_path), [1], budget="passes")
    cfg = arm_config(passes, "single-pair", 1)
    assert (cfg.optim.total_updates, cfg.optim.epochs_per_stage) == (None, 1.0)
    assert "equal passes" in passes.notes["budget"]
