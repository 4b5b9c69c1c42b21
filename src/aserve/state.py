"""What all connections of one server share: the app, settings in hot-path form, the clock.

Protocols read this object instead of the Config, so the per-request path touches plain
attributes only, and a supervisor or test can build one without a CLI or a listening socket.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import time
from typing import TYPE_CHECKING, Any

from aserve.asgi import http_scope_template
from aserve.logging import AccessLog
from aserve.metrics import Metrics
from aserve.proxy import TrustedProxies, parse_trusted

if TYPE_CHECKING:
    from collections.abc import Callable

    from aserve.asgi import ASGIApp
    from aserve.config import Config


class ServerState:
    __slots__ = (
        "_date",
        "_extra_headers",
        "_server_header",
        "access_log",
        "app",
        "base_context",
        "callback_context",
        "clock",
        "config",
        "connections",
        "default_headers",
        "duration_clock",
        "http2",
        "http_scope_template",
        "lifespan_state",
        "limit_concurrency",
        "limit_request_body",
        "limit_request_field_size",
        "limit_request_fields",
        "limit_request_head",
        "limit_request_line",
        "loop",
        "metrics",
        "parser_callbacks",
        "pending_writes",
        "restarting",
        "root_path",
        "shutting_down",
        "tasks",
        "timeout_keep_alive",
        "timeout_request",
        "timeout_request_body_idle",
        "timeout_request_header",
        "tls_info",
        "trusted_proxies",
        "valid_host",
        "websockets",
    )

    def __init__(
        self,
        config: Config,
        app: ASGIApp,
        loop: asyncio.AbstractEventLoop,
        base_context: contextvars.Context | None = None,
        lifespan_state: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.app = app
        self.loop = loop
        # Every app call runs in a fresh copy of this: what was set up before the server
        # started (tracing, logging context) is visible; nothing leaks between requests.
        self.base_context = base_context if base_context is not None else contextvars.copy_context()
        # What the connections' own callbacks (their timers, a head flushed a turn later) run
        # in: one context for all, never an app's. Without it asyncio copies the current
        # context for every timer: one more object per connection for the garbage collector,
        # and a copy of the last request's context (whatever the app put in it) kept alive
        # for as long as the connection stays idle.
        self.callback_context = self.base_context.copy()
        # The HTTP protocol's parser callbacks, shared by the connections of this server
        # (protocols/http.py, `ParserCallbacks`); made by the first connection.
        self.parser_callbacks: Any = None
        # Connections whose batched answers leave at the end of this loop iteration
        # (protocols/http.py, `HttpProtocol._flush_later`); None when there are none.
        self.pending_writes: list[Any] | None = None
        self.lifespan_state: dict[str, Any] = lifespan_state if lifespan_state is not None else {}
        self.connections: set[Any] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.shutting_down = False
        # Set with `shutting_down` when this process stops to be replaced (a supervisor's
        # rolling restart or recycling, --reload): WebSockets close 1012, not 1001.
        self.restarting = False
        self.root_path = config.root_path
        self.http_scope_template = http_scope_template(config.root_path)
        self.limit_concurrency = config.limit_concurrency
        # Request limits (docs/security.md).
        self.limit_request_line = config.limit_request_line
        self.limit_request_head = config.limit_request_head
        self.limit_request_field_size = config.limit_request_field_size
        self.limit_request_fields = config.limit_request_fields
        self.limit_request_body = config.limit_request_body
        # The last Host header found valid: most requests repeat it, and then skip the check.
        self.valid_host = b""
        self.timeout_keep_alive = config.timeout_keep_alive
        # Request deadlines (docs/security.md).
        self.timeout_request_header = config.timeout_request_header
        self.timeout_request_body_idle = config.timeout_request_body_idle
        self.timeout_request: float | None = config.timeout_request
        # The `tls` extension's per-server part (tls.TLSInfo) when TLS is on; the server sets it.
        self.tls_info: Any = None
        self.trusted_proxies: TrustedProxies | None = (
            parse_trusted(config.forwarded_allow_ips) if config.proxy_headers else None
        )
        # WebSocket upgrades are handled unless turned off ("auto": websockets is a dependency).
        self.websockets = config.ws != "none"
        # HTTP/2 on connections that ask for it (ALPN, the client preface, Upgrade: h2c).
        self.http2 = config.http2
        access_log = AccessLog(
            config.access_log, config.access_log_format, config.log_format == "json"
        )
        # None when nothing would be written: the per-request check is one comparison.
        self.access_log: AccessLog | None = access_log if access_log.enabled else None
        # None unless metrics are on: the protocols' hook is one comparison when they are off.
        self.metrics: Metrics | None = (
            Metrics(self.connections) if config.metrics_port is not None else None
        )
        # The loop's clock as a stored callable: a call without a method lookup per request.
        self.clock: Callable[[], float] = loop.time
        # Durations (access log) need a clock that moves within one loop iteration: uvloop's
        # `loop.time()` is cached per iteration, so a request answered inside one would last 0.
        self.duration_clock: Callable[[], float] = time.perf_counter
        self._server_header = b"server: aserve\r\n" if config.server_header else b""
        self._extra_headers = b"".join(
            [f"{name}: {value}\r\n".encode("latin-1") for name, value in config.headers]
        )
        self._date = b""
        self.default_headers = b""
        self.update_date()

    def update_date(self) -> None:
        """Refresh the cached Date header; the server calls this on its tick."""
        if self.config.date_header:
            now = email.utils.formatdate(time.time(), usegmt=True).encode("ascii")
            self._date = b"date: " + now + b"\r\n"
        self.default_headers = self._server_header + self._date + self._extra_headers

    def default_headers_without(self, server: bool, date: bool) -> bytes:
        """Default headers minus those the app already set itself (rare, so not cached)."""
        return (
            (b"" if server else self._server_header)
            + (b"" if date else self._date)
            + self._extra_headers
        )
