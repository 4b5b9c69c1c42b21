"""How an app call starts: as a real Task, eagerly where Python can.

Compiled with the hot path (setup.py): this runs for every request, and as Python source its
two frames cost about 1.7k instructions a request.
"""

from __future__ import annotations

import asyncio
import sys
import types
from typing import TYPE_CHECKING, Any, Final

from aserve.asgi import as_coroutine, raising

if TYPE_CHECKING:
    import contextvars
    from collections.abc import Coroutine

    from aserve.asgi import ASGIApp, Receive, Scope, Send

EAGER_TASKS: Final = sys.version_info >= (3, 12)

_Task: Final = asyncio.Task
_CoroutineType: Final = types.CoroutineType


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
    call: Any
    try:
        call = app(scope, receive, send)
    except BaseException as exc:  # raised before returning an awaitable (not `async def`)
        call = raising(exc)
    if type(call) is not _CoroutineType:
        call = as_coroutine(call)
    return start_task(loop, call, context)


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
        return _Task(coro, loop=loop, context=context, eager_start=True)  # type: ignore[call-arg]
    return _Task(coro, loop=loop, context=context)
