"""The time left of a whole comparison, from the runs that this ``compare`` process has finished.

Each pending run is expected to take the mean wall time of the finished runs of its own variant (MLA and MHA
differ), or, while its variant has none yet, the mean of all finished runs. Runs skipped because an earlier
``compare`` finished them count as done and took no time here; a failed run counts as done with the time it took.
"""

import time
from dataclasses import dataclass, field
from statistics import fmean


@dataclass
class SweepClock:
    """Wall seconds per finished run, by variant, and the estimate of what is left."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def record(self, variant: str, seconds: float) -> None:
        self.seconds.setdefault(variant, []).append(seconds)

    def seconds_left(self, pending_variants: list[str]) -> float | None:
        """Expected wall seconds of the pending runs (one variant name each); None before any run finished here."""
        every = [s for runs in self.seconds.values() for s in runs]
        if not every:
            return None
        overall = fmean(every)
        return sum(fmean(self.seconds[v]) if v in self.seconds else overall for v in pending_variants)


def duration(seconds: float) -> str:
    """``42s``, ``3m 05s``, ``2h 07m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def sweep_line(done: int, total: int, clock: SweepClock, pending_variants: list[str]) -> str:
    """``sweep: 2/6 runs done in 3m 10s, about 6m 20s left`` (no estimate before a run finished here)."""
    elapsed = duration(time.perf_counter() - clock.started)
    left = clock.seconds_left(pending_variants)
    estimate = "" if left is None or not pending_variants else f", about {duration(left)} left"
    return f"sweep: {done}/{total} runs done in {elapsed}{estimate}"
