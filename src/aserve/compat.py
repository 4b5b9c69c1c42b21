"""uvicorn's interface where it is not aserve's own: its UVICORN_* variables, and its settings
that mean nothing here with the one line each logs, saying what runs instead.

Every uvicorn option is accepted (docs/migrating.md), so a uvicorn command line, environment or
`uvicorn.run` call runs unchanged. Those that choose between implementations aserve does not
have (h11, wsproto, zuvloop...) change nothing, and the server says so once at start-up, as a
warning, by the process that speaks for the service (the supervisor or the reloader, not every
worker).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aserve.config import Config

HTTP_CHOICES = ("auto", "h11", "httptools", "zttp")
WS_CHOICES = ("auto", "websockets", "websockets-sansio", "wsproto", "none")
LOOP_CHOICES = ("auto", "asyncio", "uvloop", "zuvloop", "none")

IGNORED = "option ignored"

# uvicorn's command line reads each of its options from UVICORN_<NAME> (click's
# auto_envvar_prefix), and the app from UVICORN_APP: the options of uvicorn 0.55, by their
# setting names. aserve reads these variables, and no UVICORN_* variable of an option of its
# own (tests/test_uvicorn_compat.py derives the list from uvicorn's).
UVICORN_ENV_PREFIX = "UVICORN"
UVICORN_ENV_OPTIONS = frozenset(
    {
        "access_log", "app_dir", "backlog", "date_header", "env_file", "factory", "fd",
        "forwarded_allow_ips", "h11_max_incomplete_event_size", "headers", "host", "http",
        "http2", "interface", "lifespan", "limit_concurrency", "limit_max_requests",
        "limit_max_requests_jitter", "log_config", "log_level", "loop", "port", "proxy_headers",
        "reload", "reload_delay", "reload_dirs", "reload_excludes", "reload_includes",
        "reset_contextvars", "root_path", "server_header", "ssl_ca_certs", "ssl_cert_reqs",
        "ssl_certfile", "ssl_ciphers", "ssl_keyfile", "ssl_keyfile_password", "ssl_version",
        "timeout_graceful_shutdown", "timeout_keep_alive", "timeout_worker_healthcheck", "uds",
        "use_colors", "version", "workers", "ws", "ws_max_queue", "ws_max_size",
        "ws_per_message_deflate", "ws_ping_interval", "ws_ping_timeout",
    }
)  # fmt: skip


def notices(config: Config) -> list[str]:
    """One line for each setting of `config` that has no effect here."""
    lines = []
    if config.http != "auto":
        lines.append(
            f"--http {_name(config.http)}: aserve parses HTTP/1.1 with httptools; {IGNORED}"
        )
    if config.ws not in ("auto", "websockets", "none"):
        lines.append(
            f"--ws {_name(config.ws)}: aserve runs WebSockets on websockets' sans-I/O "
            f"layer (--ws auto); {IGNORED}"
        )
    if config.loop == "zuvloop":
        lines.append(
            "--loop zuvloop: aserve runs uvloop when it is installed, asyncio's loop "
            f"otherwise (--loop auto); {IGNORED}"
        )
    if config.h11_max_incomplete_event_size is not None:
        lines.append(
            f"--h11-max-incomplete-event-size {config.h11_max_incomplete_event_size}: aserve "
            f"has no h11; --limit-request-head ({config.limit_request_head} bytes) bounds a "
            f"request head; {IGNORED}"
        )
    if config.reset_contextvars:
        lines.append(
            "--reset-contextvars: every request already runs in its own copy of the context "
            "the server started in, so nothing the lifespan or another request sets is seen; "
            f"{IGNORED}"
        )
    return lines


def log_notices(config: Config) -> None:
    """Log `config`'s notices, once: a server started later with the same config is silent."""
    lines, config.notices = config.notices, []
    logger = logging.getLogger("aserve.error")
    for line in lines:
        logger.warning("%s", line)


def _name(value: Any) -> str:
    """A setting's value as an operator wrote it: a string, or a class's qualified name."""
    if isinstance(value, str):
        return value
    return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
