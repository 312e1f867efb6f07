"""Shared helpers for the reliability tests: a ranked JSONL data file, a YAML run config,
the `currydpo train` CLI as a subprocess that can be paused at a named point and killed,
and checks that a checkpoint directory is complete."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
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


def descendants(pid: int) -> list[int]:
    """Every live process started (directly or not) by ``pid``: a launcher's workers too."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pids) -> list[int]:
    """Those of ``pids`` that still run (a zombie has ended: it only waits to be reaped)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def mentioning(text: str) -> list[int]:
    """PIDs of the live processes (not this one) whose command line mentions ``text`` (a test's temp dir)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.info["pid"] != os.getpid() and any(text in a for a in p.info["cmdline"] or ()):
            found.append(p.info["pid"])
    return alive(found)


def reap(pids, within: float = 10.0) -> list[int]:
    """Wait up to ``within`` seconds for ``pids`` to end, SIGKILL those that did not; returns those survivors."""
    deadline = time.monotonic() + within
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = alive(pids)
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return survivors


def start_paused(cmd: list[str], point: str, log: Path, timeout: float = 120, **extra_env) -> subprocess.Popen:
    """Start ``cmd`` with ``CURRYDPO_TEST_PAUSE_AT=point`` and wait until it pauses there. On failure every process
    it started is killed before the error is raised."""
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
    except BaseException:
        kill_all(proc)
        raise
    return proc


def kill_all(proc: subprocess.Popen) -> list[int]:
    """SIGKILL ``proc``'s process group (only the launcher, under torch's elastic agent: it starts each worker in
    a session of its own), then reap: returns the PIDs that outlived their launcher by 10 s (killed now)."""
    started = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return reap(started)


def run_until_paused(cmd: list[str], point: str, log: Path, timeout: float = 120, **extra_env) -> None:
    """Start ``cmd`` paused at ``point`` (`start_paused`), SIGKILL it, and check that every process it started
    (a launcher's workers too) died with it, by PID."""
    proc = start_paused(cmd, point, log, timeout, **extra_env)
    survivors = kill_all(proc)
    assert proc.returncode == -signal.SIGKILL
    assert not survivors, f"processes {survivors} outlived their killed launcher {proc.pid}"


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
            assert set(torch.load(d / "optim.pt", weights_only=True)) == {"optimizer", "scheduler"}
            assert "torch" in torch.load(d / "rng.pt", weights_only=True)
            assert (d / "config.yaml").exists()
        elif d.name.startswith("stage-") or d.name == "final":
            AutoModelForCausalLM.from_pretrained(d)
            AutoTokenizer.from_pretrained(d)
            assert (d / "currydpo_config.yaml").exists()
        elif d.name == "refcache":
            for f in d.glob("*.pt"):
                assert torch.load(f, weights_only=True).ndim == 1
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
    return [e["loss"] for e in map(json.loads, open(out / "metrics.jsonl")) if "loss" in e]  # eval/* lines: held-out
