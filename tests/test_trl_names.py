"""TRL's option names: mapped where the meaning is the same, refused by name where it is not."""

import dataclasses
import json
import subprocess
import sys

import pytest

from currydpo.config import load_config
from currydpo.errors import CurryError
from currydpo.trl_names import HANDBOOK, LAUNCH, LOSSES, NO_EFFECT, OLDER_TRL, REFUSED, SAME, from_trl

from conftest import make_records


def test_every_mapped_name_is_a_trl_option():
    trl = pytest.importorskip("trl")
    from trl.scripts.utils import DatasetMixtureConfig

    known = {f.name for c in (trl.DPOConfig, trl.ScriptArguments, trl.ModelConfig, DatasetMixtureConfig)
             for f in dataclasses.fields(c)}
    assert not [n for n in SAME if n not in known | OLDER_TRL | HANDBOOK]
    assert not [n for n in NO_EFFECT if n not in known | HANDBOOK | {"logging_dir", "overwrite_output_dir"}]
    assert not [n for n in REFUSED if n not in known | LAUNCH]
    assert {"disable_dropout", "attn_implementation", "dtype", "logging_steps", "eval_steps", "eval_strategy",
            "push_to_hub", "hub_model_id", "hub_private_repo", "load_in_4bit"} <= set(SAME)  # TRL's, all mapped
    import inspect

    import trl.trainer.dpo_trainer as dpo

    src = inspect.getsource(dpo)
    assert all(f'"{n}"' in src for n in LOSSES)  # every TRL loss we map is one TRL implements


def test_flat_trl_yaml_maps_to_our_sections(tmp_path, capsys):
    path = tmp_path / "trl.yaml"
    path.write_text("model_name_or_path: m\ndataset_name: d.jsonl\nlearning_rate: 5.0e-7\n"
                    "per_device_train_batch_size: 2\ngradient_accumulation_steps: 4\nbeta: 0.05\n"
                    "loss_type: [sigmoid, bco_pair]\nloss_weights: [0.8, 0.2]\noutput_dir: out\nbf16: false\n"
                    "report_to: none\nlr_scheduler_type: cosine\nwarmup_steps: 0.1\nlogging_steps: 5\n")
    cfg = load_config(str(path), ["run.seed=4", "max_steps=7"])
    assert (cfg.model.path, cfg.data.path, cfg.optim.lr, cfg.optim.batch_size, cfg.optim.grad_accum) == (
        "m", "d.jsonl", 5e-7, 2, 4)
    assert (cfg.loss.beta, cfg.loss.name, cfg.loss.weights) == (0.05, ["dpo", "bco-pair"], [0.8, 0.2])
    assert (cfg.run.output_dir, cfg.run.seed, cfg.model.precision, cfg.run.report_to) == ("out", 4, "fp32", "")
    assert (cfg.optim.lr_schedule, cfg.optim.warmup_ratio, cfg.optim.total_updates) == ("cosine", 0.1, 7)
    err = capsys.readouterr().err
    assert "note: TRL option learning_rate=5e-07 -> optim.lr=5e-07" in err
    assert "note: TRL option logging_steps=5 -> run.logging_steps=5" in err


@pytest.mark.parametrize("options, match", [
    ({"learning_rate": 1e-6, "eval_on_start": True}, "'eval_on_start' is neither one of our sections nor a TRL"),
    ({"optim": "paged_adamw_8bit"}, "optim 'paged_adamw_8bit' is not supported: we train with AdamW"),
    ({"padding_free": True}, "padding_free is not supported: responses are packed"),
    ({"torch_dtype": "float16"}, "torch_dtype 'float16': use bfloat16"),
    ({"loss_type": "aot"}, "TRL loss_type 'aot' has no currydpo equivalent"),
    ({"fp16": True}, "fp16 is not supported"),
    ({"warmup_steps": 50}, "warmup_steps 50: only a ratio"),
    ({"lr_scheduler_type": "polynomial"}, "lr_scheduler_type 'polynomial' is not supported"),
    ({"learning_rate": 1e-6, "optim": {"lr": 1e-6}}, "mixes our sections"),
])
def test_unsupported_trl_options_are_named(options, match):
    with pytest.raises(CurryError, match=match):
        from_trl(options, notes=False)


def test_cli_trains_from_a_trl_config(tmp_path, tiny_model_dir):
    """`currydpo train --config trl.yaml` in TRL's script names, on TRL-layout pairwise rows."""
    recs = make_records(n_prompts=10, n_responses=3)
    rows = [{"prompt": r.prompt, "chosen": r.responses[w].text, "rejected": r.responses[lo].text}
            for r in recs for w, lo in ((0, 1), (0, 2), (1, 2))]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in rows))
    (tmp_path / "trl.yaml").write_text(
        f"model_name_or_path: {tiny_model_dir}\ndataset_name: {tmp_path / 'pairs.jsonl'}\nlearning_rate: 1.0e-3\n"
        f"per_device_train_batch_size: 4\nbeta: 0.1\nloss_type: [sigmoid]\nmax_steps: 4\n"
        f"output_dir: {tmp_path / 'run'}\n")
    proc = subprocess.run([sys.executable, "-m", "currydpo", "train", "--config", str(tmp_path / "trl.yaml"),
                           "--set", "data.eval_fraction=0.2", "--set", "curriculum.schedule=iterative",
                           "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "note: TRL option model_name_or_path=" in proc.stderr
    assert "30 pairwise rows sharing a prompt regrouped into 10 ranked records" in proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["stages"]) == 2  # 3 ranked responses: (R1,R3) then (R1,R2), the curriculum is back
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    assert "currydpo" in (tmp_path / "run" / "final" / "README.md").read_text()  # the model card
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in log if "eval/rewards/accuracies" in e] == [1, 2]  # held-out, after each stage


def test_trl_names_knows_our_sections():
    from currydpo import config, trl_names

    assert tuple(config.SECTIONS) == trl_names.SECTIONS


def test_the_docs_table_is_the_code_table():
    from pathlib import Path

    from currydpo.trl_names import markdown_table

    doc = (Path(__file__).parents[1] / "docs" / "coming-from-trl.md").read_text()
    assert markdown_table() in doc, "docs/coming-from-trl.md is stale: paste trl_names.markdown_table()"


def test_every_mapped_name_is_a_train_flag():
    from currydpo.cli import build_parser

    args = build_parser().parse_args(["train", "--learning_rate", "1e-6", "--beta", "0.05", "--disable_dropout",
                                      "false", "--bf16"])
    assert (args.trl_learning_rate, args.trl_beta, args.trl_disable_dropout, args.trl_bf16) == (
        "1e-6", "0.05", "false", "true")
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    assert not [n for n in SAME if f"trl_{n}" not in flags and n not in ("dataset_mixture", "datasets")]
