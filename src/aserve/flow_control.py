"""Write-side flow control shared by the HTTP and WebSocket protocols.

asyncio tells a protocol to stop writing (`pause_writing`) when the transport's buffer is over
its high-water mark, and to go on (`resume_writing`) when it drained. `WriteFlow` turns that
into what an app's `send` can await, so an app streaming to a slow client is slowed down
instead of filling memory. When nothing needs to wait, `send` returns `READY`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, Final, final

from aserve.asgi import as_coroutine

# Exhausted at its first `next()` and for good: `await` on `READY` ends at once on it.
_NOTHING_LEFT: Final[Any] = iter(())


@final
class Ready:
    """An awaitable that is already complete: what `send` returns when it need not wait.

    Awaiting a resolved Future raises and catches a StopIteration per `await` (about 2.4k
    instructions a request, two sends); this ends on an exhausted iterator, without one. It
    also has the coroutine methods, so that `asyncio.create_task(send(message))` works as it
    does with servers whose `send` is a coroutine.
    """

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return _NOTHING_LEFT

    def send(self, value: object) -> None:
        raise StopIteration

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> None:
        """Raise what is thrown in, as a coroutine that has not started would.

        (A Task cancelled before its first step throws CancelledError into its coroutine.)
        """
        if isinstance(typ, BaseException):
            raise typ
        if isinstance(val, BaseException):
            raise val
        raise typ() if val is None else typ(val)

    def close(self) -> None:
        pass


Coroutine.register(Ready)
READY: Final = Ready()


class WriteFlow:
    __slots__ = ("_loop", "_waiter", "paused")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """`loop` is None only for a flow that is never paused (`UNPAUSED`)."""
        self._loop = loop
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

    def drained(self) -> Awaitable[None]:
        """An awaitable that resolves once the transport accepts more data.

        A coroutine (or `READY`, which acts as one) in both cases, like `send` in servers where
        it is an `async def`.
        """
        if not self.paused:
            return READY
        if self._waiter is None:
            loop = self._loop
            assert loop is not None, "UNPAUSED is never paused"
            self._waiter = loop.create_future()
        return as_coroutine(self._waiter)


# The flow of every HTTP connection until its transport first asks it to pause: never paused
# itself, it saves an object per connection (most never pause). Whoever pauses replaces it
# with a `WriteFlow` of its own, so code that waits must read the connection's `flow` anew.
UNPAUSED: Final = WriteFlow(None)
