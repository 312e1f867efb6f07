"""What a run logs: TRL's metric names in metrics.jsonl, train/ and eval/ tags in the trackers."""

import glob
import json

import pytest

from currydpo.errors import CurryError
from currydpo.training.loop import train

from conftest import make_records, tiny_config


def test_heldout_metrics_reach_metrics_jsonl_and_tensorboard(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, out, data={"eval_fraction": 0.25},
                      curriculum={"schedule": "iterative", "stages": 3},
                      optim={"total_updates": 6}, run={"report_to": "tensorboard"})
    summary = train(cfg, make_records(n_prompts=12))
    log = [json.loads(line) for line in open(out / "metrics.jsonl")]
    evals = [e for e in log if "eval/rewards/accuracies" in e]
    assert [(e["stage"], e["step"]) for e in evals] == [(1, 2), (2, 4), (3, 6)]
    assert [e["eval/rewards/accuracies"] for e in evals] == [s["eval/rewards/accuracies"] for s in summary["stages"]]
    steps = [e for e in log if "loss" in e]
    assert len(steps) == 6 and {"learning_rate", "epoch", "num_tokens", "grad_norm"} <= set(steps[0])
    assert all(b["num_tokens"] > a["num_tokens"] > 0 for a, b in zip(steps, steps[1:]))  # cumulative
    assert summary["final_loss"] == steps[-1]["loss"]  # the eval lines do not shadow the last loss

    events = glob.glob(str(out / "**" / "events.out.tfevents.*"), recursive=True)
    assert events, "no TensorBoard event file"
    acc = EventAccumulator(events[0])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/rewards/accuracies", "eval/rewards/accuracies"} <= tags
    got = [(e.step, round(e.value, 5)) for e in acc.Scalars("eval/rewards/accuracies")]
    assert got == [(e["step"], round(e["eval/rewards/accuracies"], 5)) for e in evals]
    assert not [t for t in tags if t == "lr" or t.endswith("/lr")]  # TRL name: learning_rate


def test_a_tracker_that_is_not_installed_is_an_error(tmp_path, tiny_model_dir, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", run={"report_to": "wandb"})
    with pytest.raises(CurryError, match=r"run.report_to wandb: the wandb package is not installed"):
        train(cfg, make_records())
    cfg = tiny_config(tiny_model_dir, tmp_path / "run2", run={"report_to": "tensorbord"})
    with pytest.raises(CurryError, match="unknown tracker 'tensorbord'"):
        train(cfg, make_records())


def test_a_stage_starved_by_the_lr_schedule_is_warned_about(tmp_path, tiny_model_dir, capsys):
    from currydpo.config import resolve
    from currydpo.training.setup import lr_schedule_warnings as warnings_for

    def lr_schedule_warnings(cfg, stage_updates):
        return warnings_for(cfg, stage_updates, resolve(cfg).across_stages)

    def cfg(ratio, mode, **optim):
        return tiny_config(tiny_model_dir, tmp_path / "run", curriculum={"schedule": "iterative", "stages": 3},
                           optim={"warmup_ratio": ratio, "across_stages": mode, **optim})

    # one schedule over 8 updates, warm-up 4: stages 1 and 2 (2 updates each) never reach optim.lr
    assert [w.split(":")[0] for w in lr_schedule_warnings(cfg(0.5, "continue"), [2, 2, 4])] == ["stage 1", "stage 2"]
    # warm-up 1 of 3 updates: stage 1's only update runs at lr 0
    assert lr_schedule_warnings(cfg(0.6, "continue"), [1, 1, 1])[0].startswith(
        "stage 1: all 1 update(s) run at learning rate 0")
    assert lr_schedule_warnings(cfg(0.5, "restart"), [2, 4, 4]) == []  # each stage its own warm-up: fine
    assert lr_schedule_warnings(cfg(0.1, "continue"), [20]) == []
    train(cfg(0.6, "continue", total_updates=3), make_records(n_prompts=8))
    assert "currydpo: warning: stage 1: all 1 update(s) run at learning rate 0" in capsys.readouterr().err


def test_final_holds_a_model_card(tmp_path, tiny_model_dir):
    from huggingface_hub import ModelCard

    out = tmp_path / "run"
    train(tiny_config(tiny_model_dir, out, data={"eval_fraction": 0.25}, curriculum={"schedule": "iterative"},
                      optim={"total_updates": 3}), make_records(n_prompts=12))
    card = ModelCard.load(str(out / "final" / "README.md"))
    assert "currydpo" in card.data.tags and card.data.library_name == "transformers"
    assert "| 1 | rejected rank >=4 | initial |" in card.text and "| 3 | rejected rank 2 | stage-2 |" in card.text
    assert "held-out reward accuracy" in card.text and "schedule: iterative" in card.text
