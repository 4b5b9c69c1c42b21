"""Prometheus metrics of one server process: the counters, their text format, their listener.

The request cycle feeds a `Metrics` object through a few calls, made only when
`ServerState.metrics` is not None (off by default: no cost beyond that comparison). The
exposition (text format 0.0.4) is served on a listener of its own, never on the app's port, by
a tiny protocol in the server's event loop: no dependency, and a scrape sees the process as
it is, blocked loop included. Compiled with the hot-path group (setup.py) when the build can:
the request cycle's calls into `Metrics` are then native.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Callable, Sized
from typing import Any, Final

from aserve.balance import AcceptSlot
from aserve.errors import ConfigError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Request duration buckets in seconds (Prometheus' client defaults): from an in-memory answer
# to a slow upstream call.
DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")

DIRECTIONS: Final = ("received", "sent")

# A scrape request head larger than this, or slower than this, is dropped.
_MAX_HEAD = 8192
_SCRAPE_TIMEOUT = 10.0


class Metrics:
    """Counters of one process. Gauges (in flight, open) are derived when scraped, from
    counters that only grow, so no event can be missed or counted twice into a gauge."""

    __slots__ = (
        "_connections",
        "aborted",
        "completed",
        "duration_buckets",
        "duration_sum",
        "http2_connections",
        "http2_requests",
        "received_bytes",
        "requests",
        "responses",
        "sent_bytes",
        "started_at",
        "supervisor",
        "websocket_bytes",
        "websocket_messages",
        "websockets_accepted",
        "websockets_closed",
    )

    def __init__(self, connections: Sized) -> None:
        self._connections = connections  # the server's open connections (HTTP and WebSocket)
        # A restarted process (a respawned worker) shows as a new start time:
        # changes(process_start_time_seconds[1h]) counts restarts without a supervisor's help.
        self.started_at = time.time()
        self.requests = 0  # request heads parsed
        self.completed = 0  # of those, answered with a complete response
        self.aborted = 0  # of those, ended without one (client left, app failed mid-response)
        self.responses = [0] * 6  # by status // 100; includes error answers to bad requests
        self.sent_bytes = 0  # response body bytes
        self.received_bytes = 0  # request body bytes
        self.duration_buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.duration_sum = 0.0
        self.websockets_accepted = 0
        self.websockets_closed = 0
        self.websocket_messages = [0, 0]  # received, sent (DIRECTIONS)
        self.websocket_bytes = [0, 0]  # their payload bytes, uncompressed
        self.http2_connections = 0  # connections that spoke HTTP/2
        self.http2_requests = 0  # of `requests`, those that came on an HTTP/2 stream
        # A supervisor's worker: its view of the supervisor's shared counts (balance.py), so
        # the restarts it made show here; None in a server without one.
        self.supervisor: AcceptSlot | None = None

    # -- fed by the protocols --------------------------------------------------------------

    def request_received(self) -> None:
        self.requests += 1

    def response_complete(self, status: int, sent: int, received: int, duration: float) -> None:
        self.completed += 1
        self.responses[_status_class(status)] += 1
        self.sent_bytes += sent
        self.received_bytes += received
        index = 0  # the first bucket whose bound is >= duration; compiled, a loop beats bisect
        for bound in DURATION_BUCKETS:
            if duration <= bound:
                break
            index += 1
        self.duration_buckets[index] += 1
        self.duration_sum += duration

    def request_aborted(self, sent: int, received: int) -> None:
        self.aborted += 1
        self.sent_bytes += sent
        self.received_bytes += received

    def error_response(self, status: int) -> None:
        """An answer the server wrote itself, outside a request cycle (a malformed request)."""
        self.responses[_status_class(status)] += 1

    def http2_connection(self) -> None:
        self.http2_connections += 1

    def http2_request(self) -> None:
        """A request on an HTTP/2 stream (a WebSocket's stream is none)."""
        self.requests += 1
        self.http2_requests += 1

    def websocket_accepted(self) -> None:
        self.websockets_accepted += 1

    def websocket_closed(self) -> None:
        self.websockets_closed += 1

    def websocket_frame_received(self, size: int, fin: bool) -> None:
        """A data frame's payload; its message is counted with its last frame."""
        self.websocket_bytes[0] += size
        if fin:
            self.websocket_messages[0] += 1

    def websocket_sent(self, size: int) -> None:
        self.websocket_messages[1] += 1
        self.websocket_bytes[1] += size

    # -- the exposition --------------------------------------------------------------------

    def render(self) -> str:
        """The text exposition format, version 0.0.4."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for suffix, value in samples:
                lines.append(f"{name}{suffix} {_number(value)}")

        metric(
            "aserve_http_requests_total",
            "counter",
            "HTTP requests received (request heads parsed).",
            [("", self.requests)],
        )
        metric(
            "aserve_http2_requests_total",
            "counter",
            "Of the HTTP requests, those that came on an HTTP/2 stream.",
            [("", self.http2_requests)],
        )
        metric(
            "aserve_http2_connections_total",
            "counter",
            "Connections that spoke HTTP/2 (ALPN h2, the client preface, or Upgrade: h2c).",
            [("", self.http2_connections)],
        )
        metric(
            "aserve_http_responses_total",
            "counter",
            "HTTP responses sent in full, by status class; includes answers to malformed requests.",
            [
                (f'{{status="{label}"}}', self.responses[index])
                for index, label in enumerate(STATUS_CLASSES, 1)
            ],
        )
        metric(
            "aserve_http_requests_aborted_total",
            "counter",
            "HTTP requests that ended without a complete response (the client left, or the "
            "app failed after starting its response).",
            [("", self.aborted)],
        )
        metric(
            "aserve_http_requests_in_flight",
            "gauge",
            "HTTP requests received and not yet answered, queued pipelined ones included.",
            [("", self.requests - self.completed - self.aborted)],
        )
        buckets: list[tuple[str, Any]] = []
        cumulative = 0
        for bound, count in zip((*DURATION_BUCKETS, "+Inf"), self.duration_buckets, strict=True):
            cumulative += count
            buckets.append((f'_bucket{{le="{bound}"}}', cumulative))
        buckets += [("_sum", self.duration_sum), ("_count", cumulative)]
        metric(
            "aserve_http_request_duration_seconds",
            "histogram",
            "Time from a request's head being parsed to its response being complete.",
            buckets,
        )
        metric(
            "aserve_http_request_body_bytes_total",
            "counter",
            "Request body bytes received.",
            [("", self.received_bytes)],
        )
        metric(
            "aserve_http_response_body_bytes_total",
            "counter",
            "Response body bytes sent.",
            [("", self.sent_bytes)],
        )
        metric(
            "aserve_connections_open",
            "gauge",
            "Open client connections, HTTP and WebSocket.",
            [("", len(self._connections))],
        )
        metric(
            "aserve_websockets_total",
            "counter",
            "WebSocket connections accepted by the app.",
            [("", self.websockets_accepted)],
        )
        metric(
            "aserve_websockets_open",
            "gauge",
            "Accepted WebSocket connections still open.",
            [("", self.websockets_accepted - self.websockets_closed)],
        )
        metric(
            "aserve_websocket_messages_total",
            "counter",
            "WebSocket messages, by direction (a fragmented message counts once).",
            _by_direction(self.websocket_messages),
        )
        metric(
            "aserve_websocket_bytes_total",
            "counter",
            "WebSocket message payload bytes, by direction (text as UTF-8, uncompressed).",
            _by_direction(self.websocket_bytes),
        )
        supervisor = self.supervisor
        if supervisor is not None:
            metric(
                "aserve_worker_restarts_total",
                "counter",
                "Workers the supervisor replaced (or removed), by reason; supervisor-wide: the "
                "same in every worker.",
                [(f'{{reason="{reason}"}}', count) for reason, count in supervisor.restarts()],
            )
            metric(
                "aserve_workers",
                "gauge",
                "Workers accepting connections now, supervisor-wide.",
                [("", supervisor.workers())],
            )
        metric(
            "process_start_time_seconds",
            "gauge",
            "When this server process started serving, in seconds since the epoch.",
            [("", self.started_at)],
        )
        lines.append("")
        return "\n".join(lines)


def _by_direction(counts: list[int]) -> list[tuple[str, Any]]:
    return [(f'{{direction="{d}"}}', n) for d, n in zip(DIRECTIONS, counts, strict=True)]


def _status_class(status: int) -> int:
    index = status // 100
    return index if 1 <= index <= 5 else 5


def _number(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


# -- the listener ------------------------------------------------------------------------------


def bind_metrics_socket(host: str, port: int, wait_if_in_use: bool = False) -> socket.socket | None:
    """The metrics listener's socket, bound before the app starts (a busy port fails fast).

    `wait_if_in_use`: return None when the port is taken, for a worker whose predecessor
    (same worker number, same port) is still draining during a rolling restart.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if wait_if_in_use and exc.errno == errno.EADDRINUSE:
            return None
        raise ConfigError(f"cannot listen on {host}:{port} for metrics: {exc.strerror}") from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


async def start_metrics_server(render: Callable[[], str], sock: socket.socket) -> asyncio.Server:
    """Serve `GET /metrics` on `sock`: one request per connection, then close."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: ScrapeProtocol(render), sock=sock)


class ScrapeProtocol(asyncio.Protocol):
    """One scrape: read a request head, answer it, close."""

    __slots__ = ("_buffer", "_render", "_timer", "transport")

    def __init__(self, render: Callable[[], str]) -> None:
        self._render = render
        self._buffer = b""
        self._timer: asyncio.TimerHandle | None = None
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._timer = asyncio.get_running_loop().call_later(_SCRAPE_TIMEOUT, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._buffer += data
        head, found, _ = self._buffer.partition(b"\r\n\r\n")
        if not found:
            if len(self._buffer) > _MAX_HEAD:
                self._answer(431, "request head too large\n")
            return
        method, _, rest = head.split(b"\r\n", 1)[0].partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        if target != b"/metrics":
            self._answer(404, "not found: metrics are at /metrics\n")
        elif method not in (b"GET", b"HEAD"):
            self._answer(405, "method not allowed: use GET\n", b"allow: GET, HEAD\r\n")
        else:
            self._answer(200, self._render(), head_only=method == b"HEAD")

    def _answer(self, status: int, text: str, extra: bytes = b"", head_only: bool = False) -> None:
        assert self.transport is not None
        body = text.encode("utf-8")
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large"}
        content_type = CONTENT_TYPE if status == 200 else "text/plain; charset=utf-8"
        head = (
            f"HTTP/1.1 {status} {reason[status]}\r\ncontent-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n"
        ).encode("ascii")
        self.transport.write(head + extra + b"\r\n" + (b"" if head_only else body))
        self.transport.close()
