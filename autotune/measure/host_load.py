"""How much of this machine other work is using: the CPU time of every process but this one and its workers.

The load average counts a search's own workers, so a search on a quiet machine warned that it was busy, and a busy
one could not say by how much. Here a process's own CPU time (with its live and finished child processes) is taken
out of the machine's.
"""

from __future__ import annotations

import os
import time

import psutil

# Other processes using this share of the machine make timings noisy enough to say so (one busy core of two: 0.5).
BUSY_SHARE = 0.25


class OthersCpu:
    """`with OthersCpu() as others: ...`, then `others.share`: the share of the machine's CPU time that processes
    other than this one and its children used meanwhile (0: none, 1: every core, all the time)."""

    def __enter__(self) -> OthersCpu:
        self.share = 0.0
        self._start = (time.monotonic(), _busy_seconds(), _own_seconds())
        return self

    def __exit__(self, *exc: object) -> None:
        self.share = self.so_far()

    def so_far(self) -> float:
        """The share since the block began, read while it still runs."""
        wall, busy, own = (now - then for now, then in zip((time.monotonic(), _busy_seconds(), _own_seconds()),
                                                           self._start, strict=True))
        return min(1.0, max(0.0, busy - own) / max(1e-9, wall * (os.cpu_count() or 1)))


def others_share(sample_s: float = 0.5) -> float:
    """Other processes' share of the machine's CPU over the next `sample_s` seconds."""
    with OthersCpu() as others:
        time.sleep(sample_s)
    return others.share


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _own_seconds() -> float:
    # Finished children are in this process's children times once reaped; running ones are counted from their own.
    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.Error:  # it ended between the listing and the reading
            continue
        # A live child's own finished children: the workers its fork server forked and has reaped.
        total += child_times.user + child_times.system + child_times.children_user + child_times.children_system
    return total
