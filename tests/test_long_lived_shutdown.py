"""Long-lived connections when the server stops or restarts, through the real CLI.

An app streaming a response (server-sent events, a long poll) that waits in `receive()` gets
`http.disconnect` as soon as graceful shutdown begins, so it ends its stream and shutdown does
not wait for --timeout-graceful-shutdown; open WebSockets are closed with 1001 (going away)
when the server stops and 1012 (service restart) when the supervisor replaces the worker (a
SIGHUP rolling restart, recycling). A request whose body is still arriving when the shutdown
begins (an upload) is read to its end and answered, and nothing after it is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import signal
import socket
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import read_until_close, serve
from processes import AserveProcess, Child, wait_for
from test_cli import APPS
from test_frameworks import parse_chunks
from test_http2 import Client

GRACE = 30  # --timeout-graceful-shutdown: the streams must end long before it

# -- in one process: what the app sees --------------------------------------------------------


def stream_app(seen: list, started: threading.Event, length: bytes | None = None):
    """Starts a response, sends a piece, then waits in `receive` until told to stop."""

    async def app(scope, receive, send):
        headers = [(b"content-length", length)] if length else []
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect":
                return
            started.set()

    return app


def stop_and_read(server, sock) -> tuple[bytes, float]:
    started = time.monotonic()
    server.server.should_exit = True
    data = read_until_close(sock, 10)
    server.thread.join(10)
    assert not server.thread.is_alive()
    return data, time.monotonic() - started


def test_a_streaming_app_waiting_in_receive_is_told_at_shutdown(loop_name):
    seen: list[str] = []
    started = threading.Event()
    app = stream_app(seen, started)
    options = {"loop": loop_name, "timeout_graceful_shutdown": GRACE}
    with serve(app, **options) as server, server.connect(10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert started.wait(10)
        data, elapsed = stop_and_read(server, sock)
    assert elapsed < 5, elapsed  # not GRACE
    assert seen == ["http.request", "http.disconnect"]
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    # The app returned with its response open: the server ended it whole.
    assert body == b"6\r\nfirst\n\r\n0\r\n\r\n", body


def test_a_stream_short_of_its_content_length_is_not_made_to_look_complete():
    seen: list[str] = []
    started = threading.Event()
    app = stream_app(seen, started, length=b"100")
    with serve(app, timeout_graceful_shutdown=GRACE) as server, server.connect(10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert started.wait(10)
        data, elapsed = stop_and_read(server, sock)
    assert elapsed < 5, elapsed
    assert data.endswith(b"\r\n\r\nfirst\n"), data  # 6 of 100 bytes, then the close
    assert seen == ["http.request", "http.disconnect"]


def test_an_app_that_has_not_read_its_request_body_gets_it_first():
    # The disconnect comes once the request is read whole: a body not taken yet is the app's.
    got = []
    go = threading.Event()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"started", "more_body": True})
        while not go.is_set():
            await asyncio.sleep(0.01)
        got.append(await receive())
        got.append(await receive())
        await send({"type": "http.response.body", "body": b"done"})

    with serve(app, timeout_graceful_shutdown=GRACE) as server, server.connect(10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabcdef")
        server.server.should_exit = True
        wait_for(lambda: server.server.state.shutting_down, "the shutdown to begin")
        go.set()
        data = read_until_close(sock, 10)
        server.thread.join(10)
    assert got == [
        {"type": "http.request", "body": b"abcdef", "more_body": False},
        {"type": "http.disconnect"},
    ]
    assert data.endswith(b"7\r\nstarted\r\n4\r\ndone\r\n0\r\n\r\n"), data


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_upload_in_progress_is_read_to_its_end_at_shutdown(loop_name, framing):
    # Its app gets every byte and answers, with `Connection: close`; a request pipelined
    # after the body (in the same read) is not served.
    seen = []

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            seen.append(message["type"])
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % len(body)})

    if framing == "chunked":
        head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        first, rest = b"5\r\nhello\r\n", b"6\r\n world\r\n0\r\n\r\n"
    else:
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"
        first, rest = b"hello", b" world"
    options = {"loop": loop_name, "timeout_graceful_shutdown": GRACE}
    with serve(app, **options) as server, server.connect(10) as sock:
        sock.sendall(head + first)
        wait_for(lambda: seen == ["http.request"], "the first piece of the body")
        began = time.monotonic()
        server.server.should_exit = True
        wait_for(lambda: server.server.state.shutting_down, "the shutdown to begin")
        time.sleep(0.1)
        sock.sendall(rest + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until_close(sock, 10)
        server.thread.join(10)
        assert not server.thread.is_alive()
    assert time.monotonic() - began < 5
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data
    assert b"connection: close" in head, head
    assert body == b"11", data  # one answer: the pipelined request was not served
    assert len(seen) >= 2 and "http.disconnect" not in seen, seen


def curl_http2(url: str) -> Child:
    """curl over h2c (prior knowledge), its output read as it comes: then `\\n2`, the version.
    (httpx's h2 takes the first GOAWAY of a graceful close as the end of the connection.)"""
    args = ["curl", "-sS", "-N", "--http2-prior-knowledge", "-w", "\\n%{http_version}", url]
    return Child(args, merge_output=True)


def test_an_http2_stream_waiting_in_receive_is_told_at_shutdown():
    seen: list[str] = []
    started = threading.Event()
    app = stream_app(seen, started)
    with serve(app, timeout_graceful_shutdown=GRACE) as server:
        curl = curl_http2(server.url + "/")
        try:
            curl.wait_until(lambda: "first" in curl.output, "the stream to begin")
            begun = time.monotonic()
            server.server.should_exit = True
            code = curl.proc.wait(10)  # not 0 if the stream was reset or cut
        finally:
            curl.stop(signal.SIGKILL)
        server.thread.join(10)
        assert not server.thread.is_alive()
    assert time.monotonic() - begun < 5
    assert (code, curl.output) == (0, "first\n\n2")
    assert seen == ["http.request", "http.disconnect"]


@pytest.mark.parametrize(
    ("restarting", "code", "reason"), [(False, 1001, "going away"), (True, 1012, "service restart")]
)
def test_an_open_websocket_is_closed_with_the_reason_the_server_stops(restarting, code, reason):
    events = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        events.append(await receive())

    with serve(app) as server, connect(f"ws://127.0.0.1:{server.port}/") as ws:
        server.server.restarting = restarting  # as a worker's RESTART_SIGNAL handler sets it
        server.server.should_exit = True
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(10)
        server.thread.join(10)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (code, reason)
    assert events == [{"type": "websocket.disconnect", "code": code, "reason": reason}]


# -- through the CLI: signals, the supervisor -------------------------------------------------


def start(*args: str) -> tuple[AserveProcess, int]:
    server = AserveProcess(
        "streams:app",
        "--app-dir",
        str(APPS),
        "--port",
        "0",
        "--timeout-graceful-shutdown",
        str(GRACE),
        *args,
    )
    return server, server.wait_for_port()


def read_events(sock: socket.socket, count: int) -> bytes:
    received = b""
    while received.count(b"data: ") < count:
        chunk = sock.recv(65536)
        assert chunk, f"the stream ended before the shutdown began: {received!r}"
        received += chunk
    return received


def assert_clean_stop(server: AserveProcess, code: int) -> None:
    log = server.output
    assert code == 0, log
    assert "streams-app: lifespan shutdown" in log
    assert "Graceful shutdown timed out" not in log
    assert "ERROR" not in log and "Traceback" not in log, log


@pytest.mark.once
@pytest.mark.parametrize(
    ("path", "last_event"),
    [("/events", b"event: bye"), ("/events-return", b"id: ")],
    ids=["app-ends-its-stream", "app-returns"],
)
def test_an_event_stream_ends_promptly_and_whole_on_sigterm(path, last_event):
    server, port = start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
            received = read_events(sock, 3)
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            while chunk := sock.recv(65536):  # a reset would raise here
                received += chunk
            ended_after = time.monotonic() - signalled
        code = server.proc.wait(GRACE)
    finally:
        server.stop(signal.SIGKILL)
    assert ended_after < 10, ended_after  # not the 30 s of --timeout-graceful-shutdown
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"transfer-encoding: chunked" in head.lower(), head
    chunks, terminated, rest = parse_chunks(body)
    assert (terminated, rest) == (True, b"\r\n"), body[-200:]  # the last chunk: complete
    events = b"".join(chunks).split(b"\n\n")
    assert events.pop() == b""  # whole events only
    assert events[-1].startswith(last_event), events[-3:]
    assert f"streams-app: http.disconnect on {path} over HTTP/1.1" in server.output
    assert_clean_stop(server, code)


@pytest.mark.once
def test_an_http2_event_stream_ends_promptly_and_whole_on_sigterm():
    server, port = start()
    try:
        curl = curl_http2(f"http://127.0.0.1:{port}/events")
        try:
            curl.wait_until(lambda: curl.output.count("data: ") >= 3, "three events")
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            curl_code = curl.proc.wait(GRACE)  # not 0 if the stream was reset or cut
            ended_after = time.monotonic() - signalled
        finally:
            curl.stop(signal.SIGKILL)
        code = server.proc.wait(GRACE)
    finally:
        server.stop(signal.SIGKILL)
    assert ended_after < 10, ended_after
    assert curl_code == 0, curl.output
    assert curl.output.endswith("event: bye\ndata: the server is shutting down\n\n\n2")
    assert "streams-app: http.disconnect on /events over HTTP/2" in server.output
    assert_clean_stop(server, code)


@pytest.mark.once
def test_a_websocket_is_closed_1001_on_sigterm():
    server, port = start()
    try:
        with connect(f"ws://127.0.0.1:{port}/", open_timeout=15) as ws:
            ws.recv(15)
            server.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(15)
        code = server.proc.wait(GRACE)
    finally:
        server.stop(signal.SIGKILL)
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "going away")
    assert "streams-app: websocket.disconnect 1001" in server.output
    assert_clean_stop(server, code)


