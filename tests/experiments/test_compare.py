"""`currydpo compare` on a 2-arm x 2-seed grid of tiny runs."""

import json
import os

import pytest
import yaml

from currydpo.cli import main
from currydpo.errors import CurryError
from currydpo.experiments.compare import load_spec

from conftest import make_records


def toy_gold(prompt, response):
    """A stand-in gold reward: distinct words, capped."""
    return min(len(set(response.split())), 10) / 10


def write_data(path, n=10):
    with open(path, "w") as f:
        for r in make_records(n):
            f.write(json.dumps({"prompt": r.prompt, "responses": [{"text": x.text, "score": x.score}
                                                                  for x in r.responses]}) + "\n")


@pytest.fixture
def spec_file(tiny_model_dir, tmp_path):
    write_data(tmp_path / "data.jsonl")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"the cat {w}"}) + "\n"
                                                    for w in ("sat", "ran", "sea", "sky")))
    spec = {
        "base": {"model": {"path": tiny_model_dir},
                 "data": {"path": str(tmp_path / "data.jsonl"), "eval_fraction": 0.2},
                 "optim": {"lr": 1e-3, "batch_size": 4, "total_updates": 4}},
        "grid": {"curriculum.schedule": ["iterative", "random"]},
        "seeds": [1, 2],
        "eval": {"prompts": str(tmp_path / "prompts.jsonl"), "judge": f"gold:{__name__}:toy_gold",
                 "generation": {"max_new_tokens": 8, "temperature": 1.0, "batch_size": 4}},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_compare_grid_writes_table_and_plots_and_resumes(spec_file, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(spec_file), "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "it/s" not in err and "tokenising" not in err  # --no-progress reaches the training runs too
    table = (out / "results.md").read_text()
    for arm in ("sft", "iterative", "random"):
        assert f"| {arm} |" in table
    assert "What was held equal" in table and "previous-stage" in table
    # the amount of data each number rests on is printed: 4 prompts; 2 of 10 records held out x 3 pairs
    assert "Data (seed 1): evaluation prompts (gold reward, win rate, KL): 4; held-out preference pairs " \
           "(reward and ranking accuracy): 6." in table
    res = json.loads((out / "results.json").read_text())
    rows = {r["arm"]: r for r in res["rows"]}
    assert rows["iterative"]["seeds"] == [1, 2] and rows["iterative"]["fairness"]["updates"] == 4
    assert rows["random"]["fairness"]["updates"] == 4  # same number of updates in every arm
    assert rows["sft"]["win_rate"]["mean"] == 0.5  # the baseline against its own answers
    for arm in ("iterative", "random"):
        wr = rows[arm]["win_rate"]
        assert 0 <= wr["ci_low"] <= wr["mean"] <= wr["ci_high"] <= 1 and len(wr["values"]) == 2
        assert rows[arm]["kl"]["mean"] != 0.0  # the trained model is evaluated, not its reference (KL exactly 0)
        assert "reward_accuracy" in rows[arm] and "ranking_accuracy" in rows[arm]
    for png in ("scores.png", "reward_vs_kl.png", "training_curves.png", "heldout_by_stage.png"):
        assert (out / png).stat().st_size > 1000
        assert (out / png).with_suffix(".svg").read_text().lstrip().startswith("<?xml")  # a vector copy, for papers
    # Resumable: finished arms are not redone.
    stamp = os.path.getmtime(out / "iterative" / "seed-1" / "result.json")
    os.remove(out / "random" / "seed-2" / "result.json")
    assert main(["compare", str(spec_file), "--out", str(out), "--no-progress"]) == 0
    assert os.path.getmtime(out / "iterative" / "seed-1" / "result.json") == stamp
    assert (out / "random" / "seed-2" / "result.json").exists()


def test_bad_spec_fails_before_any_work(tmp_path, tiny_model_dir):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": {"model": {"path": tiny_model_dir}},
                                    "arms": {"a": {"loss": {"beta": -1}}}}))
    with pytest.raises(CurryError, match="arm 'a': config key 'loss.beta' must be > 0"):
        load_spec(str(path))
    path.write_text(yaml.safe_dump({"arms": {"a": {}}, "evals": {}}))
    with pytest.raises(CurryError, match="unknown key"):
        load_spec(str(path))


