"""One validated configuration object.

`Config` only holds and checks values. Importing the app lives in `importer.py`, logging in
`logging.py`, sockets in `sockets.py`: each can be used (and tested) without the others.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import string
from collections.abc import Awaitable, Callable, Sequence
from configparser import RawConfigParser
from dataclasses import KW_ONLY, dataclass, field
from typing import IO, Any, Literal

from aserve import addresses, compat
from aserve.addresses import Address
from aserve.errors import ConfigError
from aserve.logging import ACCESS_LOG_FIELDS
from aserve.proxy import parse_trusted

LoopSetting = Literal["auto", "asyncio", "uvloop"]
LifespanSetting = Literal["auto", "on", "off"]
InterfaceSetting = Literal["auto", "asgi3", "asgi2", "wsgi"]
WSSetting = Literal["auto", "websockets", "none"]
LogFormat = Literal["text", "json"]

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

# A field only Python can set (a callable): no flag, variable or pyproject.toml key (settings.py).
PYTHON_ONLY = {"python_only": True}

# Longer than the idle timeouts of common load balancers (AWS ALB 60 s, nginx upstream keepalive
# 60 s), so the balancer always closes an idle connection first. A server that closes first races
# the balancer's next request on that connection, and the balancer answers the client with a 502.
DEFAULT_TIMEOUT_KEEP_ALIVE = 65.0
# A TLS handshake takes a few round trips; this bounds a client that connects and stalls.
DEFAULT_TIMEOUT_SSL_HANDSHAKE = 10.0

# Request limits (docs/security.md says why each default). The target: a URL of 8 KiB, as nginx
# and Apache allow; a field of 8 KiB (gunicorn's size); 100 fields (gunicorn's count); a whole
# head of 64 KiB, enough for large cookies.
DEFAULT_LIMIT_REQUEST_LINE = 8190
DEFAULT_LIMIT_REQUEST_FIELD_SIZE = 8190
DEFAULT_LIMIT_REQUEST_FIELDS = 100
DEFAULT_LIMIT_REQUEST_HEAD = 65536
# Long enough that a busy but healthy worker is never killed: a heartbeat waits for its turn in
# the event loop, so a loaded loop answers late. uvicorn's 5 s is reported to kill healthy
# workers under load; a loop blocked for 30 s is broken by any measure.
DEFAULT_TIMEOUT_WORKER_HEALTHCHECK = 30.0
# A worker's whole start (app import, lifespan startup) must end within this. Generous: an app
# that loads a model or warms a cache at start-up can take tens of seconds, several workers load
# at once on shared cores, and a healthy app killed here never starts at all. Still below
# systemd's default TimeoutStartSec (90 s), so the stack of a stuck worker is logged before
# systemd gives up on the service. A slow start whose event loop runs still beats; only a
# silent one is cut short by the health check.
DEFAULT_TIMEOUT_WORKER_STARTUP = 60.0

# Request deadlines (docs/security.md). A head is a few hundred bytes: 20 s is generous for the
# slowest mobile link, and short enough that a slow-loris client frees its slot soon. A body
# may pause (a phone changing networks), so its idle timeout is nginx's client_body_timeout.
DEFAULT_TIMEOUT_REQUEST_HEADER = 20.0
DEFAULT_TIMEOUT_REQUEST_BODY_IDLE = 60.0

# WSGI apps (wsgi.py): threads per process running the app. A WSGI app blocks a thread for a
# whole request, so this is how many requests a process serves at once. Threads overlap only the
# waits (database, upstream calls: the GIL is released); more of them add no CPU, and each may
# hold per-thread resources (Django keeps a database connection per thread, so workers x
# threads connections). 10 is uvicorn's WSGI pool, so a migrated app sees the same concurrency.
DEFAULT_WSGI_THREADS = 10

# HTTP/2 (docs/http2.md). Streams at once per connection: nginx's 128 (browsers open up to 100
# or so). The window a stream's request body may fill before its app reads it: 256 KiB (one
# window per round trip is an upload's speed over a long link; 64 KiB, the RFC default, caps
# it at 6 MB/s over 10 ms), so a connection holds at most 128 x 256 KiB of bodies not yet read.
# Frames: the RFC's minimum, 16 KiB, which every client sends within.
DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS = 128
DEFAULT_HTTP2_INITIAL_WINDOW_SIZE = 256 * 1024
DEFAULT_HTTP2_MAX_FRAME_SIZE = 16384


@dataclass
class Config:
    """Everything the server needs to know, checked once at construction.

    Names and defaults follow uvicorn's where they mean the same, so switching is one word:
    `Config(app, port=8000)`, the app first and positional, every other setting by keyword.
    """

    app: Any
    _: KW_ONLY
    host: str = "127.0.0.1"
    port: int = 8000
    uds: str | None = None
    fd: int | None = None
    loop: LoopSetting | str = "auto"  # also uvicorn's "zuvloop", "none", "module:factory"
    ws: WSSetting | str | type[asyncio.Protocol] = "auto"  # also uvicorn's (compat.py)
    ws_max_size: int = 16 * 1024 * 1024
    ws_max_queue: int = 32
    ws_ping_interval: float | None = 20.0
    ws_ping_timeout: float | None = 20.0
    ws_per_message_deflate: bool = True
    lifespan: LifespanSetting = "auto"
    interface: InterfaceSetting = "auto"
    factory: bool = False
    app_dir: str | None = None
    env_file: str | os.PathLike[str] | None = None
    log_config: dict[str, Any] | str | os.PathLike[str] | RawConfigParser | IO[Any] | None = None
    log_level: str | int | None = None
    access_log: bool = True
    access_log_format: str | None = None
    proxy_headers: bool = True
    forwarded_allow_ips: str | Sequence[str] | None = None
    # Connection edge: PROXY protocol (edge.py, protocols/proxy_protocol.py)
    proxy_protocol: bool = False
    # Connection edge: TLS (tls.py builds the context and checks these; uvicorn's names)
    ssl_keyfile: str | os.PathLike[str] | None = None
    ssl_certfile: str | os.PathLike[str] | None = None
    ssl_keyfile_password: str | None = None
    ssl_version: int = ssl.PROTOCOL_TLS_SERVER
    ssl_cert_reqs: int = ssl.CERT_NONE
    ssl_ca_certs: str | os.PathLike[str] | None = None
    ssl_ciphers: str | None = None  # None: Python's defaults (see tls.py)
    # uvicorn's: called with (config, default factory) for the context to serve with.
    ssl_context_factory: Callable[[Config, Callable[[], ssl.SSLContext]], ssl.SSLContext] | None = (
        field(default=None, metadata=PYTHON_ONLY)
    )
    timeout_ssl_handshake: float = DEFAULT_TIMEOUT_SSL_HANDSHAKE
    root_path: str = ""
    limit_concurrency: int | None = None
    backlog: int = 2048
    timeout_keep_alive: float = DEFAULT_TIMEOUT_KEEP_ALIVE
    timeout_graceful_shutdown: float | None = 30.0
    headers: list[tuple[str, str]] = field(default_factory=list)
    server_header: bool = True
    date_header: bool = True
    # HTTP/2: on TLS by ALPN, on cleartext by prior knowledge or Upgrade (docs/cli.md).
    http2: bool = True
    # uvicorn's other settings (compat.py): `use_colors` and the notify callback work as
    # uvicorn's; the rest choose implementations aserve lacks, and log one line saying so.
    http: str | type[asyncio.Protocol] = "auto"
    use_colors: bool | None = None
    h11_max_incomplete_event_size: int | None = None
    reset_contextvars: bool = False
    timeout_notify: float = 30.0
    callback_notify: Callable[[], Awaitable[None]] | None = field(
        default=None, metadata=PYTHON_ONLY
    )
    # --reload (reload.py): restart a child server when these files change.
    reload: bool = False
    reload_dirs: list[str] | None = None
    reload_includes: list[str] | None = None
    reload_excludes: list[str] | None = None
    reload_delay: float = 0.25  # seconds between looks for changes, as uvicorn's
    # Metrics (Prometheus text on a listener of its own; off unless a port is given)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # Request limits (hardening).
    limit_request_line: int = DEFAULT_LIMIT_REQUEST_LINE
    limit_request_field_size: int = DEFAULT_LIMIT_REQUEST_FIELD_SIZE
    limit_request_fields: int = DEFAULT_LIMIT_REQUEST_FIELDS
    limit_request_head: int = DEFAULT_LIMIT_REQUEST_HEAD
    limit_request_body: int | None = None
    # WebSocket close wait, log format (extensions)
    ws_close_timeout: float = 10.0
    log_format: LogFormat = "text"
    # Request deadlines (hardening).
    timeout_request_header: float = DEFAULT_TIMEOUT_REQUEST_HEADER
    timeout_request_body_idle: float = DEFAULT_TIMEOUT_REQUEST_BODY_IDLE
    timeout_request: float | None = None
    # Workers under a supervisor (supervisor.py): any of these runs one.
    workers: int | None = None
    timeout_worker_healthcheck: float = DEFAULT_TIMEOUT_WORKER_HEALTHCHECK
    timeout_worker_startup: float | None = DEFAULT_TIMEOUT_WORKER_STARTUP
    limit_max_requests: int | None = None
    limit_max_requests_jitter: int = 0
    limit_worker_memory: float | None = None
    # --preload (preload.py): the supervisor imports the app once, before forking the workers.
    preload: bool = False
    # Several listeners (addresses.py, sockets.py): gunicorn's --bind syntax, each one served
    # beside --uds and --fd; host/port make the listener only when none of these is given.
    bind: list[str] = field(default_factory=list)
    # Health for orchestrators (health.py): /livez and /readyz on a listener of their own, off
    # unless a port is given; on SIGTERM/SIGINT, /readyz says 503 while serving on this long.
    health_port: int | None = None
    health_host: str = "127.0.0.1"
    drain_delay: float = 0.0
    # WSGI apps (wsgi.py): --interface wsgi, or auto finding a WSGI callable.
    wsgi_threads: int = DEFAULT_WSGI_THREADS
    # HTTP/2 (protocols/http2.py, docs/http2.md): ALPN "h2" on TLS, h2c on cleartext.
    http2_max_concurrent_streams: int = DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS
    http2_initial_window_size: int = DEFAULT_HTTP2_INITIAL_WINDOW_SIZE
    http2_max_frame_size: int = DEFAULT_HTTP2_MAX_FRAME_SIZE

    def __post_init__(self) -> None:
        if self.env_file is not None:
            load_env_file(self.env_file)
        if self.workers is None and os.environ.get("WEB_CONCURRENCY"):
            value = os.environ["WEB_CONCURRENCY"]
            try:
                self.workers = int(value)
            except ValueError:
                raise ConfigError(
                    f"WEB_CONCURRENCY must be a positive integer, got {value!r}"
                ) from None
        if self.forwarded_allow_ips is None:
            self.forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
        self._validate()
        self.notices = compat.notices(self)  # logged once at start-up (compat.log_notices)

    def _validate(self) -> None:
        self._validate_uvicorn()
        _choice("lifespan", self.lifespan, ("auto", "on", "off"))
        _choice("interface", self.interface, ("auto", "asgi3", "asgi2", "wsgi"))
        _positive("wsgi_threads", self.wsgi_threads)
        _choice("log_format", self.log_format, ("text", "json"))
        if not self.ws_close_timeout > 0:
            raise ConfigError(
                f"ws_close_timeout must be greater than 0, got {self.ws_close_timeout!r}"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be between 0 and 65535, got {self.port}")
        self._validate_listeners()
        _positive("backlog", self.backlog)
        _positive("ws_max_size", self.ws_max_size)
        _positive("ws_max_queue", self.ws_max_queue)
        if self.timeout_ssl_handshake <= 0:
            raise ConfigError("timeout_ssl_handshake must be greater than 0")
        if self.timeout_keep_alive <= 0:
            raise ConfigError("timeout_keep_alive must be greater than 0")
        if self.timeout_graceful_shutdown is not None and self.timeout_graceful_shutdown < 0:
            raise ConfigError("timeout_graceful_shutdown must be 0 or more")
        if self.limit_concurrency is not None:
            _positive("limit_concurrency", self.limit_concurrency)
        self._validate_limits()
        for name in ("ws_ping_interval", "ws_ping_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be greater than 0, or None to disable it")
        if isinstance(self.log_level, str) and self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        if self.root_path and not self.root_path.startswith("/"):
            raise ConfigError(f"root_path must start with '/', got {self.root_path!r}")
        self.root_path = self.root_path.rstrip("/")
        self.headers = [_check_header(name, value) for name, value in self.headers or ()]
        self._validate_metrics()
        self._validate_health()
        if self.access_log_format is not None:
            check_access_log_format(self.access_log_format)
        self._validate_workers()
        self._validate_http2()

    def _validate_http2(self) -> None:
        _positive("http2_max_concurrent_streams", self.http2_max_concurrent_streams)
        if (
            not isinstance(self.http2_initial_window_size, int)
            or not 65535 <= self.http2_initial_window_size <= 2**31 - 1
        ):
            raise ConfigError(
                "http2_initial_window_size must be from 65535 to 2147483647, "
                f"got {self.http2_initial_window_size!r}"
            )
        if (
            not isinstance(self.http2_max_frame_size, int)
            or not 16384 <= self.http2_max_frame_size <= 2**24 - 1
        ):
            raise ConfigError(
                "http2_max_frame_size must be from 16384 to 16777215, "
                f"got {self.http2_max_frame_size!r}"
            )
        if self.reload and not isinstance(self.app, str):
            raise ConfigError('reload needs the app as an import string ("module:attribute")')
        if self.reload and getattr(self, "supervised", False):  # supervisor.py's settings
            raise ConfigError(
                "reload runs one server process: it cannot be used with workers "
                "(--workers, WEB_CONCURRENCY) or the --limit-* worker recycling"
            )
        if self.reload and self.preload:
            raise ConfigError(
                "preload imports the app once for every worker; reload imports it afresh "
                "on each change: use one or the other"
            )
        parse_trusted(self.forwarded_allow_ips)  # one error line per bad entry

    def _validate_listeners(self) -> None:
        if isinstance(self.bind, str):  # one address given as a string, not a list
            self.bind = [self.bind]
        self.bind = list(self.bind)
        if self.bind and (self.host != "127.0.0.1" or self.port != 8000):
            raise ConfigError(
                "host and port make a listener only when no bind address is given: add "
                f"'{addresses.bracketed(self.host)}:{self.port}' to bind instead"
            )
        seen: set[Address] = set()
        for address in self.listeners:  # each parsed: a malformed one is a one-line error
            if address in seen and not (address.kind == "tcp" and address.port == 0):
                raise ConfigError(f"bind address {str(address)!r} is given twice")
            seen.add(address)

    @property
    def listeners(self) -> list[Address]:
        """Every address to listen on: the bind addresses, --uds, --fd, else host and port."""
        found = [addresses.parse(text) for text in self.bind]
        if self.uds is not None:
            found.append(Address("unix", path=os.fspath(self.uds)))
        if self.fd is not None:
            found.append(Address("fd", fd=self.fd))
        return found or [addresses.tcp(self.host, self.port)]

    def _validate_uvicorn(self) -> None:
        """uvicorn's value forms: its choices, import strings, classes, a string for a list."""
        _implementation("loop", self.loop, compat.LOOP_CHOICES, 'a "module:attribute" loop factory')
        _implementation("ws", self.ws, compat.WS_CHOICES, "a protocol class")
        _implementation("http", self.http, compat.HTTP_CHOICES, "a protocol class")
        for name in ("reload_dirs", "reload_includes", "reload_excludes"):
            if isinstance(getattr(self, name), str | os.PathLike):  # one, as uvicorn takes it
                setattr(self, name, [os.fspath(getattr(self, name))])
        if not isinstance(self.reload_delay, int | float) or self.reload_delay < 0:
            raise ConfigError(f"reload_delay must be 0 or more, got {self.reload_delay!r}")
        if self.use_colors not in (None, True, False):
            raise ConfigError(f"use_colors must be true, false or None, got {self.use_colors!r}")
        if self.h11_max_incomplete_event_size is not None:
            _positive("h11_max_incomplete_event_size", self.h11_max_incomplete_event_size)
        if not isinstance(self.timeout_notify, int | float) or self.timeout_notify <= 0:
            raise ConfigError(f"timeout_notify must be greater than 0, got {self.timeout_notify!r}")
        for name in ("callback_notify", "ssl_context_factory"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise ConfigError(f"{name} must be a callable, got {getattr(self, name)!r}")

    def _validate_metrics(self) -> None:
        port = self.metrics_port
        if port is None:
            return
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"metrics_port must be between 0 and 65535, got {port!r}")
        if port != 0 and port in self.tcp_ports:
            raise ConfigError(
                f"metrics_port must differ from port ({port}): metrics never share the "
                "app's listener"
            )

    def _validate_health(self) -> None:
        port = self.health_port
        if port is not None:
            if not isinstance(port, int) or not 0 <= port <= 65535:
                raise ConfigError(f"health_port must be between 0 and 65535, got {port!r}")
            if port != 0 and (port in self.tcp_ports or port == self.metrics_port):
                raise ConfigError(
                    f"health_port must differ from the app's and the metrics' ports ({port}): "
                    "the probes have a listener of their own"
                )
        if not isinstance(self.drain_delay, (int, float)) or not self.drain_delay >= 0:
            raise ConfigError(f"drain_delay must be 0 or more seconds, got {self.drain_delay!r}")

    def _validate_limits(self) -> None:
        for name in (
            "limit_request_line",
            "limit_request_field_size",
            "limit_request_fields",
            "limit_request_head",
        ):
            _positive(name, getattr(self, name))
        if self.limit_request_body is not None and (
            not isinstance(self.limit_request_body, int) or self.limit_request_body < 0
        ):
            raise ConfigError(
                f"limit_request_body must be 0 or more, got {self.limit_request_body!r}"
            )
        for name in ("timeout_request_header", "timeout_request_body_idle"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be greater than 0")
        if self.timeout_request is not None and self.timeout_request <= 0:
            raise ConfigError("timeout_request must be greater than 0, or None to disable it")
        if self.limit_request_head < 64:
            raise ConfigError(
                f"limit_request_head must be 64 or more, got {self.limit_request_head}"
            )

    def _validate_workers(self) -> None:
        if self.workers is not None:
            _positive("workers", self.workers)
        if self.timeout_worker_healthcheck <= 0:
            raise ConfigError("timeout_worker_healthcheck must be greater than 0")
        if self.timeout_worker_startup is not None and self.timeout_worker_startup <= 0:
            raise ConfigError(
                "timeout_worker_startup must be greater than 0, or None to disable it"
            )
        if self.limit_max_requests is not None:
            _positive("limit_max_requests", self.limit_max_requests)
        if (
            not isinstance(self.limit_max_requests_jitter, int)
            or self.limit_max_requests_jitter < 0
        ):
            raise ConfigError(
                "limit_max_requests_jitter must be 0 or more, "
                f"got {self.limit_max_requests_jitter!r}"
            )
        if self.limit_worker_memory is not None and self.limit_worker_memory <= 0:
            raise ConfigError("limit_worker_memory must be greater than 0 (megabytes)")

    @property
    def supervised(self) -> bool:
        """Whether workers run under a supervisor: asked for, or needed to recycle workers."""
        return (
            self.workers is not None
            or self.limit_max_requests is not None
            or self.limit_worker_memory is not None
        )

    @property
    def tcp_ports(self) -> set[int]:
        """The fixed ports the app listens on (port 0, any free port, left out)."""
        return {a.port for a in self.listeners if a.kind == "tcp" and a.port}


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


def _implementation(name: str, value: object, choices: tuple[str, ...], other: str) -> None:
    """One of uvicorn's choices, a "module:attribute" import string, or (`other`) an object."""
    if isinstance(value, str) and (value in choices or ":" in value):
        return
    if not isinstance(value, str) and other == "a protocol class" and isinstance(value, type):
        return
    raise ConfigError(f"{name} must be one of {', '.join(choices)} or {other}, got {value!r}")


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def _check_header(name: str, value: str) -> tuple[str, str]:
    if not _TOKEN.fullmatch(name):
        raise ConfigError(f"header name {name!r} is not a valid HTTP token")
    if not _FIELD_VALUE.fullmatch(value):
        raise ConfigError(f"header {name!r} has a control character in its value")
    return name, value.strip()


def parse_header_option(option: str) -> tuple[str, str]:
    """`--header NAME:VALUE` as given on the command line."""
    name, sep, value = option.partition(":")
    if not sep:
        raise ConfigError(f"header {option!r} must be given as NAME:VALUE")
    return _check_header(name.strip(), value.strip())


def check_access_log_format(fmt: str) -> None:
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise ConfigError(f"access_log_format is not a valid format string: {exc}") from None
    for _, name, _, _ in parsed:
        if name is not None and name not in ACCESS_LOG_FIELDS:
            raise ConfigError(
                f"access_log_format has unknown field {{{name}}}; "
                f"known fields: {', '.join(sorted(ACCESS_LOG_FIELDS))}"
            )


def load_env_file(path: str | os.PathLike[str]) -> None:
    """Read KEY=VALUE lines into the environment; variables already set win, as with dotenv."""
    for key, value in read_env_file(path).items():
        if key not in os.environ:
            os.environ[key] = value


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """An env file's KEY=VALUE lines (`#` comments, `export`, quotes), the last of a key winning."""
    variables: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read env file {os.fspath(path)!r}: {exc.strerror}") from None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"env file {os.fspath(path)!r} line {number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        variables[key] = value
    return variables
