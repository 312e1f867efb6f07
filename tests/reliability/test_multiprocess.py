"""Multi-process training (DDP over gloo on CPU) matches the one-process run with the same
global batch: 2 processes x batch 2 == 1 process x batch 4 (loop.py: pairs_per_update =
batch_size * grad_accum * num_processes). Launched exactly as docs/multi-gpu.md says, with
examples/accelerate/cpu_2proc.yaml. Equal to float tolerance, not bitwise: the two runs sum
the same gradients in a different order."""

import json
import subprocess
import sys

import pytest
import torch
from _reliability import (
    REPO,
    check_complete,
    descendants,
    env,
    final_weights,
    kill_all,
    launch_2proc,
    losses,
    start_paused,
    write_config,
    write_ranked,
)

from currydpo.config import load_config
from currydpo.errors import CurryError
from currydpo.training import loop


def test_two_processes_match_one_process_with_the_same_global_batch(tiny_model_dir, tmp_path):
    data = write_ranked(tmp_path / "data.jsonl")
    one, two = tmp_path / "one", tmp_path / "two"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, two, optim={"batch_size": 2},
                          data={"path": str(data), "format": "ranked", "eval_fraction": 0.25})
    s1 = loop.train(load_config(str(config), [f"run.output_dir={one}", "optim.batch_size=4"]))

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "examples" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", "0",
           "-m", "currydpo", "train", "--config", str(config), "--no-progress"]
    done = subprocess.run(cmd, env=env(ACCELERATE_USE_CPU="true"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 12 updates" in done.stdout  # pairs_per_update = 2 x 2 processes, as for 1 x 4

    # Only the main process writes: one metrics line per update (not two), complete checkpoints.
    assert len(losses(two)) == len(losses(one)) == s1["total_updates"] == 12
    assert check_complete(two) == ["final", "refcache", "stage-1", "stage-2", "stage-3", "state"]
    torch.testing.assert_close(losses(two), losses(one), rtol=1e-4, atol=1e-5)
    # The reference pass and held-out metrics are split over the processes and gathered: same values.
    s2 = json.loads((two / "summary.json").read_text())
    for a, b in zip(s1["stages"], s2["stages"]):
        for key in ("eval/rewards/margins", "eval/logps/chosen", "eval/rewards/accuracies"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (key, a[key], b[key])
    a, b = final_weights(one), final_weights(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=2e-5, msg=k)


def test_processes_launched_but_not_seen_by_accelerate_is_an_error(tiny_model_dir, tmp_path, monkeypatch):
    # e.g. `torchrun --nproc_per_node 2` on CPUs without ACCELERATE_USE_CPU=true: each process would
    # train alone and all would write the same files.
    monkeypatch.setenv("WORLD_SIZE", "2")
    data = write_ranked(tmp_path / "data.jsonl")
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, tmp_path / "out")
    with pytest.raises(CurryError, match="2 processes were launched but accelerate sees 1.*ACCELERATE_USE_CPU"):
        loop.train(load_config(str(config)))


def test_example_accelerate_configs_load_and_are_documented():
    from accelerate.commands.config.config_args import load_config_from_file

    doc = (REPO / "docs" / "multi-gpu.md").read_text()
    kinds = {}
    shipped = sorted(p.stem for p in (REPO / "examples" / "accelerate").glob("*.yaml"))
    assert shipped == ["cpu_2proc", "ddp", "fsdp2", "fsdp2_cpu_2proc"]  # each run by a test or documented here
    for name in shipped:
        config = load_config_from_file(str(REPO / "examples" / "accelerate" / f"{name}.yaml"))
        kinds[name] = str(config.distributed_type).split(".")[-1]
        if kinds[name] == "FSDP":
            assert config.fsdp_config["fsdp_version"] == 2
        assert f"examples/accelerate/{name}.yaml" in doc or f"`{name}.yaml`" in doc
    assert kinds == {"ddp": "MULTI_GPU", "fsdp2": "FSDP", "cpu_2proc": "MULTI_GPU", "fsdp2_cpu_2proc": "FSDP"}
    for name in ("ddp", "fsdp2"):
        assert f"accelerate launch --config_file examples/accelerate/{name}.yaml -m currydpo train --config run.yaml" \
            in doc


def test_nan_on_one_process_stops_every_process(tiny_model_dir, tmp_path):
    # Without an all-reduced verdict the healthy process would wait forever in the gradient
    # all-reduce that the failed one never joins (the timeout below would fire).
    data = write_ranked(tmp_path / "data.jsonl")
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, out, optim={"batch_size": 2})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "examples" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", "0",
           str(REPO / "tests" / "reliability" / "nan_on_one_rank.py"),
           "train", "--config", str(config), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env(ACCELERATE_USE_CPU="true"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        raise AssertionError("a NaN on one process left the other hanging") from None
    finally:
        kill_all(proc)  # the launcher and both workers, whatever happened: no orphans left hanging
    assert proc.returncode != 0
    assert "loss is nan at stage 1, update 2, step 2, pairs [" in stderr  # process 1 names its pairs
    assert "loss is non-finite on another process at stage 1, update 2, step 2" in stderr  # process 0
    assert len(losses(out)) == 1  # update 1 was logged; update 2 was not
    assert (out / "state").is_dir()  # the last good state was saved


def test_ddp_sigkill_kills_the_workers_and_the_main_worker_held_the_run_dir(tiny_model_dir, tmp_path):
    data = write_ranked(tmp_path / "data.jsonl")
    ref, out = tmp_path / "ref", tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, out, optim={"batch_size": 2})
    loop.train(load_config(str(config), [f"run.output_dir={ref}", "optim.batch_size=4"]))
    launcher = start_paused(launch_2proc("cpu_2proc.yaml", "train", "--config", str(config), "--no-progress",
                                         pausable=True), "update:6", tmp_path / "kill.log", timeout=240,
                            ACCELERATE_USE_CPU="true")
    try:
        workers = descendants(launcher.pid)
        # A second writer is refused, naming the process that holds the run dir for the group: a worker (rank 0).
        second = subprocess.run([sys.executable, "-m", "currydpo", "train", "--config", str(config), "--no-progress"],
                                env=env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        holder = int(second.stderr.split("(PID ")[1].split(")")[0])
        assert holder in workers and holder != launcher.pid
    finally:
        survivors = kill_all(launcher)  # SIGKILL the launcher only: the workers must notice and die by themselves
    assert not survivors, f"workers {survivors} outlived their killed launcher"

    done = subprocess.run(launch_2proc("cpu_2proc.yaml", "train", "--config", str(config), "--no-progress", "--resume"),
                          env=env(ACCELERATE_USE_CPU="true"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed at stage 2" in done.stdout
    torch.testing.assert_close(losses(out), losses(ref), rtol=1e-4, atol=1e-5)
