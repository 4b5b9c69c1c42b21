"""Live-server helpers: a real aserve on a free port, talked to over real sockets."""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from aserve.config import Config
from aserve.server import Server, run


def pytest_report_header() -> str:
    from aserve.protocols import http

    return f"aserve hot path: {'compiled (mypyc)' if http.COMPILED else 'Python source'}"


class LiveServer:
    def __init__(self, server: Server, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread
        self.errors: list[BaseException] = []

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def request(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Send raw bytes, read until the server closes (or `timeout` passes)."""
        with self.connect(timeout) as sock:
            sock.sendall(data)
            return read_until_close(sock, timeout)


def read_until_close(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


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
    """Run aserve on 127.0.0.1:0 in a thread with its own event loop."""
    options.setdefault("lifespan", "off")
    options.setdefault("port", 0)
    config = Config(app=app, **options)
    server = Server(config)
    live = LiveServer(server, threading.Thread())

    def target() -> None:
        try:
            run(server.serve(), loop=config.loop)
        except BaseException as exc:  # surfaced to the test on exit
            live.errors.append(exc)

    # The server thread starts in a copy of the caller's context, as `serve()` would.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target,), daemon=True)
    live.thread = thread
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if live.errors:
            raise live.errors[0]
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield live
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "server did not shut down"
    if live.errors:
        raise live.errors[0]


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_name(request: pytest.FixtureRequest) -> str:
    return request.param
