"""The library's voice: functions that report progress take a `log` callable (one line per call); without
one they speak through the standard `cbmctl` logger, which is silent until an application configures
logging. The command line passes its own callables (stderr lines), so nothing here ever prints."""
from __future__ import annotations

import logging
import time

LOGGER = logging.getLogger("cbmctl")
LOGGER.addHandler(logging.NullHandler())


def sayer(log=None):
    """`log` itself, or the `cbmctl` logger's info when there is none."""
    return log if log is not None else LOGGER.info


# progress of long work is said at most this often: often enough that nobody thinks it hung, rarely enough to read
PROGRESS_SECONDS = 10.0


def duration(seconds: float) -> str:
    """A span of time as a reader wants it: '8 s', '3 min 10 s', '2 h 05 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Paced:
    """A progress voice: `paced(make_line)` says make_line() on `log` when at least `every` seconds have passed
    since the last line (or since it was made), so work that reports after every small step is heard every
    few seconds; the line is only built when it is said."""

    def __init__(self, log, every: float = PROGRESS_SECONDS, clock=time.monotonic):
        self.log, self.every, self.clock = sayer(log), every, clock
        self.said = clock()

    def __call__(self, make_line) -> None:
        now = self.clock()
        if now - self.said >= self.every:
            self.said = now
            self.log(make_line())


def stage_progress(log, describe, clock=time.monotonic):
    """A progress callback (stage, done, total) for work in stages counted in steps: every few seconds (Paced)
    it says describe(stage, done, total, spent, left) on `log`, where spent is the time since the first stage
    began and left the time the current stage still needs at its pace so far (both as text). A stage begins
    where the one before it ended."""
    paced, started = Paced(log, clock=clock), clock()
    began: dict[str, float] = {}
    last = [started]

    def progress(stage: str, done: int, total: int) -> None:
        now = clock()
        began.setdefault(stage, last[0])
        last[0] = now
        pace = (now - began[stage]) / max(done, 1)
        paced(lambda: describe(stage, done, total, duration(now - started), duration(pace * (total - done))))
    return progress
