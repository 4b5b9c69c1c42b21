"""Write-side flow control shared by the HTTP and WebSocket protocols.

asyncio tells a protocol to stop writing (`pause_writing`) when the transport's buffer is over
its high-water mark, and to go on (`resume_writing`) when it drained. `WriteFlow` turns that
into what an app's `send` can await, so an app streaming to a slow client is slowed down
instead of filling memory.
"""

from __future__ import annotations

import asyncio


class WriteFlow:
    __slots__ = ("_done", "_loop", "_waiter", "paused")

    def __init__(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
        self._loop = loop
        self._done = done  # an already-resolved future, shared: awaiting it never suspends
        self._waiter: asyncio.Future[None] | None = None
        self.paused = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        """The transport drained, or the connection is gone: wake whoever waits to send."""
        self.paused = False
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def drained(self) -> asyncio.Future[None]:
        """An awaitable that resolves once the transport accepts more data."""
        if not self.paused:
            return self._done
        if self._waiter is None:
            self._waiter = self._loop.create_future()
        return self._waiter
