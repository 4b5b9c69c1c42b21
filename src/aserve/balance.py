"""Sharing a burst of connections between workers that accept from one listening socket.

The kernel wakes every worker waiting on a shared socket, and whoever runs first accepts:
on a busy machine one worker can take most of a burst. Each worker therefore counts what it
accepted in a slot of a small shared memory array the supervisor maps before it forks, and a
worker that is ahead of the least busy sibling by `LEAD` steps aside for a few milliseconds,
at most `MAX_DEFERRALS` times in a row, so a sibling that is slow or blocked never leaves
connections waiting for long. A worker that starts late joins at the busiest count, so a new
worker does not take every connection until it catches up.

The same memory carries the supervisor's restart counts (`RESTART_REASONS`): the supervisor
has no event loop and no listener, so every worker's /metrics shows them (docs/metrics.md).
Only the supervisor writes them; a worker reads whole 8-byte words.
"""

from __future__ import annotations

import mmap
import struct

# A slot whose worker is not accepting (none there, starting, draining, gone): larger than any
# count, so the least busy sibling is simply the smallest value.
IDLE = (1 << 63) - 1
# How far ahead of the least busy sibling a worker may get before it steps aside.
LEAD = 4
# How long it steps aside, and how many times in a row at most.
DEFER_DELAY = 0.003
MAX_DEFERRALS = 3

_SLOT = struct.Struct("q")

# Why the supervisor replaced (or, scaling down, removed) a worker, as /metrics labels them.
RESTART_REASONS = (
    "crashed",  # exited or was killed by a signal while serving, unasked
    "start_failed",  # exited before it was ready (the app failed to start)
    "blocked",  # its event loop stopped answering the heartbeat: killed
    "max_requests",  # --limit-max-requests
    "memory",  # --limit-worker-memory
    "reload",  # SIGHUP
    "scaled_down",  # SIGTTOU
)


class AcceptShares:
    """The shared counts: one signed 64-bit slot per worker process, mapped before fork.

    The first word holds how many slots have ever been handed out (the supervisor takes the
    lowest free one), so a worker looks at those only, not at all `slots`: `ahead()` runs on
    every wake-up of the listening socket, once per new connection under a steady load, and a
    scan of 128 slots in Python cost as much as the rest of accepting the connection.
    """

    def __init__(self, slots: int = 128) -> None:
        self.slots = slots
        size = _SLOT.size * (1 + slots + len(RESTART_REASONS))
        self._map = mmap.mmap(-1, size)  # anonymous and shared: fork keeps it
        words = memoryview(self._map).cast("q")
        self._in_use = words[:1]  # zeroed by mmap
        self._counts = words[1 : 1 + slots]
        self._restarts = words[1 + slots :]  # zeroed by mmap
        for index in range(slots):
            self._counts[index] = IDLE

    def slot(self, index: int) -> AcceptSlot:
        if not 0 <= index < self.slots:
            raise IndexError(f"slot {index} out of range(0, {self.slots})")
        self._in_use[0] = max(self._in_use[0], index + 1)
        return AcceptSlot(self, index)

    def release(self, index: int) -> None:
        """The supervisor frees the slot of a worker that exited (a crash included)."""
        self._counts[index] = IDLE

    def counts(self) -> list[int]:
        return [count for count in self._counts[: self._in_use[0]] if count != IDLE]

    def restarted(self, reason: str) -> None:
        """The supervisor counts a worker it replaced (or removed), by `RESTART_REASONS`."""
        self._restarts[RESTART_REASONS.index(reason)] += 1


class AcceptSlot:
    """One worker's view: its own count against its siblings'."""

    __slots__ = ("_counts", "_in_use", "_index", "_restarts")

    def __init__(self, shares: AcceptShares, index: int) -> None:
        self._counts = shares._counts
        self._in_use = shares._in_use
        self._restarts = shares._restarts
        self._index = index

    def restarts(self) -> list[tuple[str, int]]:
        """The supervisor's restart counts, by reason: the same in every worker."""
        return list(zip(RESTART_REASONS, self._restarts.tolist(), strict=True))

    def workers(self) -> int:
        """How many workers accept connections now (started, not draining)."""
        return sum(1 for count in self._counts[: self._in_use[0]] if count != IDLE)

    def join(self) -> None:
        """Start counting, level with the busiest sibling."""
        busiest = max((c for c in self._counts[: self._in_use[0]] if c != IDLE), default=0)
        self._counts[self._index] = busiest

    def leave(self) -> None:
        self._counts[self._index] = IDLE

    def add(self, accepted: int) -> None:
        if self._counts[self._index] != IDLE:
            self._counts[self._index] += accepted

    def ahead(self) -> bool:
        """Has this worker accepted `LEAD` more than the least busy sibling?

        Idle slots are larger than any count, and a worker is never ahead of itself, so the
        smallest count among the slots in use answers it (alone, it is its own count).
        """
        counts = self._counts
        mine = counts[self._index]
        return mine != IDLE and mine >= min(counts[: self._in_use[0]]) + LEAD
