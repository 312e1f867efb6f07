"""Kill and resume: SIGKILL `currydpo train` at named points, resume with --resume, and
reach the same weights as an uninterrupted run.

The runs are on CPU in fp32 with one thread, so "the same" is bitwise: a resumed run
replays exactly the updates an uninterrupted one does (weights, optimiser, scheduler, RNG
and curriculum position all come from `state/`). The process is paused at a named point
by `CURRYDPO_TEST_PAUSE_AT`, installed from the test side (paused_train.py), and killed
there with SIGKILL, so no cleanup code runs.
"""

import json
import os
import subprocess

import torch
from _reliability import (
    check_complete,
    env,
    final_weights,
    losses,
    run_until_paused,
    train_cmd,
    write_config,
    write_ranked,
)

from currydpo.config import load_config
from currydpo.training import loop

from conftest import check_log_continued, dir_fingerprint, mark_log


def test_sigkill_at_three_points_then_resume_gives_bitwise_same_weights(tiny_model_dir, tmp_path):
    data = write_ranked(tmp_path / "data.jsonl")
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, out)
    # Uninterrupted run, same config (in-process, also one thread: conftest sets it).
    summary = loop.train(load_config(str(config), [f"run.output_dir={ref_out}"]))
    assert summary["total_updates"] == 12  # 3 stages x 8 pairs / 4 per update x 2 epochs

    # 1. Mid-stage 2, in the middle of writing state/ (weights written, position not yet).
    #    state/ writes: 3 mid-stage + 1 at the end of each stage, so the 6th is stage 2, update 2.
    run_until_paused(train_cmd(config), "state-write:6", tmp_path / "kill1.log")
    assert any(p.name.startswith(".state.") for p in out.iterdir())  # the half-written temp dir
    assert check_complete(out) == ["refcache", "stage-1", "state"]
    pos = json.loads((out / "state" / "position.json").read_text())
    assert (pos["stage"], pos["update"]) == (1, 1)  # the previous complete state: stage 2 after 1 update
    assert len(losses(out)) == 6  # update 6 was logged before its checkpoint began

    # 2. Resumed, killed between stages: stage-2/ is saved, state/ still says "stage 2, update 3".
    run_until_paused(train_cmd(config, "--resume"), "stage-end:1", tmp_path / "kill2.log")
    assert check_complete(out) == ["refcache", "stage-1", "stage-2", "state"]
    pos = json.loads((out / "state" / "position.json").read_text())
    assert (pos["stage"], pos["update"]) == (1, 3)

    # 3. Resumed, killed right after the first update of stage 3 was logged, before its checkpoint.
    run_until_paused(train_cmd(config, "--resume"), "update:2", tmp_path / "kill3.log")
    assert check_complete(out) == ["refcache", "stage-1", "stage-2", "state"]
    # Simulate the rarer kills too: a metrics line cut in half, and a kill between the two renames
    # of an atomic directory swap (state/ moved aside, the new one not yet in place).
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 10, "loss": 0.6')
    os.replace(out / "state", out / ".state.old")
    stage1_written = (out / "stage-1" / "model.safetensors").stat().st_mtime_ns

    # 4. Resumed to the end.
    done = subprocess.run(train_cmd(config, "--resume"), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "stage-1" / "model.safetensors").stat().st_mtime_ns == stage1_written  # resumed, not restarted
    assert not (out / ".state.old").exists()
    assert not [p.name for d in (out, out / "refcache") for p in d.iterdir() if p.name.endswith(".tmp")]  # kill 1's
    assert check_complete(out) == ["final", "refcache", "stage-1", "stage-2", "stage-3", "state"]
    a, b = final_weights(ref_out), final_weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise (CPU, fp32, one thread)
    assert losses(out) == losses(ref_out)
    for key in ("initial", "stage-1", "stage-2"):  # the cached reference log-probs too (NaN = not needed)
        torch.testing.assert_close(torch.load(out / "refcache" / f"{key}.pt"),
                                   torch.load(ref_out / "refcache" / f"{key}.pt"), rtol=0, atol=0, equal_nan=True)


def test_restart_per_stage_saves_no_optimizer_at_stage_ends_and_resumes_bitwise(tiny_model_dir, tmp_path):
    # With across_stages: restart the next stage builds a fresh optimiser, so the stage-end state/
    # holds none (for a 7B model that is ~56 GB of AdamW moments not written per stage).
    data = write_ranked(tmp_path / "data.jsonl")
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, out,
                          optim={"across_stages": "restart", "lr": 1e-3, "batch_size": 4, "warmup_ratio": 0.0,
                                 "epochs_per_stage": 2})
    loop.train(load_config(str(config), [f"run.output_dir={ref_out}"]))
    assert torch.load(ref_out / "state" / "optim.pt", weights_only=True) == {"optimizer": None, "scheduler": None}

    # Killed after the first update of stage 2 was logged: state/ is the stage-1 end (4 updates per stage).
    run_until_paused(train_cmd(config), "update:5", tmp_path / "kill.log")
    pos = json.loads((out / "state" / "position.json").read_text())
    assert (pos["stage"], pos["update"]) == (1, 0)
    assert torch.load(out / "state" / "optim.pt", weights_only=True)["optimizer"] is None
    stage1 = dir_fingerprint(out / "stage-1")
    mark_log(out)
    done = subprocess.run(train_cmd(config, "--resume"), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # Only a real resume passes these (a silent restart reaches the same weights too):
    assert dir_fingerprint(out / "stage-1") == stage1  # stage 1 not redone
    check_log_continued(out, pos["global_step"], 12)  # 4 logged lines kept, 8 updates executed after resume
    a, b = final_weights(ref_out), final_weights(out)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert losses(out) == losses(ref_out)


def test_lora_iterative_killed_mid_stage_resumes_bitwise(tiny_model_dir, tmp_path):
    # LoRA: state/ holds only the adapter weights; stage 2's reference is the adapted policy of stage 1.
    data = write_ranked(tmp_path / "data.jsonl")
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, out,
                          model={"path": str(tiny_model_dir), "lora": True, "lora_r": 4},
                          optim={"lr": 1e-2, "batch_size": 4, "warmup_ratio": 0.0, "epochs_per_stage": 2})
    loop.train(load_config(str(config), [f"run.output_dir={ref_out}"]))
    run_until_paused(train_cmd(config), "update:6", tmp_path / "kill.log")  # stage 2, update 2 logged
    pos = json.loads((out / "state" / "position.json").read_text())
    assert (pos["stage"], pos["update"], pos["global_step"]) == (1, 1, 5)  # save_every 1: after stage 2, update 1
    stage1 = dir_fingerprint(out / "stage-1")
    mark_log(out)
    done = subprocess.run(train_cmd(config, "--resume"), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert dir_fingerprint(out / "stage-1") == stage1  # the adapter of stage 1 not rewritten: resumed, not restarted
    check_log_continued(out, 5, 12)  # 5 lines kept (the 6th, logged after the checkpoint, replaced), 7 updates run
    assert losses(out) == losses(ref_out)
    a, b = final_weights(ref_out), final_weights(out)  # merged weights
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (out / "stage-2" / "adapter_model.safetensors").exists()  # stage dirs hold the adapter
