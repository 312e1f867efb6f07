"""How a currydpo process lives and ends: it dies with its launcher, holds its output
directory alone, and stops cleanly on SIGTERM / SIGINT.

- `die_with_launcher`: a worker started by ``torchrun`` / ``accelerate launch`` exits at once
  when its launcher dies (a SIGKILLed launcher cannot forward anything, and torch's elastic
  agent starts each worker in its own session, so killing the launcher's process group misses
  them). Without this, orphaned workers keep their (GPU) memory and may write into a run
  directory that a ``--resume`` is writing too.
- `hold_output_dir`: an exclusive OS file lock (``flock``) on ``DIR/.currydpo.lock`` for as long
  as a command writes ``DIR``; the kernel drops it when the process dies, so no stale lock
  outlives a kill. The lock file also marks ``DIR`` as currydpo's (see `check_output_dir`).
- `stop_on_signals`: the first SIGTERM/SIGINT stops the run: inside the update loop at the next
  update boundary, after a checkpoint (`deferred_stops`, `stop_requested`), elsewhere at once (``state/``
  is current there); a second one stops the process at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Iterator

from .errors import CurryError

LOCK_NAME = ".currydpo.lock"
EARLIER_MARKS = ("state/position.json", "spec.json")  # a run / comparison written before the lock file existed


# ---- workers die with their launcher ---------------------------------------------------------------

def launched_worker() -> bool:
    """Whether this process is a worker of torch's elastic agent (torchrun, ``accelerate launch``)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def die_with_launcher(poll_s: float = 0.5) -> bool:
    """In a launched worker, start a daemon thread that SIGKILLs this process (no cleanup, nothing
    written) once its parent, the launcher, is gone. Returns whether the watchdog was started.

    A watchdog on the parent PID rather than Linux's PR_SET_PDEATHSIG: that signal fires when the
    *thread* that forked the worker exits, and it is Linux-only.
    """
    if not launched_worker():
        return False
    parent = os.getppid()

    def watch():
        while True:
            if os.getppid() != parent:  # re-parented: the launcher died
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="currydpo-launcher-watchdog", daemon=True).start()
    return True


# ---- one writer per output directory ---------------------------------------------------------------

_held: dict[str, list] = {}  # realpath -> [open lock file, depth]: re-entrant inside one process


def is_main_process() -> bool:
    """Rank 0 of a launch (or a lone process): the one that holds locks for the group."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def hold_output_dir(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on output directory ``path`` (created if missing) while the block runs.

    A second process gets a one-line `CurryError` naming the directory and the holder's PID (exit
    code 2 from the CLI). Under a launcher only the main process takes it, for the whole group.
    """
    if not is_main_process():
        yield
        return
    import fcntl

    created = not os.path.exists(path)
    os.makedirs(path, exist_ok=True)
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
    else:
        f = open(os.path.join(path, LOCK_NAME), "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise CurryError(f"{path} is in use by another currydpo process (PID {holder}); wait for it to finish, "
                             f"or write to another directory") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        _held[key] = [f, 1]
    try:
        yield
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            empty = created and os.path.isdir(path) and os.listdir(path) == [LOCK_NAME]
            if empty:  # nothing was written: leave nothing behind
                os.unlink(os.path.join(path, LOCK_NAME))
            _held.pop(key)[0].close()  # closing the file drops the lock
            if empty:
                with contextlib.suppress(OSError):
                    os.rmdir(path)


def check_output_dir(path: str | os.PathLike, what: str = "run.output_dir") -> None:
    """Refuse an output directory whose files currydpo did not write: ``/``, the home directory, an
    existing file, or a non-empty directory without currydpo's lock file (a run would replace
    its ``stage-K/`` and ``final/`` wholesale and overwrite ``config.yaml``, ``metrics.jsonl``, ...)."""
    path = os.fspath(path)
    real = os.path.realpath(os.path.expanduser(path))
    if real in (os.path.realpath(os.sep), os.path.realpath(os.path.expanduser("~"))):
        raise CurryError(f"{what} {path!r} is {real}: give a directory of its own for the run's files")
    if os.path.exists(real) and not os.path.isdir(real):
        raise CurryError(f"{what} {path!r} is an existing file, not a directory: give a directory for the run")
    ours = [os.path.join(real, m) for m in (LOCK_NAME, *EARLIER_MARKS)]
    if os.path.isdir(real) and os.listdir(real) and not any(os.path.exists(m) for m in ours):
        raise CurryError(f"{what} {path!r} is a non-empty directory that currydpo did not write (no {LOCK_NAME}); "
                         f"give a new or empty directory, so no file of yours is replaced")


# ---- SIGTERM / SIGINT stop at the next update boundary ---------------------------------------------

_stop: list[int] = []  # the signals received since `stop_on_signals` was entered
_defer = [False]  # inside the update loop (`deferred_stops`): a stop waits for the update boundary
_output_dir = [""]  # of the run `stop_on_signals` guards, for the one line on how to resume


def stop_requested() -> int | None:
    """The first stop signal received (SIGTERM or SIGINT), None if none."""
    return _stop[0] if _stop else None


def _stopped_now(signum: int) -> "Stopped":
    """A stop outside the update loop: ``state/`` already holds everything done (it is written at every
    stage's end), so the run stops where it is."""
    name, out = signal.Signals(signum).name, _output_dir[0]
    if os.path.exists(os.path.join(out, "state", "position.json")):
        how = f"{out}/state holds the last checkpoint: run the same command with --resume to continue"
    else:
        how = "before the first checkpoint: run the same command to start again"
    return Stopped(f"stopped by {name}; {how}", signum)


@contextlib.contextmanager
def stop_on_signals(output_dir: str) -> Iterator[None]:
    """While the block runs, the first SIGTERM/SIGINT stops the run: inside `deferred_stops` at the next update
    boundary (the loop checkpoints first), elsewhere at once, raising `Stopped`. A second one ends the process
    at once, by that signal."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def handler(signum, frame):
        if _stop:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        _stop.append(signum)
        if not _defer[0]:
            raise _stopped_now(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    _stop.clear()
    _output_dir[0] = str(output_dir)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _stop.clear()


@contextlib.contextmanager
def deferred_stops() -> Iterator[None]:
    """Around the update loop: a stop signal is only recorded, for the loop to act on at the update boundary
    (`stop_requested`). One that came after the loop's last check stops the run on leaving the block."""
    _defer[0] = True
    try:
        yield
    finally:
        _defer[0] = False
    if _stop:
        raise _stopped_now(_stop[0])


class Stopped(CurryError):
    """The run stopped on a signal; ``state/`` holds what ``--resume`` needs."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for "ended by signal N"
