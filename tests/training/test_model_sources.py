"""A model that cannot load is refused in one line before any data is read or any retry loop runs."""

import json

import pytest

from currydpo.errors import CurryError
from currydpo.training.loop import train
from currydpo.training.model import load_tokenizer

from conftest import make_records, tiny_config


def test_an_adapter_directory_as_the_model_names_lora_and_merging(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base", "r": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(CurryError, match=r"is a LoRA adapter, not a model: give its base model as model.path with "
                                         r"model.lora true .* or merge it first"):
        load_tokenizer(str(adapter))


def test_an_uncached_hub_name_offline_fails_at_once_before_the_data(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", model={"path": "no-such-org/no-such-model-xyz"},
                      data={"path": str(tmp_path / "missing.jsonl")})  # the model is checked first
    with pytest.raises(CurryError, match=r"model.path no-such-org/no-such-model-xyz: no such local directory, not in "
                                         r"the Hugging Face cache, and HF_HUB_OFFLINE is set"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # nothing left behind
    train(tiny_config(tiny_model_dir, tmp_path / "ok", optim={"total_updates": 1}), make_records())  # a dir loads
