"""Request deadlines over real sockets: slow heads, silent connections, stalled bodies, slow apps.

Timeouts are set to fractions of a second; each check polls for the outcome with a generous
limit, so a busy machine makes a test slower, never wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
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


def test_head_deadline_counts_behind_a_request_still_being_answered():
    # The next head's first bytes arrive with a request whose app takes longer than the head
    # deadline: that head is late from its first byte; its 408 follows the answer owed first.
    async def slow(scope, receive, send):
        if scope["path"] == "/slow":
            await asyncio.sleep(1.0)
        await ok(scope, receive, send)

    options = {"timeout_request_header": 0.3, "timeout_keep_alive": 30}
    with serve(slow, **options) as server, server.connect(10) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHo")
        data = read_until_close(sock, 20)
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert data.count(b"HTTP/1.1 408 Request Timeout\r\n") == 1, data
    assert elapsed < 8  # not the keep-alive timeout


# -- lingering close: the answers reach a client that is still sending ------------------------

UPLOAD = 8 * 1024 * 1024
BIG = b"y" * (256 * 1024)  # more than a client's receive window before it reads


async def big_or_ok(scope, receive, send):
    body = BIG if scope["path"] == "/big" else b"ok"
    headers = [(b"content-length", b"%d" % len(body))]
    if scope["path"] == "/close":  # refuses the upload without reading it
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _upload(sock, head: bytes, size: int = UPLOAD) -> bytes:
    """A blocking client that sends its whole body before it reads, as h11-based clients
    (httpx, requests) do: what it reads back, then b"<reset>" if the connection was reset."""
    sock.sendall(head)
    chunk = b"x" * 65536
    sent = 0
    try:
        while sent < size:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # reset or broken pipe: whether the answers still arrive is the test
    sock.settimeout(20)
    data = b""
    try:
        while True:
            more = sock.recv(65536)
            if not more:
                return data
            data += more
    except ConnectionResetError:
        return data + b"<reset>"


def _post(path: bytes, size: int = UPLOAD) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (path, size)


def test_error_answer_and_earlier_answers_reach_a_client_still_uploading(loop_name):
    # The answer to /big waits in our send buffer while the client, not reading, uploads a
    # body over the limit; closing with that upload unread would reset the connection and
    # drop the rest of /big and the 413 (it did, every time, before lingering close).
    with serve(big_or_ok, loop=loop_name, limit_request_body=1024) as server:
        for _ in range(5):
            with server.connect(10) as sock:
                data = _upload(sock, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" + _post(b"/"))
            first, _, rest = data.partition(b"\r\n\r\n")
            assert first.startswith(b"HTTP/1.1 200 "), data[:200]
            assert rest[: len(BIG)] == BIG, (len(data), data[-200:])
            assert rest[len(BIG) :].startswith(b"HTTP/1.1 413 Content Too Large\r\n"), data[-300:]
            assert rest.endswith(b"request body too large.\n"), data[-200:]  # then a clean EOF


def test_app_answer_that_closes_reaches_a_client_still_uploading(loop_name):
    # The app answers without reading the body and closes the connection (`connection: close`).
    with serve(big_or_ok, loop=loop_name) as server:
        for _ in range(3):
            with server.connect(10) as sock:
                data = _upload(sock, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n" + _post(b"/close"))
            assert data.count(b"HTTP/1.1 200 ") == 2, data[-300:]
            assert data.endswith(b"\r\n\r\nok"), data[-300:]


def _wait_closed(server, timeout: float = 20) -> float:
    """Seconds until the server holds no connection (polled)."""
    start = time.monotonic()
    while server.server.state.connections:
        assert time.monotonic() - start < timeout, "the connection is still open"
        time.sleep(0.02)
    return time.monotonic() - start


def test_lingering_reads_until_the_client_is_quiet():
    with serve(ok, limit_request_body=1024) as server, server.connect(10) as sock:
        sock.sendall(_post(b"/") + b"x" * 1000)
        # Our side is shut down for writing once the answer is out: the client reads it to EOF
        data = read_until_close(sock, 10)
        assert data.startswith(b"HTTP/1.1 413 "), data
        # ... and may go on sending for a while: read and dropped, no reset.
        for _ in range(4):
            sock.sendall(b"x" * 65536)
            time.sleep(0.25)
        quiet = _wait_closed(server)
    assert 1.0 < quiet < 15  # LINGER_TIMEOUT (2 s) after the last bytes


def test_lingering_ends_at_its_cap_for_a_client_that_keeps_sending():
    with serve(ok, limit_request_body=1024) as server, server.connect(10) as sock:
        sock.sendall(_post(b"/") + b"x" * 1000)
        assert read_until_close(sock, 10).startswith(b"HTTP/1.1 413 ")
        start = time.monotonic()
        with contextlib.suppress(OSError):
            while time.monotonic() - start < 30:
                sock.sendall(b"x")  # never quiet for LINGER_TIMEOUT
                time.sleep(0.3)
                if not server.server.state.connections:
                    break
        elapsed = time.monotonic() - start
    assert 7 < elapsed < 25  # LINGER_TIME (10 s) from the answer


def _drip_until_closed(server, sock, limit: float = 30) -> float:
    """Send a byte every 0.2 s until the server holds no connection: the seconds it took."""
    start = time.monotonic()
    while not server.server.state.connections:  # accepted in the server's thread
        assert time.monotonic() - start < 10, "the connection never arrived"
        time.sleep(0.005)
    with contextlib.suppress(OSError):
        while time.monotonic() - start < limit and server.server.state.connections:
            sock.sendall(b"v")
            time.sleep(0.2)
    return time.monotonic() - start


def test_a_late_head_closes_at_its_deadline_however_the_client_drips():
    # The 408 goes out and the connection closes at once: a client that keeps sending bytes of
    # its head used to hold it LINGER_TIME (10 s) past a 1 s deadline.
    with serve(ok, timeout_request_header=1.0) as server, server.connect(10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX: ")
        elapsed = _drip_until_closed(server, sock)
        data = read_until_close(sock, 5)
    assert 0.8 < elapsed < 5, elapsed
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), data


def test_a_late_pipelined_head_closes_at_its_deadline_however_the_client_drips():
    # The same for a head begun behind an answered request: 200, 408, closed.
    with serve(ok, timeout_request_header=1.0) as server, server.connect(10) as sock:
        sock.sendall(HEAD + b"GET /next HTTP/1.1\r\nHo")
        elapsed = _drip_until_closed(server, sock)
        data = read_until_close(sock, 5)
    assert 0.8 < elapsed < 5, elapsed
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert b"HTTP/1.1 408 Request Timeout\r\n" in data, data


async def slow(scope, receive, send):
    await asyncio.sleep(30)


@pytest.mark.parametrize(
    ("app", "options", "status"),
    [
        (read_body, {"timeout_request_body_idle": 1.0}, 408),
        (slow, {"timeout_request": 1.0}, 503),
    ],
    ids=["body-idle", "request"],
)
def test_lingering_after_a_deadline_ends_with_that_deadline(app, options, status):
    # The answer a deadline forced, while the client may still send its body: lingering lets
    # it read the answer, but no longer than that deadline (1 s here), not LINGER_TIME (10 s).
    with serve(app, **options) as server, server.connect(10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        assert read_response(sock, 10).startswith(b"HTTP/1.1 %d " % status)
        elapsed = _drip_until_closed(server, sock)
    assert elapsed < 5, elapsed


def test_graceful_shutdown_does_not_wait_for_a_lingering_connection():
    stop = threading.Event()
    with serve(ok, limit_request_body=1024) as server:
        sock = server.connect(10)
        sock.sendall(_post(b"/") + b"x" * 1000)
        assert read_until_close(sock, 10).startswith(b"HTTP/1.1 413 ")

        def trickle():  # keeps the lingering going, up to LINGER_TIME
            with contextlib.suppress(OSError):
                while not stop.wait(0.3):
                    sock.sendall(b"x")

        thread = threading.Thread(target=trickle)
        thread.start()
        time.sleep(0.5)
        start = time.monotonic()
    elapsed = time.monotonic() - start  # the server stopped (leaving the block)
    stop.set()
    thread.join()
    sock.close()
    assert elapsed < 6  # not LINGER_TIME


def test_idle_keep_alive_close_does_not_linger():
    options = {"timeout_keep_alive": 0.3}
    with serve(ok, **options) as server, server.connect(10) as sock:
        sock.sendall(HEAD)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        assert read_until_close(sock, 10) == b""
        assert _wait_closed(server) < 1.0  # closed with the socket, not LINGER_TIMEOUT later


@pytest.mark.parametrize(
    ("app", "write"),
    [
        *[
            (ok, HEAD + partial)
            for partial in (b"G", b"\r\nGET /nex", b"GET /next HTTP/1.1\r\nHost: x\r\nAcc")
        ],
        (read_body, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nabGET /n"),
    ],
    ids=["G", "crlf-target", "fields", "after-a-body"],
)
def test_head_deadline_counts_from_a_head_begun_in_the_same_segment(app, write):
    # The end of one request and the first bytes of the next in one write, then nothing: the
    # next head is late --timeout-request-header after that write. (Its deadline used to wait
    # for a next read that never came: the keep-alive timeout closed it, without a 408.)
    options = {"timeout_request_header": 0.5, "timeout_keep_alive": 30}
    with serve(app, **options) as server, server.connect(10) as sock:
        start = time.monotonic()
        sock.sendall(write)
        data = read_until_close(sock, 20)
        elapsed = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 200 "), data
    assert data.count(b"HTTP/1.1 408 Request Timeout\r\n") == 1, data
    assert 0.4 < elapsed < 8


def test_a_body_that_ends_with_its_read_starts_no_head_deadline():
    # A read that ends with the end of a body (whatever its last byte) begins no head: only
    # the keep-alive timeout applies to the idle connection that follows.
    options = {"timeout_request_header": 0.3, "timeout_keep_alive": 30}
    with serve(read_body, **options) as server, server.connect(10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
        assert read_response(sock).endswith(b"got 2")
        time.sleep(1.0)
        sock.sendall(HEAD)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
