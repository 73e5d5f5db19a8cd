"""How many CPU threads torch's operators use while cbmctl trains, and leaving the caller's setting alone.

torch picks its intra-op thread count once, from the machine's cores, not from the CPUs this process is
allowed to run on (a container or `taskset` limits those): on a shared machine more threads than CPUs spin
against each other, and the stacked training of a comparison slowed 5-10x that way (issue 21). So a
training call sets the count for its own duration, in this order of precedence:

    an explicit --threads N (TrainConfig.threads > 0)
    $OMP_NUM_THREADS, when it holds a positive whole number (the OpenMP convention torch itself honours)
    the CPUs this process may use (os.sched_getaffinity where the OS has it, else os.cpu_count())

and puts the caller's count back afterwards: a library call leaves threads as it found them."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadChoice:
    count: int
    reason: str  # why this count, for the run's record and the line that says it

    def as_record(self) -> dict:
        return {"count": self.count, "reason": self.reason}


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def choose_threads(requested: int = 0) -> ThreadChoice:
    """The thread count a training call uses: `requested` when positive, else $OMP_NUM_THREADS, else the
    usable CPUs (see the module docstring)."""
    if requested > 0:
        return ThreadChoice(requested, "asked for")
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    if text.isdigit() and int(text) > 0:
        return ThreadChoice(int(text), "OMP_NUM_THREADS")
    cpus = usable_cpus()
    return ThreadChoice(cpus, f"the {cpus} CPU{'s' * (cpus != 1)} this process may use")


@contextlib.contextmanager
def torch_threads(requested: int = 0):
    """Within the block, torch uses choose_threads(requested) threads; the caller's count is restored on
    leaving it, however the block ends. Yields the ThreadChoice."""
    import torch
    choice = choose_threads(requested)
    before = torch.get_num_threads()
    torch.set_num_threads(choice.count)
    try:
        yield choice
    finally:
        torch.set_num_threads(before)