@pytest.mark.once
def test_websockets_are_closed_1012_on_a_rolling_restart_and_1001_on_stop():
    server, port = start("--workers", "2")
    url = f"ws://127.0.0.1:{port}/"
    try:
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(connect(url, open_timeout=15)) for _ in range(4)]
            for ws in sockets:
                ws.recv(15)
            server.proc.send_signal(signal.SIGHUP)  # every worker is replaced, one at a time
            for ws in sockets:
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(30)
                rcvd = closed.value.rcvd
                assert (rcvd.code, rcvd.reason) == (1012, "service restart")
        server.wait_until(lambda: "Reload complete" in server.output, "the reload")
        with connect(url, open_timeout=15) as ws:  # a new worker's, closed when all stop
            ws.recv(15)
            server.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(15)
            assert closed.value.rcvd.code == 1001
        code = server.proc.wait(GRACE)
    finally:
        server.stop(signal.SIGKILL)
    assert code == 0, server.output
    assert server.output.count("streams-app: websocket.disconnect 1012") == 4
    assert "streams-app: websocket.disconnect 1001" in server.output


@pytest.mark.once
def test_a_websocket_is_closed_1012_when_its_worker_is_recycled():
    server, port = start("--workers", "1", "--limit-max-requests", "3")
    try:
        with connect(f"ws://127.0.0.1:{port}/", open_timeout=15) as ws:
            old = int(ws.recv(15))  # the handshake is the worker's first request
            for _ in range(2):
                assert int(httpx.get(f"http://127.0.0.1:{port}/ping", timeout=15).text) == old
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(30)  # the replacement is ready: the old worker goes
            assert closed.value.rcvd.code == 1012
        wait_for(
            lambda: int(httpx.get(f"http://127.0.0.1:{port}/ping", timeout=15).text) != old,
            "the new worker to serve",
        )
    finally:
        server.stop()
    assert "streams-app: websocket.disconnect 1012" in server.output


