"""Progress of long phases, on a terminal and in log files: the one helper every phase calls.

On a terminal a phase gets a tqdm bar. When stderr is not a terminal (nohup, SLURM, a CI log) a bar
would write carriage returns nobody sees until the end, so a phase prints a plain line instead every
``LINE_EVERY_S`` seconds or every tenth of its total, whichever comes first, as HF Trainer logs:
``currydpo: reference log-probs (initial): 1200/3000 (40%), 85.2 row/s, ETA 21s``; a phase over within
``QUIET_FOR_S`` prints nothing. ``enabled=False``
(``run.progress: false``, ``--no-progress``) silences both.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from .io import bars_off

LINE_EVERY_S = 30.0
QUIET_FOR_S = 3.0  # a phase done sooner prints nothing: a log (or a one-line error) is not drowned in lines


def progress_bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it",
                 enabled: bool = True, leave: bool = True, initial: int = 0):
    """A tqdm bar on a terminal, plain lines in a log file, nothing when ``enabled`` is False.
    Supports what our phases use of tqdm: iteration, ``update``, ``set_postfix`` and ``close``."""
    if not enabled or sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, initial=initial,
                    disable=bars_off(enabled))
    return LogProgress(iterable, desc=desc, total=total, unit=unit, initial=initial)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else (f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s")


class LogProgress:
    """Plain progress lines on stderr (see the module doc)."""

    def __init__(self, iterable: Iterable | None, *, desc: str, total: int | None, unit: str, initial: int = 0):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.start_n = self.printed_n = initial
        self.postfix = ""
        self.t0 = self.last = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator:
        try:
            for x in self.iterable:
                yield x
                self.update(1)
        finally:
            self.close()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.t0 < QUIET_FOR_S:
            return
        tenth = self.total is not None and self.total > 0 and \
            (self.n - self.printed_n) * 10 >= self.total
        if now - self.last >= LINE_EVERY_S or tenth:
            self._line(now)

    def _line(self, now: float) -> None:
        self.last, self.printed_n = now, self.n
        elapsed = max(now - self.t0, 1e-9)
        rate = (self.n - self.start_n) / elapsed
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {_duration((self.total - self.n) / rate)}" if self.total and rate > 0 and self.n < self.total \
            else f", {_duration(elapsed)}"
        post = f", {self.postfix}" if self.postfix else ""
        print(f"currydpo: {self.desc}: {done}{pct}, {rate:.3g} {self.unit}/s{eta}{post}", file=sys.stderr, flush=True)

    def close(self) -> None:
        now = time.monotonic()
        if not self.closed and self.n != self.printed_n and now - self.t0 >= QUIET_FOR_S:  # the phase finished
            self._line(now)
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
