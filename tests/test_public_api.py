"""The top-level API, used exactly as the README shows it."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from conftest import make_records


def test_import_currydpo_is_light_and_lists_the_api():
    code = ("import sys, currydpo; print('torch' in sys.modules, sorted(n for n in currydpo.__all__ "
            "if not n.startswith('_')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded, names = out.split(" ", 1)
    assert loaded == "False"  # `currydpo --help` must not pay for torch
    for name in ("TrainConfig", "load_records", "build_pairs", "plan_stages", "train", "evaluate", "compare"):
        assert name in names


def test_unknown_top_level_name_is_an_attribute_error():
    import currydpo

    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        currydpo.trian  # noqa: B018


def test_readme_api_snippet_runs(tmp_path, tiny_model_dir):
    from currydpo import build_pairs, load_records, plan_stages, train

    recs = make_records(n_prompts=8)
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": r.prompt, "responses": [{"text": x.text, "score": x.score}
                                                                               for x in r.responses]})
                              for r in recs))
    records = load_records(str(data))
    assert len(records) == 8 and len(build_pairs(records, "best-vs-rest")) == 24
    config = {"model": {"path": str(tiny_model_dir)}, "data": {"path": str(data), "eval_fraction": 0.25},
              "curriculum": {"schedule": "iterative", "stages": 3},
              "optim": {"lr": 1e-3, "batch_size": 4, "total_updates": 6, "warmup_ratio": 0.0},
              "run": {"output_dir": str(tmp_path / "run"), "progress": False}}
    plan = plan_stages(config)
    assert [len(s.pairs) for s in plan.stages] == [6, 6, 6]  # 6 training prompts x 3 pairs, one per stage
    assert all(p.rejected_position == 4 for p in plan.stage_pairs(0))  # easiest first: R1 vs R4
    summary = train(config, optim__total_updates=3)
    assert summary["total_updates"] == 3 and len(summary["stages"]) == 3
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_train_accepts_trl_names_and_a_datasets_dataset(tmp_path, tiny_model_dir):
    """A TRL-named flat config + an in-memory Dataset trains the same weights as our config + records."""
    import datasets

    from currydpo import train

    recs = make_records(n_prompts=6, n_responses=3)
    rows = [{"prompt": r.prompt, "chosen": r.responses[0].text, "rejected": r.responses[j].text}
            for r in recs for j in (1, 2)] + [{"prompt": r.prompt, "chosen": r.responses[1].text,
                                               "rejected": r.responses[2].text} for r in recs]
    trl = {"model_name_or_path": str(tiny_model_dir), "learning_rate": 1e-3, "per_device_train_batch_size": 4,
           "beta": 0.2, "loss_type": ["sigmoid"], "max_steps": 4, "warmup_ratio": 0.0, "seed": 3,
           "output_dir": str(tmp_path / "trl"), "disable_tqdm": True, "logging_steps": 10}
    a = train(trl, records=datasets.Dataset.from_list(rows))
    ours = {"model": {"path": str(tiny_model_dir)}, "loss": {"name": "dpo", "beta": 0.2},
            "optim": {"lr": 1e-3, "batch_size": 4, "total_updates": 4, "warmup_ratio": 0.0},
            "run": {"seed": 3, "output_dir": str(tmp_path / "ours"), "progress": False}}
    for r in recs:  # the regrouped records: ranks from the pairwise order
        for k, x in enumerate(r.responses):
            x.score, x.rank = None, k
    b = train(ours, records=recs)
    assert a["total_updates"] == b["total_updates"] == 4
    wa, wb = (load_file(str(tmp_path / d / "final" / "model.safetensors")) for d in ("trl", "ours"))
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_train_hooks_see_every_update_and_stage(tiny_model_dir, tmp_path):
    from currydpo import train
    from currydpo.training.loop import Hooks

    from conftest import make_records, tiny_config

    updates, stages = [], []
    cfg = tiny_config(tiny_model_dir, tmp_path / "r", curriculum={"schedule": "iterative", "stages": 2},
                      optim={"total_updates": 4})
    summary = train(cfg, records=make_records(4), hooks=Hooks(
        on_batch=[lambda run, u: updates.append((u.stage, u.step, u.metrics["loss"]))],
        on_stage_end=[lambda run, k, info: stages.append((k, info["end_step"]))]))
    per_stage = [s["updates"] for s in summary["stages"]]
    assert [s for _, s, _ in updates] == [1, 2, 3, 4] and len(per_stage) == 2
    assert [k for k, _, _ in updates] == [0] * per_stage[0] + [1] * per_stage[1]
    assert stages == [(0, per_stage[0]), (1, 4)] and summary["final_loss"] == updates[-1][2]
