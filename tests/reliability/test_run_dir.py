"""One writer per run directory, and no file the run did not write is touched.

- a second `train` into a live run directory exits 2 at once, naming the directory and the PID holding it,
  and the first run finishes with the weights of an undisturbed one;
- `--resume` after a SIGKILL needs no clean-up (the OS lock died with the process);
- `--output` that is `/`, an existing file or a non-empty directory currydpo did not write is refused, and
  nothing in it changes; `--resume` on a missing directory is an error;
- `compare` arm names that would leave output_dir are refused.
"""

import subprocess
import time

import pytest
import torch
from _reliability import (
    env,
    final_weights,
    kill_all,
    run_until_paused,
    start_paused,
    train_cmd,
    write_config,
    write_ranked,
)

from currydpo.cli import main
from currydpo.config import load_config
from currydpo.errors import CurryError
from currydpo.experiments.compare import spec_from_dict
from currydpo.training import loop

from conftest import dir_fingerprint


def test_a_second_train_into_a_live_run_exits_2_naming_the_holder(tiny_model_dir, tmp_path):
    data = write_ranked(tmp_path / "data.jsonl")
    ref, out = tmp_path / "ref", tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, out)
    loop.train(load_config(str(config), [f"run.output_dir={ref}"]))
    release = tmp_path / "release"
    first = start_paused(train_cmd(config), "update:3", tmp_path / "first.log", CURRYDPO_TEST_RELEASE=str(release))
    try:
        for extra in ([], ["--resume"]):  # a resume of the live run is a second writer too
            t0 = time.monotonic()
            second = subprocess.run(train_cmd(config, *extra), env=env(), capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert second.stderr.strip() == (f"currydpo train: error: {out} is in use by another currydpo process "
                                             f"(PID {first.pid}); wait for it to finish, or write to another "
                                             f"directory")
            assert time.monotonic() - t0 < 30  # refused before any data or model is loaded
        release.touch()
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()
    finally:
        kill_all(first)
    a, b = final_weights(ref), final_weights(out)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # the refused writer changed nothing


def test_resume_after_sigkill_needs_no_cleanup_of_the_lock(tiny_model_dir, tmp_path):
    data = write_ranked(tmp_path / "data.jsonl")
    out = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, out)
    run_until_paused(train_cmd(config), "update:5", tmp_path / "kill.log")
    assert (out / ".currydpo.lock").exists()  # left by the killed process, but its lock died with it
    done = subprocess.run(train_cmd(config, "--resume"), env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed at stage 2" in done.stdout


def test_output_the_run_did_not_write_is_refused_and_left_alone(tiny_model_dir, tmp_path, capsys):
    data = write_ranked(tmp_path / "data.jsonl")
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, tmp_path / "unused")
    mine = tmp_path / "thesis"
    (mine / "final").mkdir(parents=True)
    (mine / "final" / "thesis.tex").write_text("years of work")
    (mine / "config.yaml").write_text("mine")
    file = tmp_path / "notes.txt"
    file.write_text("notes")
    before = dir_fingerprint(tmp_path)
    for output, expect in ((mine, "is a non-empty directory that currydpo did not write"),
                           (file, "is an existing file"), ("/", "give a directory of its own")):
        for extra in ([], ["--resume"]):
            assert main(["train", "--config", str(config), "--no-progress", "--output", str(output), *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and expect in err and str(output) in err, err
    assert dir_fingerprint(tmp_path) == before


def test_resume_of_a_missing_directory_is_an_error(tiny_model_dir, tmp_path, capsys):
    data = write_ranked(tmp_path / "data.jsonl")
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, tmp_path / "typo")
    assert main(["train", "--config", str(config), "--no-progress", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"currydpo train: error: --resume: {tmp_path / 'typo'} does not exist; check run.output_dir "
                   f"(or drop --resume to start a run)")
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("name", ["../escaped-arm", "../../x", "a/b", "..", ".", "/abs", ""])
def test_compare_arm_names_that_leave_output_dir_are_refused(name, tmp_path):
    with pytest.raises(CurryError, match="is not a plain directory name"):
        spec_from_dict({"arms": {name: {"loss": {"beta": 0.2}}}}, str(tmp_path / "cmp"))


def test_compare_grid_over_paths_stays_under_output_dir(tmp_path):
    spec = spec_from_dict({"grid": {"model.path": ["/models/a", "/models/b"]}}, str(tmp_path / "cmp"))
    assert sorted(spec.arms) == ["_models_a", "_models_b"]


def test_compare_refuses_a_foreign_output_dir(tmp_path):
    from currydpo.experiments.compare import run_compare

    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "paper.pdf").write_text("x")
    spec = spec_from_dict({"arms": {"a": {"loss": {"beta": 0.2}}}}, str(tmp_path / "cmp"))
    with pytest.raises(CurryError, match="compare output_dir .* is a non-empty directory that currydpo did not"):
        run_compare(spec, progress=False)
    assert [p.name for p in (tmp_path / "cmp").iterdir()] == ["paper.pdf"]
