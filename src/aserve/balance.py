"""Sharing a burst of connections between workers that accept from one listening socket.

The kernel wakes every worker waiting on a shared socket, and whoever runs first accepts:
on a busy machine one worker can take most of a burst. Each worker therefore counts what it
accepted in a slot of a small shared memory array the supervisor maps before it forks, and a
worker that is ahead of the least busy sibling by `LEAD` steps aside for a few milliseconds,
at most `MAX_DEFERRALS` times in a row, so a sibling that is slow or blocked never leaves
connections waiting for long. A worker that starts late joins at the busiest count, so a new
worker does not take every connection until it catches up.
"""

from __future__ import annotations

import mmap
import struct

# A slot whose worker is not accepting (none there, starting, draining, gone).
IDLE = -1
# How far ahead of the least busy sibling a worker may get before it steps aside.
LEAD = 4
# How long it steps aside, and how many times in a row at most.
DEFER_DELAY = 0.003
MAX_DEFERRALS = 3

_SLOT = struct.Struct("q")


class AcceptShares:
    """The shared counts: one signed 64-bit slot per worker process, mapped before fork."""

    def __init__(self, slots: int = 128) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, _SLOT.size * slots)  # anonymous and shared: fork keeps it
        self._counts = memoryview(self._map).cast("q")
        for index in range(slots):
            self._counts[index] = IDLE

    def slot(self, index: int) -> AcceptSlot:
        return AcceptSlot(self, index)

    def release(self, index: int) -> None:
        """The supervisor frees the slot of a worker that exited (a crash included)."""
        self._counts[index] = IDLE

    def counts(self) -> list[int]:
        return [count for count in self._counts if count != IDLE]


class AcceptSlot:
    """One worker's view: its own count against its siblings'."""

    __slots__ = ("_counts", "_index")

    def __init__(self, shares: AcceptShares, index: int) -> None:
        self._counts = shares._counts
        self._index = index

    def join(self) -> None:
        """Start counting, level with the busiest sibling."""
        busiest = max((c for c in self._counts if c != IDLE), default=0)
        self._counts[self._index] = busiest

    def leave(self) -> None:
        self._counts[self._index] = IDLE

    def add(self, accepted: int) -> None:
        if self._counts[self._index] != IDLE:
            self._counts[self._index] += accepted

    def ahead(self) -> bool:
        """Has this worker accepted `LEAD` more than the least busy sibling?"""
        mine = self._counts[self._index]
        if mine == IDLE:
            return False
        others = [c for i, c in enumerate(self._counts) if c != IDLE and i != self._index]
        return bool(others) and mine >= min(others) + LEAD
