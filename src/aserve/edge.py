"""Between accept() and the HTTP protocol: the PROXY protocol header, then the TLS handshake.

Only used when `--proxy-protocol` or TLS is on; otherwise the listener hands an accepted socket
straight to the loop. The PROXY header is read from the socket itself, before the loop makes a
transport of it, because a balancer sends it in clear text ahead of the client's TLS records.
A connection that fails here (untrusted peer, bad or missing header, failed handshake) is
closed with one debug line (a warning for an untrusted peer, which is a configuration mistake
more often than an attack), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import ssl
from collections.abc import Callable
from typing import Any

from aserve.logging import error_logger
from aserve.protocols.proxy_protocol import ProxyHeaderError, read_header
from aserve.proxy import TrustedProxies
from aserve.tasks import start_task

# How long a connection may take to send its PROXY protocol header when no deadline is given.
# The server passes --timeout-request-header (see `Edge`).
PROXY_HEADER_TIMEOUT = 20.0

ProtocolFactory = Callable[[tuple[Any, Any] | None], asyncio.Protocol]


class Edge:
    """How each accepted socket becomes a connection when PROXY protocol or TLS is on."""

    __slots__ = (
        "_handshake_timeout",
        "_loop",
        "_make_protocol",
        "_proxy_from",
        "_proxy_timeout",
        "_ssl",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        make_protocol: ProtocolFactory,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
        proxy_from: TrustedProxies | None = None,
        proxy_timeout: float = PROXY_HEADER_TIMEOUT,
    ) -> None:
        self._loop = loop
        self._make_protocol = make_protocol  # called with (client, server) or None
        self._ssl = ssl_context
        self._handshake_timeout = handshake_timeout if ssl_context is not None else None
        self._proxy_from = proxy_from  # None: no PROXY header expected
        # The PROXY header is the head of the connection: it gets the deadline of a request
        # head (--timeout-request-header). Balancers send it at once, with the connection;
        # this bounds a peer that connects and sends nothing, or sends it a byte at a time.
        self._proxy_timeout = proxy_timeout

    def use_ssl_context(self, context: ssl.SSLContext) -> None:
        """Start the TLS of connections accepted from now on with `context` (a certificate
        reload); those already in their handshake finish it with the one they began with."""
        self._ssl = context

    async def connect(self, sock: socket.socket) -> None:
        """Read the PROXY header if one is required, then start the transport (and TLS)."""
        try:
            addresses = await self._proxy_addresses(sock) if self._proxy_from is not None else None
        except BaseException:
            sock.close()
            raise
        if addresses is False:
            sock.close()
            return
        make_protocol = lambda: self._make_protocol(addresses or None)  # noqa: E731
        if self._ssl is None:
            # The PROXY header was read: the rest is a plain hand-over, which must not be
            # cancelled (see `Listener.close`) and ends within a loop turn.
            # Started eagerly (as the listener's own hand-over is): no extra loop turn.
            handover = start_task(
                self._loop,
                self._loop.connect_accepted_socket(make_protocol, sock),
                contextvars.copy_context(),
            )
            try:
                await asyncio.shield(handover)
            except OSError as exc:
                error_logger.debug("Could not set up a connection: %s", exc)
                sock.close()
            return
        peer = _peer(sock)  # for the log: gone after a failure
        try:
            # Cancelling this (a handshake under way) closes through the public `close()`.
            await self._loop.connect_accepted_socket(
                make_protocol,
                sock,
                ssl=self._ssl,
                ssl_handshake_timeout=self._handshake_timeout,
            )
        except (TimeoutError, OSError) as exc:
            # ssl.SSLError is an OSError: plain HTTP on the TLS port, an unknown CA, a client
            # without the certificate --ssl-cert-reqs 2 requires, a handshake timeout.
            error_logger.debug("TLS handshake with %s failed: %s", peer or "a Unix socket", exc)
            sock.close()

    async def _proxy_addresses(self, sock: socket.socket) -> tuple[Any, Any] | bool | None:
        """(client, server) from the header, None to keep the socket's own, False to close."""
        assert self._proxy_from is not None
        peer = _peer(sock)
        if not self._proxy_from.trusts_peer(peer):
            error_logger.warning(
                "Closing a connection from %s: PROXY protocol headers are only accepted "
                "from --forwarded-allow-ips",
                peer or "a Unix socket",
            )
            return False
        try:
            header = await read_header(self._loop, sock, self._proxy_timeout)
        except (ProxyHeaderError, OSError, TimeoutError) as exc:
            reason = exc if not isinstance(exc, TimeoutError) else "no header in time"
            error_logger.debug("Closing a connection from %s: %s", peer or "unix", reason)
            return False
        if header.local:
            return None
        return (header.client, header.server)


def _peer(sock: socket.socket) -> str:
    """The peer's host ('' on a Unix socket)."""
    try:
        peer = sock.getpeername()
    except OSError:
        return ""
    return str(peer[0]) if isinstance(peer, tuple) else ""
