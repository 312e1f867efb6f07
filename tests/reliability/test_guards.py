"""Numeric guards and remote-code safety.

- NaN/inf in the loss or the gradients stops the run with a one-line error naming the
  step, stage and batch, after saving the last good state (exit code 2 from the CLI);
- a reference log-prob of -inf is caught when the reference cache is built;
- code shipped with a model never runs unless the user passes --trust-remote-code.
"""

import json
import math

import pytest
import torch
from _reliability import write_config, write_ranked
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from currydpo.cli import main
from currydpo.config import TrainConfig, load_config
from currydpo.errors import CurryError
from currydpo.training import loop
from currydpo.training import setup as run_setup
from currydpo.training.objective import PairObjective


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_nan_loss_stops_with_one_line_and_saves_the_last_good_state(tiny_model_dir, tmp_path, monkeypatch,
                                                                    capsys):
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, write_ranked(tmp_path / "d.jsonl"), out,
                          run={"save_every": 0})
    real_loss, real_step, calls, before = PairObjective.loss, loop.train_step, {"n": 0}, {}

    def nan_at_third(self, x):
        calls["n"] += 1
        loss, metrics, per_pair = real_loss(self, x)
        return (loss * math.nan if calls["n"] == 3 else loss), metrics, per_pair

    def snapshot_step(run, *a, **k):
        before["weights"] = _trainable(run.accelerator.unwrap_model(run.model))
        return real_step(run, *a, **k)

    monkeypatch.setattr(PairObjective, "loss", nan_at_third)
    monkeypatch.setattr(loop, "train_step", snapshot_step)
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("currydpo train: error: non-finite values: loss is nan at stage 1, update 3, step 3, "
                          "pairs [")
    assert f"last good state is saved in {out}/state" in err
    pos = json.loads((out / "state" / "position.json").read_text())
    assert (pos["stage"], pos["update"], pos["global_step"]) == (0, 2, 2)  # --resume redoes update 3
    saved = load_file(out / "state" / "trainable.safetensors")
    assert saved.keys() == before["weights"].keys()
    for k, v in saved.items():
        assert torch.equal(v, before["weights"][k]), k  # the weights before the bad step
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_huge_learning_rate_stops_and_never_saves_non_finite_weights(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, write_ranked(tmp_path / "d.jsonl"), out,
                          optim={"lr": 1e30, "max_grad_norm": 0.0})
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: non-finite values:" in err and "stage 1, update" in err
    saved = load_file(out / "state" / "trainable.safetensors")
    assert all(torch.isfinite(v).all() for v in saved.values())


def test_minus_infinity_reference_logprob_is_caught_when_caching(tiny_model_dir, tmp_path, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    head = model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
    data = write_ranked(tmp_path / "d.jsonl")
    cfg = load_config(str(write_config(tmp_path / "run.yaml", tiny_model_dir, data, tmp_path / "out")))
    from currydpo.pipeline import prepare
    from currydpo.training.model import load_tokenizer
    from currydpo.training.tokenize import encode_records

    # Make the first response token of record 0, response 3 (a rejected one) impossible: logit -inf.
    recs = prepare(cfg).records
    enc = encode_records(recs, load_tokenizer(str(tiny_model_dir)), max_length=512, max_prompt_length=256,
                         progress=False)
    token = enc[0][3].response_ids[0]
    with torch.no_grad():
        biased.bias[token] = -math.inf
    model.set_output_embeddings(biased)
    monkeypatch.setattr(run_setup, "load_model", lambda *a, **k: model)
    with pytest.raises(CurryError, match=r"reference 'initial' gives a non-finite log-prob to \d+ responses "
                                         r"\(first: record \d+, response \d+\).*zero probability"):
        loop.train(cfg)
    assert not (tmp_path / "out" / "state").exists()


REMOTE_CONFIG = {"model_type": "evil", "architectures": ["EvilForCausalLM"],
                 "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                              "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM",
                              "AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}


def test_remote_code_is_not_run_without_the_flag(tmp_path, capsys):
    assert TrainConfig().model.trust_remote_code is False
    model = tmp_path / "remote"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(REMOTE_CONFIG))
    marker = tmp_path / "code-ran"
    for name in ("configuration_evil", "modeling_evil", "tokenization_evil"):
        (model / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    data = write_ranked(tmp_path / "d.jsonl")
    config = write_config(tmp_path / "run.yaml", model, data, tmp_path / "out")
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"currydpo train: error: cannot load tokenizer from {model}:")
    assert not marker.exists()


def test_trust_remote_code_flag_reaches_the_loaders(tmp_path, monkeypatch):
    from currydpo.cli import build_parser
    from currydpo.cli.train_cmd import config_from_args
    from currydpo.training import model as model_mod

    args = build_parser().parse_args(["train", "--model", str(tmp_path), "--trust-remote-code"])
    assert config_from_args(args).model.trust_remote_code is True
    args = build_parser().parse_args(["train", "--model", str(tmp_path)])
    assert config_from_args(args).model.trust_remote_code is False
    seen = []

    def fake(path, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise OSError("stop here")

    monkeypatch.setattr(model_mod.AutoTokenizer, "from_pretrained", fake)
    monkeypatch.setattr(model_mod.AutoModelForCausalLM, "from_pretrained", fake)
    for flag in (True, False):
        with pytest.raises(CurryError):
            model_mod.load_tokenizer(str(tmp_path), trust_remote_code=flag)
        cfg = load_config(None, [f"model.path={tmp_path}", f"model.trust_remote_code={flag}"]).model
        with pytest.raises(CurryError):
            model_mod.load_model(str(tmp_path), cfg, torch.device("cpu"))
    assert seen == [True, True, False, False]


def test_full_disk_is_a_one_line_error_and_the_run_resumes(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A full disk while writing state/ (safetensors raises its own error type): one line, exit 2, the last
    complete checkpoint intact and no half-written one; after space is freed, --resume finishes the run."""
    from currydpo.training import checkpoint

    out = tmp_path / "out"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, write_ranked(tmp_path / "d.jsonl"), out)
    real_save, calls = checkpoint.save_file, {"n": 0}

    class SafetensorError(Exception):  # safetensors' wrapped I/O error is not an OSError
        pass

    def full_at_third(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            real_save(tensors, path, *a, **k)  # a partial file, as a full disk leaves one
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", full_at_third)
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "--resume" in err[0]
    assert err[0].startswith("currydpo train: error: no space left on device")
    assert json.loads((out / "state" / "position.json").read_text())["global_step"] == 2  # the second save
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and "state" in p.name]  # no temp left
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    assert main(["train", "--config", str(config), "--no-progress", "--resume"]) == 0
    assert (out / "final" / "model.safetensors").exists()
    with pytest.raises(SafetensorError):  # --debug: the traceback, as for every error
        monkeypatch.setattr(checkpoint, "save_file", lambda *a, **k: (_ for _ in ()).throw(
            SafetensorError("No space left on device")))
        main(["train", "--config", str(config), "--no-progress", "--debug", "--set", "run.output_dir=" + str(
            tmp_path / "other")])
