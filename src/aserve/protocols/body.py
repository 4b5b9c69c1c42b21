"""The app's `receive` for an HTTP request: the request body, as the connection reads it.

This is the one part of the request cycle that suspends, and it is kept out of the compiled
modules (`cycle`, see setup.py) on purpose: a mypyc coroutine that is cancelled while
suspended passes the cancellation on with the deprecated three-argument `throw()`, which warns,
and under `-W error` would turn the app's CancelledError into a DeprecationWarning. A plain
coroutine passes it on as asyncio does.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aserve.asgi import Message


class _State(Protocol):
    loop: asyncio.AbstractEventLoop
    shutting_down: bool


class BodySource(Protocol):
    """What `receive_body` needs of a request cycle (`protocols.cycle.RequestCycle` has it).

    Typed structurally so that this module does not import the one that imports it.
    """

    disconnected: bool
    complete: bool
    started: bool
    stopped: bool
    chunks: Any
    body_done: bool
    delivered: bool
    waiter: asyncio.Future[None] | None

    @property
    def state(self) -> _State: ...

    def take_body(self) -> Message: ...

    def ask_for_body(self) -> None: ...


async def receive_body(cycle: BodySource) -> Message:
    """The next `http.request` message, or `http.disconnect` once there is nothing more."""
    while True:
        if cycle.disconnected or cycle.complete:
            return {"type": "http.disconnect"}
        if cycle.chunks is not None or (cycle.body_done and not cycle.delivered):
            return cycle.take_body()
        if cycle.delivered and cycle.started and cycle.state.shutting_down:
            # Graceful shutdown: the app has read its whole request and streams its response
            # (server-sent events, a long poll). The disconnect lets it end the stream now;
            # if it returns with the response open, the cycle ends it whole.
            cycle.stopped = True
            return {"type": "http.disconnect"}
        cycle.ask_for_body()
        # Nothing to hand out: wait for body, the end of the response, or a disconnect.
        waiter = cycle.waiter = cycle.state.loop.create_future()
        try:
            await waiter
        finally:
            cycle.waiter = None
