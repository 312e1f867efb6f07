"""--resume: it keeps the earlier stages' summaries, and refuses to continue a different run."""

import json

import pytest

from currydpo.config import from_dict, validate
from currydpo.errors import CurryError
from currydpo.training import loop

from conftest import make_records, tiny_config

SECTIONS = dict(data={"eval_fraction": 0.25}, curriculum={"schedule": "iterative", "stages": 3},
                optim={"epochs_per_stage": 1})


class Killed(Exception):
    pass


def interrupted_run(tmp_path, tiny_model_dir, monkeypatch, recs, at_stage=1):
    """Train until stage ``at_stage`` (0-based) is about to run its first update (the stage before it saved
    and ``state/`` advanced), then stop."""
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", **SECTIONS)

    def stop(run, k, info):
        if k + 1 == at_stage:
            raise Killed

    with pytest.raises(Killed):
        loop.train(cfg, records=recs, hooks=loop.Hooks(on_stage_end=[stop]))
    return cfg


def test_resumed_run_keeps_earlier_stage_summaries_and_heldout_metrics(tiny_model_dir, tmp_path, monkeypatch):
    recs = make_records(16)
    full = loop.train(tiny_config(tiny_model_dir, tmp_path / "full", **SECTIONS), records=recs)
    cfg = interrupted_run(tmp_path, tiny_model_dir, monkeypatch, recs, at_stage=1)
    executed = []
    resumed = loop.train(cfg, records=recs, resume=True,
                         hooks=loop.Hooks(on_batch=[lambda run, update: executed.append(update.step)]))
    assert len(executed) == sum(s["updates"] for s in full["stages"][1:])  # stage 1 was not trained again
    for a, b in zip(full["stages"], resumed["stages"]):
        assert set(a) == set(b) and "eval/rewards/accuracies" in b
        for k in a:
            if k.endswith("_seconds"):  # wall-clock time of the stage: a measurement, never reproducible
                continue
            assert b[k] == (pytest.approx(a[k], rel=1e-5) if isinstance(a[k], float) else a[k]), k
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [s["stage"] for s in saved["stages"]] == [1, 2, 3]


def test_resume_refuses_a_changed_config_but_not_a_harmless_key(tiny_model_dir, tmp_path, monkeypatch):
    recs = make_records(16)
    cfg = interrupted_run(tmp_path, tiny_model_dir, monkeypatch, recs)
    changed = validate(from_dict({"loss": {"beta": 0.3}, "curriculum": {"schedule": "single-pass"}}, cfg))
    with pytest.raises(CurryError, match=r"curriculum.schedule, loss.beta changed"):
        loop.train(changed, records=recs, resume=True)
    harmless = validate(from_dict({"run": {"progress": True}}, tiny_config(tiny_model_dir, tmp_path / "run",
                                                                          **SECTIONS)))
    assert loop.train(harmless, records=recs, resume=True)["stages"][-1]["stage"] == 3


def test_resume_refuses_edited_data(tiny_model_dir, tmp_path, monkeypatch):
    recs = make_records(16)
    cfg = interrupted_run(tmp_path, tiny_model_dir, monkeypatch, recs)
    recs[3].responses[0].score = 9.0  # same prompts and texts, one score edited
    with pytest.raises(CurryError, match="the data changed"):
        loop.train(cfg, records=recs, resume=True)