def test_fairness_counts_the_updates_of_the_evaluated_model(tiny_model_dir):
    from currydpo.experiments.compare import fairness
    from currydpo.experiments.report import aggregate, markdown

    from conftest import tiny_config

    cfg = tiny_config(tiny_model_dir, "unused", curriculum={"schedule": "iterative", "stages": 3})
    stages = [{"stage": 1, "updates": 88}, {"stage": 2, "updates": 106}, {"stage": 3, "updates": 106}]
    summary = {"total_updates": 300, "stages": stages, "optimizer_resets": 0, "pairs_per_update": 8,
               "train_pairs": 1411}
    assert fairness(cfg, summary)["updates"] == 300  # final/ = the last stage: every update
    best = {**summary, "final_model": {"stage": 1, "eval/rewards/accuracies": 0.84}}
    f = fairness(cfg, best)
    assert (f["updates"], f["run_updates"], f["evaluated_stage"]) == (88, 300, 1)  # final/ = stage-1/
    results = [{"arm": "best", "seed": s, "metrics": {}, "fairness": fairness(cfg, x)}
               for s, x in ((1, best), (2, {**summary, "final_model": {"stage": 2}}))]
    table = markdown(aggregate(results, ["best"]))
    assert "| best | – | – | – | – | – | 88/194 of 300 trained | previous-stage |" in table


def test_report_without_a_judge_or_run_logs_draws_only_what_it_has(tmp_path, capsys, tiny_model_dir):
    """No judge: no empty score or reward-vs-KL plots; a report re-made away from its run directories
    says which training logs it could not find instead of drawing empty training curves."""
    from currydpo.experiments.compare import fairness
    from currydpo.experiments.report import write_report

    from conftest import tiny_config

    cfg = tiny_config(tiny_model_dir, "unused", curriculum={"schedule": "iterative", "stages": 2})
    stages = [{"stage": k, "updates": 5, "end_step": 5 * k, "eval/rewards/accuracies": 0.5 + k / 10,
               "eval/logps/chosen": -10.0 + k} for k in (1, 2)]
    summary = {"total_updates": 10, "stages": stages, "optimizer_resets": 0, "pairs_per_update": 4,
               "train_pairs": 40}
    pref = {"rewards/accuracies": 0.6, "ranking_accuracy": 0.4, "n": 10}
    results = [{"arm": "sft", "seed": 1, "metrics": {"preference": pref}, "fairness": fairness(cfg, None)},
               {"arm": "iterative", "seed": 1, "metrics": {"preference": pref}, "train": summary,
                "fairness": fairness(cfg, summary)}]
    report = write_report(str(tmp_path), results, ["sft", "iterative"])
    assert [os.path.basename(p) for p in report["plots"]] == ["heldout_by_stage.png"]
    assert not (tmp_path / "scores.png").exists() and not (tmp_path / "training_curves.png").exists()
    assert "no training log at" in capsys.readouterr().err
    log = tmp_path / "iterative" / "seed-1" / "train"
    log.mkdir(parents=True)
    log.joinpath("metrics.jsonl").write_text("".join(json.dumps({"stage": 1 + (i > 4), "step": i + 1, "loss": 0.69})
                                                     + "\n" for i in range(10)))
    report = write_report(str(tmp_path), results, ["sft", "iterative"])
    assert [os.path.basename(p) for p in report["plots"]] == ["training_curves.png", "heldout_by_stage.png"]


