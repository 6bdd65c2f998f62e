"""The busy-machine rule, defined once for ``compare`` and the benchmarks.

A timed phase (a run's training, a decode measurement, a whole benchmark) is **busy** when the machine's
1-minute load average, sampled right before or right after it, exceeds

    threshold = threads + BUSY_LOAD_MARGIN          (BUSY_LOAD_MARGIN = 0.5)

where ``threads`` is the number of CPUs the measurement itself keeps busy (its torch threads, at most the
CPU count; 1 for a process that drives a GPU). The measurement accounts for at most ``threads`` of the
load; more than half a CPU beyond that means another process was runnable and competed for the CPUs, so
a timing would measure the machine rather than the attention. The load average trails by about a minute:
"before" also covers the minute preceding the phase, "after" the phase's last minute, and a burst of a
few seconds inside a long phase can go unseen.

No torch import: ``compare``'s records use this module.
"""

import os
from collections.abc import Iterable

BUSY_LOAD_MARGIN = 0.5


def load_average_1min() -> float | None:
    """The machine's 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_threshold(threads: int) -> float:
    """The load above which a phase using `threads` CPUs counts as busy: ``threads + BUSY_LOAD_MARGIN``."""
    return threads + BUSY_LOAD_MARGIN


def is_busy(loads: Iterable[float | None], threads: int) -> bool | None:
    """Whether any sampled 1-minute load exceeds :func:`busy_threshold`; None when no load was sampled."""
    sampled = [load for load in loads if load is not None]
    return None if not sampled else max(sampled) > busy_threshold(threads)
