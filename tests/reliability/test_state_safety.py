"""What --resume reads is safe and checked: `torch.load(weights_only=True)` (a crafted ``state/rng.pt`` runs no
code), every ``state/`` file carries a SHA-256 so a damaged one is named in one line; non-finite weights are
never saved; an empty ``data.path`` is an error; src/ has no unsafe loader."""

import json
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from _reliability import REPO, write_config, write_ranked

from currydpo.cli import main
from currydpo.training import checkpoint, loop


def stopped_run(tiny_model_dir, tmp_path, monkeypatch, capsys) -> tuple[Path, Path]:
    """A run stopped (SIGTERM to itself, in-process) after update 2 of stage 1: its state/ is mid-stage, so
    --resume reads every state file. Returns (config, output dir)."""
    out = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, write_ranked(tmp_path / "d.jsonl"), out,
                          run={"save_every": 0})
    real = loop.log_metrics

    def stop_at_two(run, progress, entry):
        real(run, progress, entry)
        if entry["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "log_metrics", stop_at_two)
    assert main(["train", "--config", str(config), "--no-progress"]) == 128 + signal.SIGTERM
    monkeypatch.setattr(loop, "log_metrics", real)
    capsys.readouterr()
    return config, out


class Payload:  # what an attacker pickles: unpickling it calls open(marker, "w")
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_rng_file_runs_no_code_on_resume(tiny_model_dir, tmp_path, monkeypatch, capsys):
    config, out = stopped_run(tiny_model_dir, tmp_path, monkeypatch, capsys)
    marker = tmp_path / "code-ran"
    torch.save({"torch": Payload(str(marker))}, out / "state" / "rng.pt")
    checkpoint.write_checksums(out / "state")  # an attacker can rewrite the checksums too
    assert main(["train", "--config", str(config), "--no-progress", "--resume"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1, err
    assert err[0] == (f"currydpo train: error: --resume: {out}/state/rng.pt cannot be read (UnpicklingError): it is "
                      f"damaged, or holds more than tensors and plain values (nothing in it was run)")
    assert not marker.exists()


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = [("trainable.safetensors", flip_a_bit, "is damaged"), ("optim.pt", truncate, "is damaged"),
          ("rng.pt", flip_a_bit, "is damaged"), ("position.json", lambda p: p.write_text('{"stage": 9'), "is damaged"),
          ("config.yaml", lambda p: p.unlink(), "is missing from the checkpoint")]


@pytest.mark.parametrize("name,damage,expect", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_state_file_is_named_in_one_line(name, damage, expect, tiny_model_dir, tmp_path, monkeypatch,
                                                    capsys):
    config, out = stopped_run(tiny_model_dir, tmp_path, monkeypatch, capsys)
    damage(out / "state" / name)
    assert main(["train", "--config", str(config), "--no-progress", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"currydpo train: error: --resume: {out}/state/{name} {expect}"), err


def test_a_damaged_reference_cache_is_named_in_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    config, out = stopped_run(tiny_model_dir, tmp_path, monkeypatch, capsys)
    truncate(out / "refcache" / "initial.pt")
    assert main(["train", "--config", str(config), "--no-progress", "--resume"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err == [f"currydpo train: error: {out}/refcache/initial.pt is damaged (RuntimeError); delete the run "
                   f"directory's refcache/ and state/ and train again"], err


def test_state_loads_with_weights_only_and_resumes(tiny_model_dir, tmp_path, monkeypatch, capsys):
    config, out = stopped_run(tiny_model_dir, tmp_path, monkeypatch, capsys)
    for name in ("optim.pt", "rng.pt"):
        torch.load(out / "state" / name, weights_only=True)  # plain tensors, numbers and lists only
    assert set(json.loads((out / "state" / "checksums.json").read_text())) == {
        "config.yaml", "optim.pt", "position.json", "rng.pt", "trainable.safetensors"}
    assert main(["train", "--config", str(config), "--no-progress", "--resume"]) == 0


def test_non_finite_weights_are_never_saved(tiny_model_dir, tmp_path, monkeypatch, capsys):
    # A step that leaves NaN weights behind while its loss and gradient were finite (the NaN shows only in the
    # next forward): the end-of-stage save must refuse, naming the stage, not write stage-1/ all-NaN.
    out = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, write_ranked(tmp_path / "d.jsonl"), out,
                          run={"save_every": 0}, optim={"total_updates": 3})
    real = loop.train_step

    def poison_after(run, *a, **k):
        metrics = real(run, *a, **k)
        with torch.no_grad():
            next(run.model.parameters()).fill_(math.nan)
        return metrics

    monkeypatch.setattr(loop, "train_step", poison_after)
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"currydpo train: error: non-finite values: the weights are non-finite at the end of stage 1; "
                   f"nothing was saved, the last checkpoint is in {out}/state (lower optim.lr or loss.beta, or check "
                   f"the data)")
    assert not (out / "stage-1").exists() and not (out / "state").exists()


@pytest.mark.parametrize("key", ["optim.lr=inf", "loss.beta=nan", "loss.beta=.inf", "optim.max_grad_norm=-inf"])
def test_non_finite_config_floats_are_refused(key, tiny_model_dir, tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, write_ranked(tmp_path / "d.jsonl"), tmp_path / "o")
    assert main(["train", "--config", str(config), "--no-progress", "--set", key]) == 2
    err = capsys.readouterr().err.strip()
    assert f"config key '{key.split('=')[0]}' must be a finite number" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_an_empty_data_path_is_an_error(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_ranked(tmp_path / "would-be-read.jsonl")  # an empty path used to train on every data file in cwd
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, "", tmp_path / "o")
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    assert "data path is empty: set data.path" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_src_has_no_unsafe_loader():
    """torch.load without weights_only=True, yaml.load, pickle, eval/exec and shell=True: none in src/."""
    unsafe = re.compile(r"torch\.load\((?![^)]*weights_only=True)|yaml\.load\(|\bpickle\b|(?<![.\w])eval\(|"
                        r"(?<![.\w])exec\(|shell=True")
    found = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in sorted((REPO / "src").rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if unsafe.search(line)]
    assert not found, found
