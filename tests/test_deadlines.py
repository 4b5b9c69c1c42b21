"""Request deadlines over real sockets: slow heads, silent connections, stalled bodies, slow apps.

Timeouts are set to fractions of a second; each check polls for the outcome with a generous
limit, so a busy machine makes a test slower, never wrong.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from conftest import read_response, read_until_close, serve

HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def read_body(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        body += message["body"]
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"got %d" % len(body)})


def test_slow_head_gets_408_counted_from_its_first_byte():
    with serve(ok, timeout_request_header=0.5) as server, server.connect(10) as sock:
        start = time.monotonic()
        data = b""
        for byte in HEAD[:-3]:  # one byte every 0.1 s: it would need 2.5 s
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - start > 1.5:
                break
        data = read_until_close(sock, 10)
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data
    assert data.count(b"HTTP/1.1 ") == 1
    assert elapsed < 5


def test_connection_that_never_sends_is_closed_silently():
    with serve(ok, timeout_request_header=0.3) as server, server.connect(10) as sock:
        start = time.monotonic()
        data = read_until_close(sock, 10)
        elapsed = time.monotonic() - start
    assert data == b""
    assert 0.2 < elapsed < 5


def test_header_timeout_does_not_cut_an_idle_keep_alive_connection():
    options = {"timeout_request_header": 0.3, "timeout_keep_alive": 10}
    with serve(ok, **options) as server, server.connect(10) as sock:
        sock.sendall(HEAD)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.8)  # idle longer than the header timeout: keep-alive governs
        sock.sendall(HEAD)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")


def test_websocket_handshake_head_has_the_same_deadline():
    partial = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    with serve(ok, timeout_request_header=0.3) as server, server.connect(10) as sock:
        sock.sendall(partial)
        data = read_until_close(sock, 10)
    assert data.startswith(b"HTTP/1.1 408 "), data


def test_stalled_body_gets_408():
    with serve(read_body, timeout_request_body_idle=0.3) as server, server.connect(10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        start = time.monotonic()
        data = read_until_close(sock, 10)
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert data.count(b"HTTP/1.1 ") == 1
    assert elapsed < 5


def test_body_that_keeps_coming_is_not_cut():
    with serve(read_body, timeout_request_body_idle=0.4) as server, server.connect(10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):  # 1 s in all, never 0.4 s without a byte
            time.sleep(0.1)
            sock.sendall(b"x")
        assert read_response(sock).endswith(b"got 10")


def test_stalled_body_after_the_response_started_closes_without_a_second_answer():
    async def streaming(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            await send({"type": "http.response.body", "body": b".", "more_body": True})

    with serve(streaming, timeout_request_body_idle=0.3) as server, server.connect(10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n")
        data = read_until_close(sock, 10)
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert data.count(b"HTTP/1.1 ") == 1
    assert not data.endswith(b"0\r\n\r\n")  # cut, not completed


def test_client_waiting_for_100_continue_is_not_timed_out():
    async def late_reader(scope, receive, send):
        await asyncio.sleep(0.6)  # longer than the body idle timeout
        await read_body(scope, receive, send)

    with serve(late_reader, timeout_request_body_idle=0.3) as server, server.connect(10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        assert read_response(sock).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"ab")
        assert read_response(sock).endswith(b"got 2")


def test_slow_app_is_cancelled_with_503(caplog):
    cancelled = threading.Event()

    async def slow(scope, receive, send):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    caplog.set_level(logging.ERROR, logger="aserve.error")
    with serve(slow, timeout_request=0.3) as server, server.connect(10) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until_close(sock, 10)
        elapsed = time.monotonic() - start
        assert cancelled.wait(10)
    assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), data
    assert b"connection: close" in data
    assert elapsed < 5
    assert "Request cancelled after 0.3s without a response: GET /slow" in caplog.text


def test_request_timeout_spares_an_app_that_started_its_response():
    async def streams_slowly(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(5):
            await asyncio.sleep(0.15)
            await send({"type": "http.response.body", "body": b".", "more_body": True})
        await send({"type": "http.response.body", "body": b"done"})

    with serve(streams_slowly, timeout_request=0.3) as server, server.connect(10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_until_close(sock, 10)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"done" in data


@pytest.mark.parametrize(
    "option",
    ["timeout_request_header", "timeout_request_body_idle", "timeout_request"],
)
def test_deadline_settings_must_be_positive(option):
    from aserve.config import Config, ConfigError

    with pytest.raises(ConfigError, match=option):
        Config(app=ok, **{option: 0})
