"""A live aserve for tests: `live_server()`, and the pytest fixtures built on it.

Installed as a pytest plugin (entry point `pytest11`), so with aserve installed a test can ask
for them without any conftest:

    def test_home(aserve_server):
        with aserve_server(app) as server:
            assert httpx.get(server.url).status_code == 200

`aserve_server` serves on 127.0.0.1 and a free port, `aserve_unix_server` on a Unix socket.
The server runs in a thread with its own event loop, so the test talks to it over real sockets
with any client, sync or async.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import pytest

from aserve.config import Config
from aserve.server import Server

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class LiveServer:
    """A running aserve: where to reach it, and `stop()` (also on leaving a `with` block)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.config = server.config
        self.errors: list[BaseException] = []
        self.thread: threading.Thread | None = None  # the one the server runs in
        self._stopped = False

    @property
    def uds(self) -> str | None:
        return self.config.uds

    @property
    def host(self) -> str:
        return self.server.sockets[0].getsockname()[0] if self.uds is None else "localhost"

    @property
    def port(self) -> int:
        """The TCP port it listens on (the free one it took with `port=0`)."""
        if self.uds is not None:
            raise AttributeError("a server on a Unix socket has no port; use .uds")
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`; on a Unix socket `http://localhost` (send it over `.uds`)."""
        if self.uds is not None:
            return "http://localhost"
        host = self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]

    def connect(self, timeout: float = 5.0) -> socket.socket:
        """A new raw connection to the server."""
        if self.uds is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(self.uds)
            return sock
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def request(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Send raw bytes on a new connection; what came back before the server closed it
        (or `timeout` passed)."""
        with self.connect(timeout) as sock:
            sock.sendall(data)
            return read_until_close(sock, timeout)

    def client(self, **options: Any) -> Any:
        """An `httpx.Client` for the server (over the Unix socket when it has one)."""
        import httpx

        if self.uds is not None:
            options.setdefault("transport", httpx.HTTPTransport(uds=self.uds))
        return httpx.Client(base_url=self.url, **options)

    def async_client(self, **options: Any) -> Any:
        """An `httpx.AsyncClient` for the server."""
        import httpx

        if self.uds is not None:
            options.setdefault("transport", httpx.AsyncHTTPTransport(uds=self.uds))
        return httpx.AsyncClient(base_url=self.url, **options)

    def start(self) -> LiveServer:
        """Serve in a thread; returns once it listens, or raises what stopped it starting."""
        server = self.server

        def target() -> None:
            try:
                server.run()
            except BaseException as exc:  # surfaced to the test by start() or stop()
                self.errors.append(exc)

        # The thread starts in a copy of the caller's context, as the CLI's serve() would.
        context = contextvars.copy_context()
        thread = self.thread = threading.Thread(
            target=context.run, args=(target,), name="aserve", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if self.errors or not thread.is_alive():
                self._stopped = True
                thread.join(STOP_TIMEOUT)
                if self.errors:
                    raise self.errors[0]
                raise RuntimeError("aserve stopped before it started listening")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"aserve did not start within {START_TIMEOUT}s")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Shut down gracefully (as on SIGTERM) and re-raise an error the server ended with."""
        thread = self.thread
        if thread is None or self._stopped:
            return
        self._stopped = True
        self.server.should_exit = True
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"aserve did not shut down within {STOP_TIMEOUT}s")
        if self.errors:
            raise self.errors[0]

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def read_until_close(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything `sock` receives until the peer closes it (or `timeout` passes)."""
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def start_server(app: Any, **options: Any) -> LiveServer:
    """Start `app` (an ASGI app or "module:attribute") under aserve; `Config` options.

    Listens on 127.0.0.1 and a free port unless `port`, `host`, `uds`, `fd` or `bind` say
    otherwise.
    """
    if options.get("uds") is None and options.get("fd") is None and not options.get("bind"):
        options.setdefault("port", 0)
    return LiveServer(Server(Config(app, **options))).start()


@contextlib.contextmanager
def live_server(app: Any, **options: Any) -> Iterator[LiveServer]:
    """`start_server` as a context manager: stopped (and its errors raised) on leaving."""
    with start_server(app, **options) as server:
        yield server


ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def aserve_server() -> Iterator[ServerFactory]:
    """Start apps under a live aserve on free ports: `aserve_server(app, **config)`.

    Use the result in a `with` block to stop it there, or let the fixture stop it after the
    test. Keyword arguments are `aserve.Config`'s (lifespan, root_path, headers...).
    """
    started: list[LiveServer] = []

    def factory(app: Any, **options: Any) -> LiveServer:
        server = start_server(app, **options)
        started.append(server)
        return server

    yield factory
    for server in reversed(started):
        server.stop()


@pytest.fixture
def aserve_unix_server(aserve_server: ServerFactory) -> Iterator[ServerFactory]:
    """Like `aserve_server`, over a Unix socket in a fresh directory (`server.uds`)."""
    # A short path: Unix socket paths are limited to about 100 bytes.
    directory = tempfile.mkdtemp(prefix="aserve-")
    started: list[LiveServer] = []

    def factory(app: Any, **options: Any) -> LiveServer:
        options.setdefault("uds", os.path.join(directory, f"{len(started)}.sock"))
        server = aserve_server(app, **options)
        started.append(server)
        return server

    try:
        yield factory
        for server in reversed(started):
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
