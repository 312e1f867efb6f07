"""Evaluation along a run (compare's ``eval: {points: K}``): the points, their files, and no effect on training."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_compare import write_data  # noqa: F401  (the same toy data as the compare tests)

from currydpo.cli import main
from currydpo.errors import CurryError
from currydpo.experiments.compare import load_spec
from currydpo.experiments.trajectory import point_updates


def toy_gold(prompt, response):
    return min(len(set(response.split())), 10) / 10


def test_point_updates_are_evenly_spaced_and_end_at_the_last_update():
    assert point_updates(300, 6) == [50, 100, 150, 200, 250, 300]
    assert point_updates(4, 4) == [1, 2, 3, 4]
    assert point_updates(3, 6) == [1, 2, 3]  # fewer updates than points: each update once


@pytest.fixture(scope="module")
def dropout_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with attention dropout 0.1: training consumes the RNG, so an evaluation that moved the
    RNG, or left the model in eval mode, would change the trained weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("dropout") / "model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.attention_dropout = 0.1
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return str(path)


def spec(tmp_path, model_dir, points):
    write_data(tmp_path / "data.jsonl")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"the cat {w}"}) + "\n"
                                                    for w in ("sat", "ran", "sea", "sky")))
    raw = {"base": {"model": {"path": model_dir, "disable_dropout": False},  # dropout on: training uses the RNG
                    "data": {"path": str(tmp_path / "data.jsonl"), "eval_fraction": 0.2},
                    "optim": {"lr": 1e-3, "batch_size": 4, "total_updates": 4}},
           "arms": {"random": {"curriculum": {"schedule": "random"}},
                    "best": {"curriculum": {"schedule": "random"}, "run": {"final_model": "best"}}},
           "sweep": {"optim.lr": [1.0e-3, 3.0e-4]},
           "seeds": [1, 2],
           "eval": {"prompts": str(tmp_path / "prompts.jsonl"), "judge": f"gold:{__name__}:toy_gold", "points": points,
                    "generation": {"max_new_tokens": 8, "temperature": 1.0, "batch_size": 4}}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_compare_writes_trajectories_and_a_frontier_with_n_and_paired_verdicts(dropout_model_dir, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", str(spec(tmp_path, dropout_model_dir, 4)), "--out", str(out), "--no-progress"]) == 0
    for arm in ("random@0.001", "random@0.0003", "best@0.001", "best@0.0003"):
        for seed in (1, 2):
            res = json.loads((out / arm / f"seed-{seed}" / "result.json").read_text())
            traj = res["trajectory"]
            assert [p["update"] for p in traj] == [1, 2, 3, 4], arm
            assert all({"kl", "judge_score", "win_rate"} <= set(p) for p in traj)
            last, final = traj[-1], res["metrics"]
            # the last point is the final model: from its evaluation ("random"), or measured in memory ("best":
            # one stage, so final/ is the last update's model) -- the same numbers either way
            assert last["kl"] == pytest.approx(final["kl"], abs=1e-5) and last["judge_score"] == final["judge_score"]
    # "best" measured its last point in memory; "random" took it from the final evaluation
    assert (out / "best@0.001" / "seed-1" / "trajectory" / "update-4.json").exists()
    assert not (out / "random@0.001" / "seed-1" / "trajectory" / "update-4.json").exists()
    md = (out / "frontier.md").read_text()
    # n in every cell; "random" differs from "best" only in what final/ holds: paired, it is level with it
    assert "(n=2)" in md and "paired per-seed difference from `best`" in md
    assert "| random | 0.175 ± 0.318 (n=2); +0.000 [+0.000, +0.000], p_Holm 1: **level** |" in md

    # the same comparison evaluated only at the end trains bitwise the same weights (no extra training, RNG untouched)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert main(["compare", str(spec(plain, dropout_model_dir, 1)), "--out", str(plain / "cmp"),
                 "--no-progress"]) == 0
    for arm in ("random@0.001", "best@0.0003"):
        a = load_file(str(out / arm / "seed-2" / "train" / "final" / "model.safetensors"))
        b = load_file(str(plain / "cmp" / arm / "seed-2" / "train" / "final" / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), arm
        assert "trajectory" not in json.loads((plain / "cmp" / arm / "seed-2" / "result.json").read_text())


@pytest.mark.parametrize("points", [0, -1, 1.5, True])
def test_points_must_be_a_positive_integer(tmp_path, tiny_model_dir, points):
    with pytest.raises(CurryError, match="eval.points"):
        load_spec(str(spec(tmp_path, tiny_model_dir, points)))
