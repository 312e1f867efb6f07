"""`currydpo train --resume` on a data file edited between the kill and the resume: a one-line error."""

import subprocess

from _reliability import env, train_cmd, write_config, write_ranked


def test_resume_refuses_an_edited_data_file_from_the_cli(tiny_model_dir, tmp_path):
    data = write_ranked(tmp_path / "data.jsonl")
    config = write_config(tmp_path / "run.yaml", tiny_model_dir, data, tmp_path / "out", optim={"total_updates": 2},
                          run={"save_every": 0})
    assert subprocess.run(train_cmd(config), env=env(), capture_output=True).returncode == 0
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[1:] + lines[:1]) + "\n")  # the same rows, reordered
    done = subprocess.run(train_cmd(config, "--resume"), env=env(), capture_output=True, text=True)
    assert done.returncode == 2 and "the data changed" in done.stderr and len(done.stderr.splitlines()) == 1
