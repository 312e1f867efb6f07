"""SIGTERM / SIGINT (a cluster's pre-emption, Ctrl-C) stop `currydpo train` at the next update boundary: it
writes the checkpoint --resume needs and exits 128 + the signal with one line saying how to resume; --resume
then reaches the uninterrupted weights bitwise. A second signal stops the process at once."""

import json
import signal
import subprocess
import time

import torch
from _reliability import (
    env,
    final_weights,
    kill_all,
    losses,
    start_paused,
    train_cmd,
    write_config,
    write_ranked,
)

from currydpo.config import load_config
from currydpo.training import loop

from conftest import check_log_continued, dir_fingerprint, mark_log


def signalled(config, tmp_path, point: str, *signums: int, release: bool = True) -> tuple[int, str]:
    """Start a run paused at ``point``, send it ``signums`` there, let it go on; (exit code, stderr)."""
    gate, log = tmp_path / f"release-{point}", tmp_path / f"{point}.log"
    proc = start_paused(train_cmd(config), point, log, CURRYDPO_TEST_RELEASE=str(gate))
    try:
        for s in signums:
            proc.send_signal(s)
            time.sleep(0.3)
        if release:
            gate.touch()
        rc = proc.wait(timeout=120)
    finally:
        kill_all(proc)
    return rc, log.read_text()


def test_sigterm_mid_stage_saves_and_resume_gives_bitwise_same_weights(tiny_model_dir, tmp_path):
    data = write_ranked(tmp_path / "data.jsonl")
    ref, out = tmp_path / "ref", tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, out, run={"save_every": 3})
    loop.train(load_config(str(config), [f"run.output_dir={ref}"]))
    # SIGTERM while update 6 (stage 2, update 2) is being logged; save_every 3 would not checkpoint it.
    rc, err = signalled(config, tmp_path, "update:6", signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last == (f"currydpo train: error: stopped by SIGTERM after stage 2, update 2 (step 6); {out}/state is "
                    f"saved: run the same command with --resume to continue")
    pos = json.loads((out / "state" / "position.json").read_text())
    assert (pos["stage"], pos["update"], pos["global_step"]) == (1, 2, 6)  # the boundary after update 6
    assert len(losses(out)) == 6
    stage1 = dir_fingerprint(out / "stage-1")
    mark_log(out)
    done = subprocess.run(train_cmd(config, "--resume"), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert dir_fingerprint(out / "stage-1") == stage1  # resumed, not restarted
    check_log_continued(out, 6, 12)
    a, b = final_weights(ref), final_weights(out)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise (CPU, fp32, one thread)
    assert losses(out) == losses(ref)


def test_sigint_stops_too_and_a_second_signal_stops_at_once(tiny_model_dir, tmp_path):
    data = write_ranked(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, out, run={"save_every": 0})
    rc, err = signalled(config, tmp_path, "update:2", signal.SIGINT)
    assert rc == 128 + signal.SIGINT, err
    assert "stopped by SIGINT after stage 1, update 2 (step 2)" in err.strip().splitlines()[-1]
    assert json.loads((out / "state" / "position.json").read_text())["global_step"] == 2

    # Resumed, paused at its first update (step 3) and never released: the first SIGTERM asks for a stop at the
    # boundary, the second ends the process there and then, by SIGTERM, before it writes anything.
    before = dir_fingerprint(out / "state")
    proc = start_paused(train_cmd(config, "--resume"), "update:1", tmp_path / "twice.log")
    try:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None  # the first one only asked
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        kill_all(proc)
    assert dir_fingerprint(out / "state") == before


def test_sigterm_outside_the_update_loop_stops_at_once_and_resumes_bitwise(tiny_model_dir, tmp_path):
    # Paused after stage-1/ was saved, before state/ moved on: there is nothing to wait for (state/ holds
    # stage 1 after its last periodic save), so the run stops there and then, with the line on how to resume.
    data = write_ranked(tmp_path / "data.jsonl")
    ref, out = tmp_path / "ref", tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, out)
    loop.train(load_config(str(config), [f"run.output_dir={ref}"]))
    rc, err = signalled(config, tmp_path, "stage-end:1", signal.SIGTERM, release=False)
    assert rc == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == (f"currydpo train: error: stopped by SIGTERM; {out}/state holds the last "
                                            f"checkpoint: run the same command with --resume to continue")
    done = subprocess.run(train_cmd(config, "--resume"), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    a, b = final_weights(ref), final_weights(out)
    for k in a:
        assert torch.equal(a[k], b[k]), k
