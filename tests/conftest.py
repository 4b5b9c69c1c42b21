"""Live-server helpers: a real aserve on a free port, talked to over real sockets."""

from __future__ import annotations

import contextlib
import logging
import socket
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from aserve.testing import LiveServer, live_server, read_until_close

__all__ = ["LiveServer", "read_response", "read_until_close", "serve"]


def pytest_report_header() -> str:
    from aserve.protocols import http

    return f"aserve hot path: {'compiled (mypyc)' if http.COMPILED else 'Python source'}"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put every logger back as it was: a test that configures logging (`configure_logging`,
    `dictConfig`) must not change what a later test's `caplog` sees (a level set on
    `aserve.error` hides its DEBUG lines from the root logger's capture)."""
    loggers = [logging.root, *logging.root.manager.loggerDict.values()]
    saved = [
        (logger, logger.level, list(logger.handlers), logger.propagate, logger.disabled)
        for logger in loggers
        if isinstance(logger, logging.Logger)
    ]
    yield
    for logger, level, handlers, propagate, disabled in saved:
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.disabled = disabled


_leftovers: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket, timeout: float = 5.0, head: bool = False) -> bytes:
    """Read one response framed by Content-Length (`head`: a HEAD response, no body).

    Bytes past the response (pipelined answers arriving together) are kept for the next call.
    """
    sock.settimeout(timeout)
    data = _leftovers.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    header_block, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in header_block.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and not head:
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    if len(body) > length:
        _leftovers[sock] = body[length:]
        body = body[:length]
    return header_block + b"\r\n\r\n" + body


@contextlib.contextmanager
def serve(app: Any, **options: Any) -> Iterator[LiveServer]:
    """Run aserve on 127.0.0.1:0 in a thread with its own event loop (lifespan off by default)."""
    options.setdefault("lifespan", "off")
    with live_server(app, **options) as live:
        yield live


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_name(request: pytest.FixtureRequest) -> str:
    return request.param
