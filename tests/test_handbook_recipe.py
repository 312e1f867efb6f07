"""The alignment-handbook's Zephyr DPO recipe (examples/handbook_zephyr_dpo.yaml) trains unchanged, its model and
data pointed at tiny local copies; so does the same run driven by TRL-style flags. The Hub push is recorded
(`RecordingHub`), not sent: no network in tests."""

import json
from pathlib import Path

import pytest

from currydpo.cli import main

from conftest import ufb_rows

ROOT = Path(__file__).parents[1]


@pytest.fixture
def recipe(tmp_path, tiny_model_dir):
    """The recipe with the model, the datasets and the output under tmp_path; test_split_size 2000 -> 4 (the tiny
    copies hold 26 prompts). Nothing else is changed."""
    data = tmp_path / "ultrafeedback_binarized"
    data.mkdir()
    for split, (n, seed) in {"train_prefs": (20, 0), "test_prefs": (6, 1)}.items():
        (data / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in ufb_rows(n, 1, seed=seed)))
    text = (ROOT / "examples" / "handbook_zephyr_dpo.yaml").read_text()
    for old, new in (("alignment-handbook/zephyr-7b-sft-full", str(tiny_model_dir)),
                     ("HuggingFaceH4/ultrafeedback_binarized", str(data)),
                     ("data/zephyr-7b-dpo-full", str(tmp_path / "run")),
                     ("test_split_size: 2000", "test_split_size: 4")):
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "recipe.yaml").write_text(text)
    return tmp_path / "recipe.yaml"


def test_zephyr_recipe_trains_unchanged_and_pushes(recipe, tmp_path, hub, capsys):
    assert main(["train", "--config", str(recipe), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "note: TRL option dataset_mixture=" in err and "note: TRL option save_total_limit ignored" in err
    assert "WARNING: curriculum iterative by score-gap" in err  # columns [chosen, rejected] dropped the scores
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_pairs"] == 22 and summary["eval_pairs"] == 4  # 20 + 6 prompts, 4 held out
    assert "eval/rewards/accuracies" in summary["stages"][0] and "eval_rewards/accuracies" in summary["stages"][0]
    config = (tmp_path / "run" / "config.yaml").read_text()
    for key in ("precision: bf16", "lr: 5.0e-07", "beta: 0.01", "logging_steps: 10", "eval_steps: 100",
                "gradient_checkpointing: 'on'", "hub_model_id: zephyr-7b-dpo-full", "eval_prompts: 4"):
        assert key in config, key
    assert [c[:4] for c in hub if c[0] == "upload_folder"] == [
        ("upload_folder", "zephyr-7b-dpo-full", "stage-1", "stage-1"),
        ("upload_folder", "zephyr-7b-dpo-full", "final", "main")]


def test_same_run_from_trl_style_flags_with_eval_steps(recipe, tmp_path, hub):
    out = tmp_path / "flags"
    assert main(["train", "--config", str(recipe), "--no-progress", "--learning_rate", "1e-3", "--beta", "0.05",
                 "--output_dir", str(out), "--eval_steps", "2", "--logging_steps", "2",
                 "--per_device_train_batch_size", "4", "--push_to_hub", "false"]) == 0
    cfg = (out / "config.yaml").read_text()
    assert "lr: 0.001" in cfg and "beta: 0.05" in cfg
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    updates = [e["stage_update"] for e in log if "loss" in e]
    evals = [e.get("stage_update") for e in log if "eval/rewards/accuracies" in e]
    n = json.loads((out / "summary.json").read_text())["total_updates"]  # 22 pairs / 8 per update = 3
    assert n == 3 and updates == [2, 3]  # logging_steps 2, and the stage's last update
    assert evals == [2, None]  # eval_steps 2 within the stage, then the stage's end
    assert all("eval_rewards/margins" in e and "eval_logits/chosen" in e and "eval/logits/rejected" in e
               for e in log if "eval/rewards/margins" in e)
    assert not hub
