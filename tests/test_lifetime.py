"""`currydpo.lifetime`: a launched worker dies with its launcher; one process holds an output directory;
output directories currydpo did not write are refused."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from currydpo import lifetime
from currydpo.errors import CurryError

SRC = os.path.join(os.path.dirname(__file__), "..", "src")


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def child_env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "RANK")}
    e["PYTHONPATH"] = os.pathsep.join([os.path.abspath(SRC), e.get("PYTHONPATH", "")])
    return {**e, **extra}


# A "launcher" that starts one worker in a session of its own (as torch's elastic agent does), prints the
# worker's PID and sleeps. The worker calls die_with_launcher() and sleeps.
LAUNCHER = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "from currydpo.lifetime import die_with_launcher; import time; "
                           "print(die_with_launcher(), flush=True); time.sleep(120)"],
                          start_new_session=True, stdout=sys.stdout)
print(worker.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("launched", [True, False])
def test_a_launched_worker_dies_within_seconds_of_its_launcher(launched):
    env = child_env(LOCAL_RANK="0", TORCHELASTIC_RUN_ID="t") if launched else child_env()
    launcher = subprocess.Popen(python(LAUNCHER), env=env, stdout=subprocess.PIPE, text=True)
    try:
        worker = int(launcher.stdout.readline())
        assert launcher.stdout.readline().strip() == str(launched)  # the watchdog runs only under a launcher
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 5
        while psutil.pid_exists(worker) and psutil.Process(worker).status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        gone = not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
        assert gone == launched  # a plain process (no launcher) is left alone: `nohup currydpo train &` lives on
    finally:
        launcher.kill()
        if psutil.pid_exists(worker):
            os.kill(worker, signal.SIGKILL)


HOLD = """
import sys, time
from currydpo.lifetime import hold_output_dir
from currydpo.errors import CurryError
try:
    with hold_output_dir(sys.argv[1]):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
except CurryError as e:
    print(e, flush=True)
"""


def test_a_second_process_cannot_hold_a_held_directory_and_is_told_the_holder(tmp_path):
    out = tmp_path / "run"
    with lifetime.hold_output_dir(out):
        with lifetime.hold_output_dir(out):  # re-entrant inside one process (compare -> train)
            pass
        other = subprocess.run([*python(HOLD), str(out), "0"], env=child_env(), capture_output=True, text=True)
        assert other.stdout.strip() == (f"{out} is in use by another currydpo process (PID {os.getpid()}); wait for "
                                        f"it to finish, or write to another directory")
    other = subprocess.run([*python(HOLD), str(out), "0"], env=child_env(), capture_output=True, text=True)
    assert other.stdout.strip() == "held"  # released when the block ended


def test_the_lock_dies_with_its_process(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([*python(HOLD), str(out), "60"], env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CurryError, match=f"PID {holder.pid}"):
            with lifetime.hold_output_dir(out):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with lifetime.hold_output_dir(out):  # no stale lock: nothing to clean up by hand
            assert (out / lifetime.LOCK_NAME).read_text().strip() == str(os.getpid())
    finally:
        holder.kill()


def test_only_the_main_process_of_a_launch_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with lifetime.hold_output_dir(tmp_path / "run"):
        assert not (tmp_path / "run").exists()


def test_output_dirs_currydpo_did_not_write_are_refused(tmp_path):
    for ok in (tmp_path / "new", tmp_path / "empty"):
        lifetime.check_output_dir(ok)
    (tmp_path / "empty").mkdir()
    lifetime.check_output_dir(tmp_path / "empty")
    ours = tmp_path / "ours"
    with lifetime.hold_output_dir(ours):
        (ours / "metrics.jsonl").write_text("")
    lifetime.check_output_dir(ours)
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("years of work")
    with pytest.raises(CurryError, match="is a non-empty directory that currydpo did not write"):
        lifetime.check_output_dir(thesis)
    with pytest.raises(CurryError, match="is an existing file"):
        lifetime.check_output_dir(thesis / "thesis.tex")
    for root in ("/", "/.", "//", os.path.expanduser("~")):
        with pytest.raises(CurryError, match="give a directory of its own"):
            lifetime.check_output_dir(root)
