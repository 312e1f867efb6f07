"""model.load_in_4bit / load_in_8bit and model.attention where the device or install cannot honour them: one
line naming the key and what to do, before any work."""

import pytest

from currydpo.cli import main

from conftest import make_records


@pytest.fixture
def data(tmp_path):
    import json

    rows = [{"prompt": r.prompt, "responses": [{"text": x.text, "score": x.score} for x in r.responses]}
            for r in make_records(4, 3)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.mark.parametrize("sets, expect", [
    (["model.load_in_4bit=true", "model.lora=true"], "model.load_in_4bit: bitsandbytes quantisation needs a CUDA GPU"),
    (["model.load_in_8bit=true"], "quantised weights cannot be trained directly; set model.lora true"),
    (["model.attention=flash_attention_2"], "model.attention flash_attention_2: "),
])
def test_unsupported_loading_is_one_line(sets, expect, tmp_path, tiny_model_dir, data, capsys):
    args = ["train", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(tmp_path / "run"),
            "--no-progress"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("currydpo train: error: ") and expect in lines[-1], lines
    assert not (tmp_path / "run").exists()
