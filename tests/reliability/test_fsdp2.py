"""FSDP2 sharded training on 2 CPU processes (gloo), launched as docs/multi-gpu.md says with
examples/accelerate/fsdp2_cpu_2proc.yaml, matches the one-process run with the same global batch
(2 processes x batch 2 == 1 process x batch 4), survives a SIGKILL with --resume, and trains LoRA
(with a separate reference model).
Equal to float tolerance, not bitwise: the runs sum the same gradients in a different order."""

import json
import subprocess
from pathlib import Path

import torch
from _reliability import (
    check_complete,
    env,
    final_weights,
    launch_2proc,
    losses,
    mentioning,
    reap,
    run_until_paused,
    write_config,
    write_ranked,
)
from safetensors.torch import load_file

from currydpo.config import load_config
from currydpo.training import loop

FSDP2 = "fsdp2_cpu_2proc.yaml"


def run_config(tmp_path, tiny_model_dir, out, **sections):
    data = write_ranked(tmp_path / "data.jsonl")
    sections = {"optim": {"batch_size": 2}, **sections}
    return write_config(tmp_path / "run.yaml", tiny_model_dir, data, out,
                        data={"path": str(data), "format": "ranked", "eval_fraction": 0.25}, **sections)


def one_process(config, out):
    return loop.train(load_config(str(config), [f"run.output_dir={out}", "optim.batch_size=4"]))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)


def test_fsdp2_two_processes_match_one_process_with_the_same_global_batch(tiny_model_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    config = run_config(tmp_path, tiny_model_dir, two)
    s1 = one_process(config, one)
    done = subprocess.run(launch_2proc(FSDP2, "train", "--config", str(config), "--no-progress"),
                          env=env(ACCELERATE_USE_CPU="true"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 12 updates" in done.stdout

    # state/ is a sharded checkpoint (a .distcp file per process); stage-K/ and final/ are whole
    # models that plain from_pretrained loads (check_complete loads them).
    assert check_complete(two) == ["final", "refcache", "stage-1", "stage-2", "stage-3", "state"]
    torch.testing.assert_close(losses(two), losses(one), rtol=1e-4, atol=1e-5)
    s2 = json.loads((two / "summary.json").read_text())
    for a, b in zip(s1["stages"], s2["stages"]):  # reference passes and held-out metrics, sharded
        assert abs(a["eval/rewards/margins"] - b["eval/rewards/margins"]) <= 1e-4, (a, b)
    assert max(e.get("grad_norm", 0) for e in map(json.loads, open(two / "metrics.jsonl"))) > 1.0  # clipping was on
    assert_same_weights(final_weights(one), final_weights(two))
    stage1 = [load_file(out / "stage-1" / "model.safetensors") for out in (one, two)]
    assert_same_weights(*stage1)


def test_fsdp2_sigkill_in_stage_2_then_resume_reaches_the_uninterrupted_weights(tiny_model_dir, tmp_path):
    try:
        sigkill_then_resume(tiny_model_dir, tmp_path)
    finally:  # whatever failed above, nothing this test started may outlive it
        left = mentioning(str(tmp_path))
        reap(left, within=0)
    assert not left, f"processes {left} of this test are still alive"


def sigkill_then_resume(tiny_model_dir, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    config = run_config(tmp_path, tiny_model_dir, out)
    one_process(config, ref)
    # The launcher is SIGKILLed right after update 6 (stage 2, update 2) was logged, before its checkpoint:
    # its workers die with it (checked by PID in run_until_paused); state/ holds stage 2 after 1 update.
    run_until_paused(launch_2proc(FSDP2, "train", "--config", str(config), "--no-progress", pausable=True), "update:6",
                     tmp_path / "kill.log", timeout=240, ACCELERATE_USE_CPU="true")
    assert check_complete(out) == ["refcache", "stage-1", "state"]
    assert json.loads((out / "state" / "position.json").read_text())["global_step"] == 5
    stage1 = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "stage-1").iterdir()}
    before = (out / "metrics.jsonl").read_text().splitlines()[:5]

    done = subprocess.run(launch_2proc(FSDP2, "train", "--config", str(config), "--no-progress", "--resume"),
                          env=env(ACCELERATE_USE_CPU="true"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # It really resumed: 7 updates run by this launch from step 5; stage 1 was not trained or written again.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] == {"stage": 2, "update": 1, "global_step": 5}
    assert summary["updates_run"] == 7
    assert "resumed at stage 2, update 2 (step 6): 7 updates run by this launch" in done.stdout
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "stage-1").iterdir()} == stage1
    assert (out / "metrics.jsonl").read_text().splitlines()[:5] == before
    assert check_complete(out) == ["final", "refcache", "stage-1", "stage-2", "stage-3", "state"]
    torch.testing.assert_close(losses(out), losses(ref), rtol=1e-4, atol=1e-5)
    assert_same_weights(final_weights(ref), final_weights(out))


def test_fsdp2_trains_lora_like_one_process(tiny_model_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # with a separate reference model (the same weights), sharded too for its one reference pass
    config = run_config(tmp_path, tiny_model_dir, two, model={"lora": True, "lora_r": 4, "lora_dropout": 0.0,
                                                              "ref_model": str(tiny_model_dir)},
                        optim={"batch_size": 2, "epochs_per_stage": 1, "lr": 1e-2})
    one_process(config, one)
    done = subprocess.run(launch_2proc(FSDP2, "train", "--config", str(config), "--no-progress"),
                          env=env(ACCELERATE_USE_CPU="true"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # stage-K/ hold the adapters, final/ the merged weights; state/ only the adapters (frozen base left out)
    assert check_complete(two) == ["final", "refcache", "stage-1", "stage-2", "stage-3", "state"]
    assert_same_weights(load_file(one / "stage-3" / "adapter_model.safetensors"),
                        load_file(two / "stage-3" / "adapter_model.safetensors"))
    assert_same_weights(final_weights(one), final_weights(two))
    base = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(final_weights(two)[k], base[k]) for k in base if "proj" in k)
