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