def test_an_arm_that_died_before_its_first_checkpoint_is_run_again(spec_file, tmp_path):
    """A crash after a stage's model was saved but before state/ was written (a full disk did this) leaves
    a run directory without state/: the next `compare` trains that arm afresh instead of failing."""
    out = tmp_path / "cmp"
    stale = out / "iterative" / "seed-1" / "train"
    (stale / "stage-1").mkdir(parents=True)
    (stale / "stage-1" / "model.safetensors").write_bytes(b"left by the crashed run")
    (stale / "metrics.jsonl").write_text('{"stage": 1, "step": 1, "loss": 0.7}\n')
    for d in (out, stale):  # the crashed compare and train left their lock files (their locks died with them)
        (d / ".currydpo.lock").write_text("12345\n")
    assert main(["compare", str(spec_file), "--out", str(out), "--no-progress", "--seeds", "1"]) == 0
    assert (out / "iterative" / "seed-1" / "result.json").exists()
    log = [json.loads(line) for line in (stale / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == list(range(1, 5))  # the fresh run's 4 updates, not the stale line


def test_sweep_crosses_every_arm_with_the_values_and_applies_each(spec_file, tmp_path):
    """`sweep:` runs ARM@VALUE for every arm × value × seed; an arm's own sweep overrides the spec's."""
    raw = yaml.safe_load(spec_file.read_text())
    raw.pop("grid")
    raw["seeds"] = [1]
    raw["base"]["optim"]["total_updates"] = 2
    raw["sweep"] = {"optim.lr": [1.0e-3, 3.0e-5]}
    raw["arms"] = {"random": {"curriculum": {"schedule": "random"}},
                   "betas": {"curriculum": {"schedule": "random"}, "sweep": {"loss.beta": [0.1, 0.5]}},
                   "plain": {"curriculum": {"schedule": "random"}, "sweep": {}}}
    spec_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "swept"
    assert main(["compare", str(spec_file), "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    arms = {r["arm"]: r for r in res["rows"]}
    assert set(arms) == {"sft", "random@0.001", "random@3e-05", "betas@0.1", "betas@0.5", "plain"}
    assert arms["random@3e-05"]["sweep"] == {"arm": "random", "key": "optim.lr", "value": 3e-05}
    assert "sweep" not in arms["plain"] and "sweep" not in arms["sft"]
    applied = {"random@0.001": ("optim", "lr", 1e-3), "random@3e-05": ("optim", "lr", 3e-5),
               "betas@0.5": ("loss", "beta", 0.5), "betas@0.1": ("loss", "beta", 0.1)}
    for label, (section, key, value) in applied.items():
        cfg = yaml.safe_load((out / label / "seed-1" / "train" / "config.yaml").read_text())
        assert cfg[section][key] == value, label  # the swept value reached the training run
    assert yaml.safe_load((out / "betas@0.5" / "seed-1" / "train" / "config.yaml").read_text())["optim"]["lr"] == 1e-3
    assert (out / "frontier.png").exists() and "Reward–KL frontier" in (out / "frontier.md").read_text()


@pytest.mark.parametrize("sweep", [{"optim.lr": []}, {"lr": [1e-3]}, {"optim.lr": [1e-3], "loss.beta": [0.1]},
                                   {"optim.lr": [1e-3, 1e-3]}])
def test_malformed_sweep_is_a_one_line_error(spec_file, sweep):
    raw = yaml.safe_load(spec_file.read_text())
    raw["sweep"] = sweep
    spec_file.write_text(yaml.safe_dump(raw))
    with pytest.raises(CurryError, match="sweep"):
        load_spec(str(spec_file))


def test_a_spec_may_gain_arms_but_not_change_one(spec_file, tmp_path):
    """Adding a sweep value or an arm to a finished comparison runs only the new runs; changing an arm
    that has results, or the base every arm shares, is refused."""
    from currydpo.experiments.compare import check_same_spec, spec_from_dict

    raw = yaml.safe_load(spec_file.read_text())
    raw.pop("grid")
    raw["arms"] = {"a": {"loss": {"beta": 0.1}}}
    out = str(tmp_path / "cmp")
    os.makedirs(out)
    check_same_spec(spec_from_dict(raw, out))
    raw["arms"]["b"] = {"loss": {"beta": 0.3}}
    raw["base"]["run"] = {"progress": False}  # changes no result
    check_same_spec(spec_from_dict(raw, out))  # an arm added: accepted and recorded
    assert set(json.loads((tmp_path / "cmp" / "spec.json").read_text())["arms"]) == {"a", "b"}
    raw["arms"]["a"] = {"loss": {"beta": 0.2}}
    with pytest.raises(CurryError, match=r"arm a differ from its spec.json"):
        check_same_spec(spec_from_dict(raw, out))
    raw["arms"]["a"] = {"loss": {"beta": 0.1}}
    raw["base"]["optim"]["lr"] = 5e-4
    with pytest.raises(CurryError, match=r"\(base differ"):
        check_same_spec(spec_from_dict(raw, out))
