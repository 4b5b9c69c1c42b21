"""ASGI types, spec versions, the scope template, the ASGI 2 adapter, app-facing errors.

Shared by the HTTP and WebSocket protocols and by lifespan; imports nothing else of aserve.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ASGI_VERSION = "3.0"
HTTP_SPEC_VERSION = "2.4"
WEBSOCKET_SPEC_VERSION = "2.4"

# The ASGI extensions every HTTP scope offers (protocols/extensions.py implements them).
HTTP_EXTENSIONS = (
    "http.response.pathsend",
    "http.response.zerocopysend",
    "http.response.trailers",
    "http.response.early_hint",
)


def http_scope_template(root_path: str) -> dict[str, Any]:
    """The keys of every HTTP scope, in order, with what is the same for every request.

    One per server, shared by all connections: a connection copies it for each request and
    fills in the rest, which costs about two thirds of building the dict from a literal and
    keeps no dict per idle connection. The version, scheme, method and query string hold
    their most common values (`build_scope` stores only the ones that differ: a store is
    about 230 instructions compiled, a comparison a few dozen).
    """
    return {
        "type": "http",
        "asgi": None,
        "http_version": "1.1",
        "server": None,
        "client": None,
        "scheme": "http",
        "method": "GET",
        "root_path": root_path,
        "path": None,
        "raw_path": None,
        "query_string": b"",
        "headers": None,
        "state": None,
        # The connection gives each request its own copy (an app may add to it).
        "extensions": {name: {} for name in HTTP_EXTENSIONS},
    }


class InvalidResponse(RuntimeError):
    """The app sent something that cannot go on the wire."""


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


async def as_coroutine(awaitable: Awaitable[None]) -> None:
    """A coroutine around an app call that returned another kind of awaitable.

    Python source on purpose (see `tasks`): a compiled coroutine passes a cancellation on with
    the deprecated three-argument `throw()`.
    """
    await awaitable


async def raising(exc: BaseException) -> None:
    """A coroutine for an app call that raised before returning an awaitable."""
    raise exc
