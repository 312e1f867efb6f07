"""Shared helpers for the reliability tests: a ranked JSONL data file, a YAML run config,
the `currydpo train` CLI as a subprocess that can be paused at a named point and killed,
and checks that a checkpoint directory is complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from conftest import make_records

REPO = Path(__file__).resolve().parents[2]


def write_ranked(path: Path, n_prompts: int = 8, seed: int = 0) -> Path:
    """A `ranked`-format JSONL file: {"prompt": str, "responses": [{"text": str, "score": float}]}."""
    with open(path, "w") as f:
        for r in make_records(n_prompts, seed=seed):
            f.write(json.dumps({"prompt": r.prompt,
                                "responses": [{"text": x.text, "score": x.score} for x in r.responses]}) + "\n")
    return path


def write_config(path: Path, model_dir, data_path, output_dir, **sections) -> Path:
    """A 3-stage iterative YAML config with tiny sizes; ``sections`` override keys per section."""
    cfg = {"model": {"path": str(model_dir)},
           "data": {"path": str(data_path), "format": "ranked"},
           "curriculum": {"schedule": "iterative", "stages": 3, "shuffle_within_stage": True},
           # one optimiser over all stages (set explicitly: the iterative default restarts per stage)
           "optim": {"lr": 1e-3, "batch_size": 4, "warmup_ratio": 0.0, "epochs_per_stage": 2,
                     "across_stages": "continue"},
           "run": {"output_dir": str(output_dir), "save_every": 1, "seed": 0, "progress": False}}
    for k, v in sections.items():
        cfg.setdefault(k, {}).update(v)
    path.write_text(yaml.safe_dump(cfg))
    return path


def env(**extra) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra)
    e["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), e.get("PYTHONPATH", "")])
    return e


def train_cmd(config: Path, *args: str) -> list[str]:
    """The train CLI, run through `paused_train.py` so `run_until_paused` can stop it at a named point."""
    return [sys.executable, str(Path(__file__).with_name("paused_train.py")), "train", "--config", str(config),
            "--no-progress", *args]


def run_until_paused(cmd: list[str], point: str, log: Path, timeout: float = 120, **extra_env) -> None:
    """Start ``cmd`` with ``CURRYDPO_TEST_PAUSE_AT=point``, wait until it pauses there, SIGKILL it
    (with every process it started: a launcher's workers too)."""
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=env(CURRYDPO_TEST_PAUSE_AT=point, **extra_env), stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while "currydpo-paused" not in log.read_text():
            if proc.poll() is not None:
                raise AssertionError(f"exited with {proc.returncode} before pausing at {point}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"did not pause at {point} within {timeout}s:\n{log.read_text()}")
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def check_complete(out: Path) -> list[str]:
    """Every visible checkpoint dir under ``out`` loads completely; returns their names.

    Hidden entries (``.state.*.tmp``: an interrupted atomic write) are allowed: nothing reads them.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    found = []
    for d in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d.name == "state":
            pos = json.loads((d / "position.json").read_text())
            assert {"stage", "update", "global_step", "order", "log_lines"} <= set(pos)
            if (d / ".metadata").exists():  # sharded (FSDP2): a torch distributed checkpoint, a file per process
                assert len(list(d.glob("*.distcp"))) >= 2
            else:
                assert load_file(d / "trainable.safetensors")
            assert set(torch.load(d / "optim.pt", weights_only=False)) == {"optimizer", "scheduler"}
            assert "torch" in torch.load(d / "rng.pt", weights_only=False)
            assert (d / "config.yaml").exists()
        elif d.name.startswith("stage-") or d.name == "final":
            AutoModelForCausalLM.from_pretrained(d)
            AutoTokenizer.from_pretrained(d)
            assert (d / "currydpo_config.yaml").exists()
        elif d.name == "refcache":
            for f in d.glob("*.pt"):
                assert torch.load(f).ndim == 1
        else:
            raise AssertionError(f"unexpected directory {d}")
        found.append(d.name)
    return found


def launch_2proc(accelerate_config: str, *args: str, pausable: bool = False) -> list[str]:
    """``accelerate launch`` of 2 processes on CPUs (run with ``env(ACCELERATE_USE_CPU="true")``) of the
    currydpo CLI, or with ``pausable`` of `paused_train.py`, for `run_until_paused`."""
    program = [str(Path(__file__).with_name("paused_train.py"))] if pausable else ["-m", "currydpo"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "examples" / "accelerate" / accelerate_config), "--main_process_port", "0",
            *program, *args]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in open(out / "metrics.jsonl")]