# -- an upload in progress: read to its end, answered, and nothing after it -------------------

BODY = bytes(range(256)) * 96  # 24 KiB: each half reaches the server in one read
PIPELINED = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"


def body_part(data: bytes, framing: str, last: bool) -> bytes:
    """`data` as the request's framing sends it (chunked: in two chunks, then the last one)."""
    if framing == "content-length":
        return data
    half = len(data) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (data[:half], data[half:]))
    return chunks + (b"0\r\n\r\n" if last else b"")


def upload_across_the_shutdown(
    server: AserveProcess, port: int, framing: str, begin_shutdown
) -> tuple[bytes, float]:
    """Send the head and half the body; once the app has the first piece, `begin_shutdown(pid)`
    (the pid of the process serving it) returns when that process has told its connections
    to close. Then the rest of the body, with a pipelined request after it: what comes back,
    and how long after the shutdown began."""
    framing_field = (
        b"Content-Length: %d" % len(BODY)
        if framing == "content-length"
        else b"Transfer-Encoding: chunked"
    )
    head = b"POST /upload HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % framing_field
    half = len(BODY) // 2
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head + body_part(BODY[:half], framing, last=False))
        found: list[int] = []

        def began() -> bool:
            match = re.search(r"upload began in (\d+)", server.output)
            if match:
                found.append(int(match.group(1)))
            return match is not None

        server.wait_until(began, "the app to read the first half of the body")
        signalled = time.monotonic()
        begin_shutdown(found[0])
        time.sleep(0.2)  # a moment more: the server has nothing to read meanwhile
        sock.sendall(body_part(BODY[half:], framing, last=True) + PIPELINED)
        received = read_until_close(sock, GRACE)
    return received, time.monotonic() - signalled


