"""model.disable_dropout (TRL's disable_dropout, default true): the policy's first update sees its own reference."""

import json
import shutil

import pytest
import torch

from currydpo.training import loop
from currydpo.training.model import add_lora, disable_dropout

from conftest import make_records, tiny_config


@pytest.fixture(scope="module")
def dropout_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama with attention dropout 0.1."""
    path = tmp_path_factory.mktemp("dropout") / "model"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.1}))
    return path


def first_margin(model_dir, out, disable):
    cfg = tiny_config(model_dir, out, model={"disable_dropout": disable},
                      curriculum={"schedule": "single-pass"}, optim={"total_updates": 1, "batch_size": 8},
                      loss={"beta": 1.0})
    loop.train(cfg, make_records(n_prompts=6, n_responses=3))
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["rewards/margins"]


def test_margins_are_zero_at_the_first_update_only_with_dropout_off(dropout_model_dir, tmp_path):
    torch.manual_seed(0)
    assert first_margin(dropout_model_dir, tmp_path / "off", True) == pytest.approx(0.0, abs=1e-5)
    assert abs(first_margin(dropout_model_dir, tmp_path / "on", False)) > 1e-3  # dropout noise in the reward


def test_every_dropout_is_zeroed_lora_included(dropout_model_dir):
    from currydpo.config import ModelConfig
    from currydpo.training.model import load_model

    cfg = ModelConfig(path=str(dropout_model_dir), lora=True, lora_dropout=0.05, lora_target_modules="q_proj,v_proj")
    model = add_lora(load_model(cfg.path, cfg, torch.device("cpu")), cfg)
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    rates += [m.attention_dropout for m in model.modules() if hasattr(m, "attention_dropout")]
    assert rates and all(r == 0.0 for r in rates)
    cfg.disable_dropout = False
    kept = add_lora(load_model(cfg.path, cfg, torch.device("cpu")), cfg)
    assert {m.p for m in kept.modules() if isinstance(m, torch.nn.Dropout)} == {0.05}
    assert disable_dropout(kept) > 0 and {m.p for m in kept.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
