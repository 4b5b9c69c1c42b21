"""uvicorn's settings that mean nothing in aserve: the one line each logs, saying what runs instead.

Every uvicorn option is accepted (docs/migrating.md), so a uvicorn command line or `uvicorn.run`
call runs unchanged. Those that choose between implementations aserve does not have (h11,
wsproto, zuvloop...) change nothing, and the server says so once at start-up, as a warning, by
the process that speaks for the service (the supervisor or the reloader, not every worker).
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
