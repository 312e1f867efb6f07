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
