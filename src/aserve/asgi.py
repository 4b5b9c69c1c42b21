"""ASGI types, the ASGI 2 adapter and how an app call is started.

Shared by the HTTP and WebSocket protocols and by lifespan; imports nothing else of aserve.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ASGI_VERSION = "3.0"
HTTP_SPEC_VERSION = "2.4"
WEBSOCKET_SPEC_VERSION = "2.4"

EAGER_TASKS = sys.version_info >= (3, 12)


class ClientDisconnected(OSError):
    """Raised by `send` once the client has gone, as ASGI spec 2.4 asks of servers."""


class ASGI2Adapter:
    """Runs an ASGI 2 (double-callable) app behind the ASGI 3 interface."""

    __slots__ = ("app",)

    def __init__(self, app: Callable[[Scope], Callable[[Receive, Send], Awaitable[None]]]):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        instance = self.app(scope)
        await instance(receive, send)


def start_app(
    loop: asyncio.AbstractEventLoop,
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    context: contextvars.Context,
) -> asyncio.Task[Any]:
    """Call the app and start the call as a Task (see `start_task`).

    The app's own coroutine is the Task's coroutine: no wrapper frame per request. The caller
    reads success or failure from the Task when it is done.
    """
    try:
        call = app(scope, receive, send)
    except BaseException as exc:  # raised before returning an awaitable (not `async def`)
        call = _raise(exc)
    if type(call) is not types.CoroutineType:
        call = _await(call)
    return start_task(loop, call, context)


async def _await(awaitable: Awaitable[None]) -> None:
    await awaitable


async def _raise(exc: BaseException) -> None:
    raise exc


def start_task(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any],
    context: contextvars.Context,
) -> asyncio.Task[Any]:
    """Start an app call as a real Task in its own context.

    On 3.12+ the Task starts eagerly: it runs synchronously until its first suspension, so a
    request that needs no I/O completes without a trip through the event loop. It is still a
    real Task: `current_task()`, anyio cancel scopes, `asyncio.timeout` and contextvars behave
    exactly as in a scheduled one. 3.11 has no eager start and gets a scheduled Task.
    """
    if EAGER_TASKS:
        return asyncio.Task(coro, loop=loop, context=context, eager_start=True)  # type: ignore[call-arg]
    return asyncio.Task(coro, loop=loop, context=context)
