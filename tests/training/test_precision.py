"""model.precision (bf16 mixed vs bf16-pure vs fp32), reference pass under the same autocast, run.save_dtype."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from currydpo.config import load_config
from currydpo.errors import CurryError
from currydpo.training import loop, precision, responses

from conftest import make_records, tiny_config

CPU = torch.device("cpu")


def train(model_dir, out, precision_name, **sections):
    sections.setdefault("curriculum", {"schedule": "random"})
    optim = {"lr": 5e-7, "total_updates": 3, **sections.pop("optim", {})}
    model = {"precision": precision_name, **sections.pop("model", {})}
    cfg = tiny_config(model_dir, out, model=model, optim=optim, **sections)
    return loop.train(cfg, records=make_records(8))


def changed_fraction(before: dict, after: dict) -> float:
    return sum((before[k] != after[k]).sum().item() for k in before) / sum(v.numel() for v in before.values())


def first_update(out) -> dict:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return json.loads(f.readline())


def test_bf16_mixed_keeps_small_updates_and_bf16_pure_loses_them(tiny_model_dir, tmp_path):
    initial = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    train(tiny_model_dir, tmp_path / "mixed", "bf16")  # lr 5e-7, 3 updates: fp32 master weights keep them
    mixed = load_file(tmp_path / "mixed" / "final" / "model.safetensors")
    assert changed_fraction(initial, mixed) > 0.5
    with pytest.warns(UserWarning, match=r"bf16-pure: .* most updates round away") as caught:
        train(tiny_model_dir, tmp_path / "pure", "bf16-pure")
    assert len([w for w in caught if "bf16-pure" in str(w.message)]) == 1
    pure = load_file(tmp_path / "pure" / "final" / "model.safetensors")
    rounded = {k: v.to(torch.bfloat16).float() for k, v in initial.items()}  # what bf16-pure starts from
    assert changed_fraction(rounded, pure) < 0.05  # ~1%: only weights near 0 have a fine enough spacing


def test_no_warning_when_updates_are_resolved(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="bf16-pure"):
        median = precision.warn_if_updates_round_away(model, lr=5e-7)
    assert 0.005 < median < 0.05  # init std 0.02: median |w| ~ 0.0135
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.warn_if_updates_round_away(model, lr=1e-3)  # above the resolution
        assert precision.warn_if_updates_round_away(model.float(), lr=5e-7) is None  # fp32 weights: nothing to say


def test_bf16_half_spacing_matches_the_format():
    assert precision.bf16_half_spacing(0.02) == pytest.approx(2 ** -13 / 2)  # 0.02 in [2^-6, 2^-5): 7 mantissa bits
    assert precision.bf16_half_spacing(1.0) == pytest.approx(2 ** -7 / 2)


@pytest.mark.parametrize("loss", ["dpo", "plackett-luce"])  # the pair and the list batch paths
def test_first_update_margins_are_zero_under_bf16(tiny_model_dir, tmp_path, loss):
    train(tiny_model_dir, tmp_path / "same", "bf16", optim={"total_updates": 1}, loss={"name": loss})
    same = first_update(tmp_path / "same")
    assert max(abs(same[k]) for k in ("rewards/chosen", "rewards/rejected", "rewards/margins")) < 2e-5


def test_reference_outside_autocast_would_not_give_zero_margins(tiny_model_dir, tmp_path, monkeypatch):
    """The counterfactual of the test above: an fp32 reference pass against a bf16 policy."""
    shared = responses.logps_for_rows_shared
    monkeypatch.setattr(responses, "logps_for_rows_shared", lambda acc, *a, **k: shared(None, *a, **k))
    train(tiny_model_dir, tmp_path / "mismatch", "bf16", optim={"total_updates": 1})
    got = first_update(tmp_path / "mismatch")
    assert max(abs(got[k]) for k in ("rewards/chosen", "rewards/rejected", "rewards/margins")) > 2e-5


def test_bf16_and_fp32_per_pair_losses_agree(tiny_model_dir, tmp_path, monkeypatch):
    # a reference different from the policy, so even the first update's losses are not all log 2
    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    ref.save_pretrained(tmp_path / "ref")
    per_pair = {}
    from currydpo.training.objective import PairObjective

    real = PairObjective.loss
    for name in ("fp32", "bf16"):
        seen = per_pair[name] = []
        monkeypatch.setattr(PairObjective, "loss", lambda self, x, seen=seen: (
            lambda r: (seen.append(r[2].detach().double()), r)[1])(real(self, x)))
        train(tiny_model_dir, tmp_path / name, name, model={"ref_model": str(tmp_path / "ref")}, optim={"lr": 1e-3})
    fp32, bf16 = torch.cat(per_pair["fp32"]), torch.cat(per_pair["bf16"])
    assert len(fp32) == 12 and (fp32 - 0.6931).abs().max() > 0.05
    torch.testing.assert_close(bf16, fp32, rtol=1e-2, atol=1e-3)
    assert (bf16 - fp32).abs().max() > 1e-7  # the bf16 run really computed in bf16


def test_save_dtype(tiny_model_dir, tmp_path):
    train(tiny_model_dir, tmp_path / "b", "fp32", curriculum={"schedule": "iterative"}, run={"save_dtype": "bf16"})
    for d in ("stage-1", "stage-3", "final"):
        saved = load_file(tmp_path / "b" / d / "model.safetensors")
        assert {v.dtype for v in saved.values()} == {torch.bfloat16}
        assert json.loads((tmp_path / "b" / d / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "final", dtype="auto")
    assert reloaded.dtype == torch.bfloat16
    assert set(saved) == set(load_file(os.path.join(tiny_model_dir, "model.safetensors")))  # tied head once
    # auto: the dtype the starting checkpoint was saved in (here bf16), whatever the training precision
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(tmp_path / "m16")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "m16")
    train(tmp_path / "m16", tmp_path / "a", "fp32", optim={"total_updates": 1})
    assert {v.dtype for v in load_file(tmp_path / "a" / "final" / "model.safetensors").values()} == {torch.bfloat16}
    assert precision.save_dtype("auto", tiny_model_dir) == torch.float32
    assert precision.save_dtype("fp32", str(tmp_path / "m16")) == torch.float32


@pytest.mark.parametrize("override, message", [
    ("model.precision=fp16", "fp16 is not supported"),
    ("model.precision=bf17", "'bf17' is not valid; choose one of: auto, fp32, bf16, bf16-pure"),
    ("run.save_dtype=fp16", "'fp16' is not valid; choose one of: auto, fp32, bf16"),
])
def test_bad_precision_config(override, message):
    with pytest.raises(CurryError, match=message):
        load_config(overrides=["model.path=x", override])


def test_resolve_precision_rule(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.resolve_precision("auto", CPU, None) == "fp32"
    assert precision.resolve_precision("auto", cuda, None) == "bf16"
    assert precision.resolve_precision("auto", cuda, "no") == "bf16"  # 'no' is accelerate's default: no opinion
    assert precision.resolve_precision("auto", CPU, "bf16") == "bf16"  # the launcher asked for bf16
    assert precision.resolve_precision("bf16-pure", cuda, "bf16") == "bf16-pure"
    assert precision.resolve_precision("fp32", cuda, "no") == "fp32"
    with pytest.raises(CurryError, match="fp32 disagrees with accelerate's mixed_precision bf16"):
        precision.resolve_precision("fp32", cuda, "bf16")
    with pytest.raises(CurryError, match="mixed_precision 'fp16' is not supported"):
        precision.resolve_precision("auto", cuda, "fp16")


def test_bf16_on_a_gpu_without_bf16_is_a_one_line_error(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    assert precision.resolve_precision("auto", cuda, None) == "fp32"  # auto falls back
    for name in ("bf16", "bf16-pure"):
        with pytest.raises(CurryError) as e:
            precision.resolve_precision(name, cuda, None)
        assert "Tesla V100-SXM2-16GB does not support" in str(e.value) and "set model.precision fp32" in str(e.value)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("launch, recipe, expected", [
    ("ddp.yaml", "curry_dpo_ultrafeedback.yaml", "bf16"),
    ("ddp.yaml", "lora_single_gpu.yaml", "bf16"),
    ("cpu_2proc.yaml", None, "fp32"),
])
def test_example_configs_agree_on_precision(launch, recipe, expected, monkeypatch):
    """The shipped accelerate configs and recipes mean what their comments say."""
    import yaml

    root = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
    with open(os.path.join(root, "accelerate", launch)) as f:
        mixed = yaml.safe_load(f)["mixed_precision"]
    asked = load_config(os.path.join(root, recipe)).model.precision if recipe else "auto"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    device = torch.device("cuda", 0) if expected == "bf16" else CPU
    assert precision.resolve_precision(asked, device, mixed) == expected
