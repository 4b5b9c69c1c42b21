"""Health for orchestrators: `GET /livez` and `GET /readyz` on a listener of their own.

Never on the app's port and never through the app: a probe is answered by aserve itself,
counts toward no limit (`--limit-concurrency`) and writes no access-log line, so a busy app
cannot fail its probes by being busy, and the probes cannot crowd out the app.

Two ways to serve them, one answer (`respond`): in a server's event loop (`HealthProtocol`,
shaped like the metrics listener), where a blocked loop leaves the probe unanswered, which is
what a liveness probe is for; and in the supervisor, which has no event loop
(`SelectorHealth`, non-blocking sockets on the supervisor's own selector), where liveness is
every worker's heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from aserve.addresses import bracketed
from aserve.errors import ConfigError

# A probe's answer: whether it passes, and one line saying why (the body).
Probe = Callable[[], tuple[bool, str]]

# A request head larger than this, or slower than this, is dropped.
MAX_HEAD = 8192
REQUEST_TIMEOUT = 10.0
# Probe connections the supervisor holds open at once; more wait in the kernel's backlog.
MAX_CONNECTIONS = 64
# After accept() failed (out of descriptors), wait this long before trying again.
ACCEPT_RETRY_DELAY = 0.5

_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def respond(head: bytes, live: Probe, ready: Probe) -> bytes:
    """The whole answer to one request head: 200 or 503 with a line of text, then close."""
    method, _, rest = head.split(b"\r\n", 1)[0].partition(b" ")
    target = rest.partition(b" ")[0].partition(b"?")[0]
    probe = {b"/livez": live, b"/readyz": ready}.get(target)
    if probe is None:
        return _answer(404, "not found: the health checks are /livez and /readyz")
    if method not in (b"GET", b"HEAD"):
        return _answer(405, "method not allowed: use GET", b"allow: GET, HEAD\r\n")
    passing, text = probe()
    return _answer(200 if passing else 503, text, head_only=method == b"HEAD")


def _answer(status: int, text: str, extra: bytes = b"", head_only: bool = False) -> bytes:
    body = (text + "\n").encode("utf-8", "replace")
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\ncache-control: no-store\r\nconnection: close\r\n"
    ).encode("ascii")
    return head + extra + b"\r\n" + (b"" if head_only else body)


def bind_health_socket(host: str, port: int) -> socket.socket:
    """The health listener's socket, bound before the app starts (a busy port fails fast)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"{bracketed(host)}:{port}"
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {where} for health checks: {exc.strerror}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {where} for health checks: {exc.strerror}") from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


def listener_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{bracketed(host)}:{port}"


# -- in an event loop (one server process) -------------------------------------------------


async def start_health_server(sock: socket.socket, live: Probe, ready: Probe) -> asyncio.Server:
    """Serve the probes on `sock` from the running loop: one request per connection."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HealthProtocol(live, ready), sock=sock)


class HealthProtocol(asyncio.Protocol):
    """One probe: read a request head, answer it, close."""

    __slots__ = ("_buffer", "_live", "_ready", "_timer", "transport")

    def __init__(self, live: Probe, ready: Probe) -> None:
        self._live = live
        self._ready = ready
        self._buffer = b""
        self._timer: asyncio.TimerHandle | None = None
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._buffer += data
        if b"\r\n\r\n" in self._buffer:
            self.transport.write(respond(self._buffer, self._live, self._ready))
        elif len(self._buffer) > MAX_HEAD:
            self.transport.write(_answer(431, "request head too large"))
        else:
            return
        self.transport.close()


# -- in the supervisor (no event loop) -----------------------------------------------------


class SelectorHealth:
    """The probes served from a selector loop that never blocks: the supervisor's.

    The listening socket and each probe's connection are registered on the caller's selector
    with a callable as their data; the caller calls it when the socket is readable, and
    `expire()` once a turn. Every socket is non-blocking, and an answer (a few hundred bytes)
    fits a new socket's send buffer, so nothing here waits.
    """

    def __init__(
        self, sock: socket.socket, selector: selectors.BaseSelector, live: Probe, ready: Probe
    ) -> None:
        self.sock = sock
        self._selector = selector
        self._live = live
        self._ready = ready
        self._connections: dict[socket.socket, tuple[bytearray, float]] = {}
        self._accepting = False
        self._retry_at = 0.0
        self._resume()

    def fds(self) -> list[int]:
        """Every descriptor it holds: a forked worker closes them."""
        return [self.sock.fileno(), *(conn.fileno() for conn in self._connections)]

    def close(self) -> None:
        for conn in list(self._connections):
            self._drop(conn)
        self._pause()
        self.sock.close()

    def expire(self, now: float) -> None:
        """Close the connections whose request did not arrive in time; accept again after a
        failed accept()."""
        for conn, (_, deadline) in list(self._connections.items()):
            if now >= deadline:
                self._drop(conn)
        if (
            not self._accepting
            and now >= self._retry_at
            and self.sock.fileno() != -1
            and len(self._connections) < MAX_CONNECTIONS
        ):
            self._resume()

    def _accept(self) -> None:
        while len(self._connections) < MAX_CONNECTIONS:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError:  # out of descriptors: the socket stays readable, so do not spin
                self._pause()
                self._retry_at = time.monotonic() + ACCEPT_RETRY_DELAY
                return
            conn.setblocking(False)
            self._connections[conn] = (bytearray(), time.monotonic() + REQUEST_TIMEOUT)
            self._selector.register(conn, selectors.EVENT_READ, lambda c=conn: self._read(c))
        self._pause()  # at the limit: the rest wait in the backlog until one is done

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        buffer = self._connections[conn][0]
        buffer += data
        if b"\r\n\r\n" in buffer:
            answer = respond(bytes(buffer), self._live, self._ready)
        elif len(buffer) > MAX_HEAD:
            answer = _answer(431, "request head too large")
        else:
            return
        with contextlib.suppress(OSError):
            conn.send(answer)
        self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._connections.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()
        if not self._accepting and self.sock.fileno() != -1 and time.monotonic() >= self._retry_at:
            self._resume()

    def _pause(self) -> None:
        if self._accepting:
            self._accepting = False
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self.sock)

    def _resume(self) -> None:
        self._accepting = True
        self._selector.register(self.sock, selectors.EVENT_READ, self._accept)
