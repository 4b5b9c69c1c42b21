"""How an app call starts: as a real Task, eagerly where Python can.

Compiled with the hot path (setup.py): this runs for every request, and as Python source its
two frames cost about 1.7k instructions a request.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from aserve.asgi import as_coroutine, raising

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from aserve.asgi import ASGIApp, Receive, Scope, Send

EAGER_TASKS: Final = sys.version_info >= (3, 12)

_Task: Final = asyncio.Task
_CoroutineType: Final = types.CoroutineType
# Unbound methods, called with the object as argument: no method lookup per call (compiled,
# about 200 instructions each time).
_copy_context: Final = contextvars.Context.copy
task_done: Final[Callable[[asyncio.Task[Any]], bool]] = asyncio.Task.done
task_exception: Final[Callable[[asyncio.Task[Any]], BaseException | None]] = asyncio.Task.exception


def start_app(
    loop: asyncio.AbstractEventLoop,
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    base_context: contextvars.Context,
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
    return start_task(loop, call, base_context)


def start_task(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any],
    base_context: contextvars.Context,
) -> asyncio.Task[Any]:
    """Start an app call as a real Task in a fresh copy of `base_context`.

    Nothing one call sets in its context is seen by another. On 3.12+ the Task starts
    eagerly: it runs synchronously until its first suspension, so a request that needs no I/O
    completes without a trip through the event loop. It is still a real Task:
    `current_task()`, anyio cancel scopes, `asyncio.timeout` and contextvars behave exactly as
    in a scheduled one. 3.11 has no eager start and gets a scheduled Task.
    """
    context = _copy_context(base_context)
    if EAGER_TASKS:
        return _Task(coro, loop=loop, context=context, eager_start=True)  # type: ignore[call-arg]
    return _Task(coro, loop=loop, context=context)
