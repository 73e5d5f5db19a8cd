"""The library's voice: functions that report progress take a `log` callable (one line per call); without
one they speak through the standard `cbmctl` logger, which is silent until an application configures
logging. The command line passes its own callables (stderr lines), so nothing here ever prints."""
from __future__ import annotations

import logging

LOGGER = logging.getLogger("cbmctl")
LOGGER.addHandler(logging.NullHandler())


def sayer(log=None):
    """`log` itself, or the `cbmctl` logger's info when there is none."""
    return log if log is not None else LOGGER.info


PROGRESS_SECONDS = 10.0  # at most one progress line this often


class Progress:
    """Lines about work that takes a while: the first after `every` seconds, then at most one per `every`
    seconds, each with the share done and an estimate of the time left — so a short job says nothing and a
    long one is never silent for long. `log` None: silent (quiet and JSON modes pass None). `estimate` words
    the time left: "about" (the work goes at a steady pace), "at most" (`total` is a limit the work may stop
    well short of, an iteration cap), or None where the pace changes too much for a guess to help."""

    def __init__(self, log, total: int, what: str, unit: str = "images", every: float | None = None, clock=None,
                 estimate: str | None = "about"):
        import time
        self.log, self.total, self.what, self.unit, self.estimate = log, max(int(total), 0), what, unit, estimate
        self.every = PROGRESS_SECONDS if every is None else every
        self.clock = clock or time.monotonic
        self.started = self.last = self.clock()
        self.done = 0

    def advance(self, count: int) -> None:
        self.done += int(count)
        now = self.clock()
        if self.log is None or now - self.last < self.every or not self.total:
            return
        self.last = now
        share = min(self.done / self.total, 1.0)
        left = (now - self.started) * (1 - share) / share if 0 < share < 1 and self.estimate else None
        self.log(f"{self.what}: {self.done:,} of {self.total:,} {self.unit} ({100 * share:.0f} %)"
                 + (f", {self.estimate} {_duration(left)} left" if left is not None else ""))

    def iterate(self, chunks):
        """The chunks (arrays of rows) unchanged, advancing by each one's length."""
        for chunk in chunks:
            yield chunk
            self.advance(len(chunk))


def throttled(log, every: float | None = None, clock=None, prefix: str = ""):
    """A `log` that passes on at most one line per `every` seconds (PROGRESS_SECONDS by default), the first
    only once `every` seconds have passed: a long stage's own lines as a heartbeat, a short one silent."""
    import time
    clock = clock or time.monotonic
    every = PROGRESS_SECONDS if every is None else every
    last = [clock()]

    def forward(line: str) -> None:
        now = clock()
        if now - last[0] >= every:
            last[0] = now
            log(prefix + line)
    return forward


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