def assert_the_upload_was_answered(received: bytes, server: AserveProcess) -> None:
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), received[:300]
    assert b"connection: close" in head.lower(), head
    _pid, size, digest = body.split(b" ")
    # The app read every byte; the pipelined request after the body was not served.
    assert (int(size), digest.decode()) == (len(BODY), hashlib.sha256(BODY).hexdigest()), body
    assert received.count(b"HTTP/1.1 ") == 1, received
    assert "upload disconnected" not in server.output


@pytest.mark.once
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_upload_in_progress_is_read_to_its_end_and_answered_on_sigterm(framing):
    server, port = start()

    def sigterm(pid: int) -> None:
        server.proc.send_signal(signal.SIGTERM)
        server.wait_until(
            lambda: "Waiting for connections to close" in server.output, "the shutdown"
        )

    try:
        received, elapsed = upload_across_the_shutdown(server, port, framing, sigterm)
        code = server.proc.wait(GRACE)
    finally:
        server.stop(signal.SIGKILL)
    assert_the_upload_was_answered(received, server)
    assert elapsed < 10, elapsed  # not the 30 s of --timeout-graceful-shutdown
    assert_clean_stop(server, code)


@pytest.mark.once
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_upload_in_progress_is_read_to_its_end_in_a_worker_replaced_on_sighup(framing):
    server, port = start("--workers", "2")

    def sighup(pid: int) -> None:
        server.proc.send_signal(signal.SIGHUP)
        server.wait_until(
            lambda: f"[{pid}] Waiting for connections to close" in server.output,
            f"worker {pid} to drain",
        )

    try:
        received, elapsed = upload_across_the_shutdown(server, port, framing, sighup)
        server.wait_until(lambda: "Reload complete" in server.output, "the reload")
        code = server.stop()
    finally:
        server.stop(signal.SIGKILL)
    assert_the_upload_was_answered(received, server)
    assert elapsed < 20, elapsed  # a new worker started first; then not the 30 s of the grace
    assert code == 0, server.output
    assert "Graceful shutdown timed out" not in server.output


@pytest.mark.once
def test_an_http2_upload_in_progress_gets_its_data_after_sigterm():
    server, port = start()
    half = len(BODY) // 2
    try:
        client = Client(port)
        length = [(b"content-length", b"%d" % len(BODY))]
        stream = client.request("/upload", "POST", length, BODY[:half], end=False)
        server.wait_until(lambda: "upload began in" in server.output, "the upload to begin")
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.wait_until(lambda: "Waiting for connections to close" in server.output, "drain")
        time.sleep(0.2)
        # The connection's GOAWAY waits for its streams to end (docs/http2.md): the stream
        # goes on, and the rest of its body is read.
        assert client.goaway is None
        client.send_body(stream, BODY[half:])
        response = client.response(stream, 15)
        client.wait(lambda: client.goaway is not None, 15)
        assert client.goaway.last_stream_id == stream
        elapsed = time.monotonic() - signalled
        client.close()
        code = server.proc.wait(GRACE)
    finally:
        server.stop(signal.SIGKILL)
    assert response.status == 200, response.headers
    pid, size, digest = response.body.split(b" ")
    assert (int(size), digest.decode()) == (len(BODY), hashlib.sha256(BODY).hexdigest())
    assert elapsed < 10, elapsed
    assert f"upload began in {pid.decode()} over HTTP/2" in server.output
    assert_clean_stop(server, code)
