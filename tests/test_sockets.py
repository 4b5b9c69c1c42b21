"""Listening sockets: a TCP connection is handed over with its first bytes (TCP_DEFER_ACCEPT)."""

from __future__ import annotations

import select
import socket
import time

import pytest

from aserve.config import Config
from aserve.sockets import bind_sockets
from conftest import read_response, read_until_close, serve

DEFER_ACCEPT = getattr(socket, "TCP_DEFER_ACCEPT", None)
needs_defer_accept = pytest.mark.skipif(DEFER_ACCEPT is None, reason="no TCP_DEFER_ACCEPT here")


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


@needs_defer_accept
@pytest.mark.parametrize(
    ("options", "at_least"),
    [
        ({}, 20),  # --timeout-request-header's default
        ({"timeout_request_header": 0.3}, 1),  # whole seconds, at least one
        ({"ssl_certfile": "cert.pem", "timeout_ssl_handshake": 4}, 4),  # TLS comes first
        ({"ssl_certfile": "cert.pem", "proxy_protocol": True}, 20),  # the PROXY header first
    ],
)
def test_the_kernel_waits_as_long_as_the_first_deadline(options, at_least):
    (sock,), _ = bind_sockets(Config(app=hello, host="127.0.0.1", port=0, **options))
    with sock:
        # The kernel reports the wait rounded up to its SYN-ACK retransmissions (20 s: 31).
        assert sock.getsockopt(socket.IPPROTO_TCP, DEFER_ACCEPT) >= at_least


@needs_defer_accept
def test_a_connection_is_accepted_once_its_first_bytes_are_there():
    (listening,), _ = bind_sockets(Config(app=hello, host="127.0.0.1", port=0))
    with listening, socket.create_connection(listening.getsockname(), timeout=5) as client:
        # Connected for the client, but nothing to accept while it has sent nothing.
        assert select.select([listening], [], [], 0.3)[0] == []
        client.sendall(b"GET / HTTP/1.1\r\n")
        assert select.select([listening], [], [], 5)[0] == [listening]
        accepted, _ = listening.accept()
        with accepted:
            accepted.settimeout(5)
            assert accepted.recv(100) == b"GET / HTTP/1.1\r\n"


def test_a_unix_socket_is_not_deferred(tmp_path):
    path = str(tmp_path / "s")
    with serve(hello, uds=path, timeout_request_header=0.3) as server:
        with server.connect(timeout=10) as sock:
            started = time.monotonic()
            assert read_until_close(sock, timeout=10) == b""  # closed at its deadline
            assert time.monotonic() - started < 5
        with server.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock).endswith(b"hello")


@needs_defer_accept
def test_a_request_sent_after_the_head_deadline_is_still_answered():
    """The head deadline runs from the request's first bytes: a client whose request is
    held up for longer than --timeout-request-header after its handshake (its own event loop
    was busy, or the request was dropped and retransmitted) is answered, not closed."""
    with serve(hello, timeout_request_header=2) as server, server.connect(timeout=10) as sock:
        # Past the deadline counted from the connection; the kernel would hold a silent one
        # about 3 s (2 s rounded up to its SYN-ACK retransmissions), then the deadline runs.
        time.sleep(2.5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock, timeout=10).startswith(b"HTTP/1.1 200 ")
