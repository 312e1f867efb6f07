"""Every file in examples/ runs: at reduced size here (a tiny model in place of the hub model, the shipped
tiny data in place of the hub data), and as shipped it is refused at once, naming what to replace."""

import json
import time
from pathlib import Path

import pytest

from currydpo.api import train
from currydpo.config import load_config
from currydpo.errors import CurryError
from currydpo.experiments.compare import load_spec, run_compare

ROOT = Path(__file__).parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.yaml"))
COMPARE_SPECS = ["compare.yaml", "compare_losses.yaml", "compare_losses_frontier.yaml", "smollm2_oasst.yaml"]
TRAIN_CONFIGS = ["curri_dpo_released_pairs.yaml", "curry_dpo_ultrafeedback.yaml", "lora_single_gpu.yaml", "run.yaml"]
RECIPES = ["handbook_zephyr_dpo.yaml"]  # run in tests/test_handbook_recipe.py, the file as it is


def test_every_example_is_covered_here():
    assert sorted(COMPARE_SPECS + TRAIN_CONFIGS + RECIPES) == EXAMPLES


def curri_dpo_file(tmp_path) -> str:
    def level(chosen, rejected):
        return {"conversation": [{"role": "user", "content": "Name a fruit."},
                                 {"role": "assistant", "chosen_content": chosen, "rejected_content": rejected}]}
    rows = [{"easy": level(f"An apple {i}.", "I cannot help."), "medium": level(f"An apple {i}.", "A carrot."),
             "hard": level(f"An apple {i}.", f"Apple {i}!!")} for i in range(6)]
    path = tmp_path / "released.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("name", TRAIN_CONFIGS)
def test_train_example_runs_at_reduced_size(name, tmp_path, tiny_model_dir):
    data = curri_dpo_file(tmp_path) if "curri_dpo" in name else str(ROOT / "examples" / "ultrafeedback_tiny.jsonl")
    cfg = load_config(str(ROOT / "examples" / name), [
        f"model.path={tiny_model_dir}", f"data.path={data}", "model.precision=fp32", "data.max_length=128",
        "data.max_prompt_length=64", "optim.total_updates=3", "optim.batch_size=2", "optim.grad_accum=1",
        "data.eval_fraction=0.0", f"run.output_dir={tmp_path / 'run'}", "run.progress=false"])
    summary = train(cfg)
    assert summary["total_updates"] == 3 and (tmp_path / "run" / "final" / "model.safetensors").exists()


@pytest.mark.parametrize("name", COMPARE_SPECS)
def test_compare_example_as_shipped_is_refused_at_once_naming_what_to_replace(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without the Hub, and no network wait in tests
    monkeypatch.chdir(tmp_path)  # the spec's relative paths (runs/world-..., ../shared/...) resolve to nothing
    spec = load_spec(str(ROOT / "examples" / name), output_dir=str(tmp_path / "out"))
    t0 = time.perf_counter()
    with pytest.raises(CurryError, match=rf"examples/{name}: arm sft: model.path .*(not found|no such local dir)"):
        run_compare(spec, progress=False)
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "out" / "spec.json").exists()  # nothing to block the directory for the next spec


def test_compare_example_runs_at_reduced_size(tmp_path, tiny_model_dir):
    spec = load_spec(str(ROOT / "examples" / "compare.yaml"), output_dir=str(tmp_path / "out"))
    spec.base["model"] = {"path": tiny_model_dir}
    spec.base["data"].update(path=str(ROOT / "examples" / "ultrafeedback_tiny.jsonl"), max_length=128,
                             max_prompt_length=64, eval_fraction=0.0)
    spec.base["optim"].update(total_updates=2, batch_size=2)
    spec.seeds, spec.judge = [1], None  # the shipped judge is a hub reward model
    spec.prompts = str(ROOT / "examples" / "eval_prompts.jsonl")
    spec.generation.update(max_new_tokens=4, batch_size=12)
    report = run_compare(spec, progress=False)
    assert {r["arm"] for r in report["rows"]} == {"sft", *spec.arms} and len(spec.arms) == 4
