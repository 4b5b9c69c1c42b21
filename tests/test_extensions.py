"""The ASGI extensions over real sockets: pathsend (sendfile, and reads where the transport
cannot take it, e.g. TLS), zero-copy send, trailers, early hints, and Starlette's FileResponse."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import FileResponse

import aserve.protocols.sendfile as sendfile
from aserve.asgi import HTTP_EXTENSIONS
from aserve.config import Config
from aserve.protocols.http import HttpProtocol
from aserve.server import run
from aserve.state import ServerState
from conftest import read_response, read_until_close, serve

BIG = 6 * 1024 * 1024 + 123  # several sendfile chunks, and more than socket buffers hold


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes of each os.sendfile call the server makes."""
    calls: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        sent = real(out_fd, in_fd, offset, count)
        calls.append(sent)
        return sent

    monkeypatch.setattr(sendfile, "_sendfile", counting)
    return calls


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    data = os.urandom(BIG)
    path = tmp_path_factory.mktemp("files") / "big.bin"
    path.write_bytes(data)
    return path, data


def get(port: int, request: bytes, *, head: bool = False, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        return read_response(sock, timeout, head=head)


def dechunk(body: bytes) -> tuple[bytes, bytes]:
    """A chunked body's payload and its trailer section (the lines after the last chunk)."""
    payload = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            if body[:2] == b"\r\n":
                return payload, b""
            return payload, body.partition(b"\r\n\r\n")[0]
        payload += body[:size]
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]


def read_chunked(sock: socket.socket, timeout: float = 10) -> tuple[bytes, bytes]:
    """Read one chunked response whole: (head, raw body up to the end of its trailers)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    while not (body.endswith(b"\r\n\r\n") and _complete(body)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head, body


def _complete(body: bytes) -> bool:
    try:
        dechunk(body)
    except (ValueError, AssertionError, IndexError):
        return False
    return True


# -- advertised ------------------------------------------------------------------------------


def test_every_http_scope_offers_the_extensions():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["extensions"])
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    with serve(app) as server:
        assert httpx.get(server.url).status_code == 204
    assert set(seen[0]) == {
        "http.response.pathsend",
        "http.response.zerocopysend",
        "http.response.trailers",
        "http.response.early_hint",
    }
    assert set(seen[0]) == set(HTTP_EXTENSIONS)
    assert all(value == {} for value in seen[0].values())


def test_an_extension_added_by_one_request_is_not_seen_by_the_next():
    seen = []

    async def app(scope, receive, send):
        seen.append(set(scope["extensions"]))
        scope["extensions"]["x.middleware"] = {}  # what a middleware may do for its request
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    with serve(app) as server, httpx.Client() as client:
        for _ in range(2):  # the same connection, then a new one
            assert client.get(server.url).status_code == 204
        assert httpx.get(server.url).status_code == 204
    assert seen == [set(HTTP_EXTENSIONS)] * 3


# -- pathsend --------------------------------------------------------------------------------


def test_starlette_file_response_goes_out_with_sendfile(loop_name, big_file, sendfile_calls):
    path, data = big_file
    app = FileResponse(path, media_type="application/octet-stream")
    with serve(app, loop=loop_name) as server:
        response = httpx.get(server.url + "/file", timeout=30)
        assert response.status_code == 200
        assert response.headers["content-length"] == str(BIG)
        assert response.content == data
        assert sum(sendfile_calls) == BIG  # every byte by sendfile, none copied through Python
        sendfile_calls.clear()

        head = httpx.head(server.url + "/file")
        assert head.status_code == 200
        assert head.headers["content-length"] == str(BIG)
        assert head.content == b""
        assert sendfile_calls == []  # Starlette sends HEAD as an empty body message

        ranged = httpx.get(server.url + "/file", headers={"Range": "bytes=1000-1999"})
        assert ranged.status_code == 206
        assert ranged.content == data[1000:2000]  # Starlette reads a range itself

        # The same connection serves the next request once the file is out.
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert [client.get("/").content for _ in range(3)] == [data] * 3


def test_pathsend_without_length_gets_one_and_http10_and_a_head_already_out(tmp_path):
    path = tmp_path / "small.txt"
    path.write_bytes(b"0123456789" * 100)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/late":
            await asyncio.sleep(0.05)  # the head goes out on its own first: chunked
        await send({"type": "http.response.pathsend", "path": str(path)})

    with serve(app) as server:
        response = get(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"\r\ncontent-length: 1000\r\n" in response
        assert response.endswith(b"\r\n\r\n" + b"0123456789" * 100)

        response = get(server.port, b"GET / HTTP/1.0\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        assert response.endswith(b"\r\n\r\n" + b"0123456789" * 100)

        response = get(server.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", head=True)
        assert b"\r\ncontent-length: 1000\r\n" in response
        assert response.endswith(b"\r\n\r\n")

        with server.connect() as sock:
            sock.sendall(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = read_chunked(sock)
        assert b"transfer-encoding: chunked" in head
        assert dechunk(body) == (b"0123456789" * 100, b"")


def test_pathsend_to_a_slow_reader_waits_for_the_socket(big_file, sendfile_calls, loop_name):
    """The socket buffer fills; the server waits until the client reads, then goes on."""
    path, data = big_file

    async def app(scope, receive, send):
        headers = [(b"content-length", str(BIG).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": str(path)})

    with serve(app, loop=loop_name) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect(("127.0.0.1", server.port))
        with sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)  # not reading: the server's sendfile meets a full socket
            assert 0 < sum(sendfile_calls) < BIG
            response = read_response(sock, timeout=30)
        # Meanwhile the server served others.
        assert httpx.get(server.url, timeout=30).content == data
    assert response.partition(b"\r\n\r\n")[2] == data


def test_a_client_leaving_during_pathsend_ends_the_send(big_file, loop_name):
    path, _ = big_file
    outcome: list[BaseException | None] = []

    async def app(scope, receive, send):
        headers = [(b"content-length", str(BIG).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            await send({"type": "http.response.pathsend", "path": str(path)})
        except BaseException as exc:
            outcome.append(exc)
            raise
        outcome.append(None)

    fds_before = len(os.listdir("/proc/self/fd"))
    with serve(app, loop=loop_name) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1000).startswith(b"HTTP/1.1 200 OK")
        sock.close()  # with most of the file unsent
        deadline = time.monotonic() + 15
        while not outcome and time.monotonic() < deadline:
            time.sleep(0.01)
        assert outcome and isinstance(outcome[0], OSError), outcome
        assert httpx.get(server.url, timeout=30).status_code == 200  # still serving
    assert len(os.listdir("/proc/self/fd")) <= fds_before  # the file and the socket's duplicate


def test_pathsend_errors_are_clear(tmp_path, caplog):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        if scope["path"] == "/missing":
            await send({"type": "http.response.pathsend", "path": str(tmp_path / "nope")})
        elif scope["path"] == "/dir":
            await send({"type": "http.response.pathsend", "path": str(tmp_path)})
        else:
            await send({"type": "http.response.pathsend", "path": b"/etc/hostname"})

    with serve(app) as server:
        for path in (b"/missing", b"/dir", b"/bytes"):
            # The head had not gone out, but the response had started: the connection closes.
            assert server.request(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path) == b""
    assert "pathsend: cannot open" in caplog.text and "No such file" in caplog.text
    assert "is not a regular file" in caplog.text
    assert "needs 'path' as a string, got bytes" in caplog.text


def test_pipelined_requests_after_a_pathsend_keep_their_order(big_file, sendfile_calls):
    path, data = big_file

    async def app(scope, receive, send):
        if scope["path"] == "/file":
            headers = [(b"content-length", str(BIG).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.pathsend", "path": str(path)})
        else:
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": scope["path"].encode()})

    with serve(app) as server, server.connect(timeout=30) as sock:
        sock.sendall(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /file HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        bodies = [read_response(sock, 30).partition(b"\r\n\r\n")[2] for _ in range(3)]
    assert bodies == [b"/a", data, b"/b"]
    assert sum(sendfile_calls) == BIG


# -- the fallback: a transport that cannot take sendfile -------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: no certificate for the TLS test")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def no_sendfile(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> int:
        raise AssertionError("sendfile must not be used on this transport")

    monkeypatch.setattr(sendfile, "_sendfile", refuse)


def test_pathsend_over_tls_reads_the_file_instead(loop_name, big_file, tls_files, no_sendfile):
    """TLS encrypts in user space: the file is read and written through the transport."""
    cert, key = tls_files
    path, data = big_file
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = FileResponse(path)
    started = threading.Event()
    stop: list[Any] = []
    port: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        state = ServerState(Config(app=app, lifespan="off", access_log=False), app, loop)
        server = await loop.create_server(lambda: HttpProtocol(state), "127.0.0.1", 0, ssl=context)
        port.append(server.sockets[0].getsockname()[1])
        done = loop.create_future()
        stop.append((loop, done))
        started.set()
        await done
        server.close()

    thread = threading.Thread(target=run, args=(main(), loop_name), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=cert), timeout=30) as client:
            for _ in range(2):  # and the connection is usable after it
                response = client.get(f"https://127.0.0.1:{port[0]}/")
                assert response.status_code == 200
                assert response.content == data
    finally:
        loop, done = stop[0]
        loop.call_soon_threadsafe(done.set_result, None)
        thread.join(10)


# -- zero-copy send --------------------------------------------------------------------------


def test_zerocopysend_from_an_offset_and_from_the_file_position(tmp_path, sendfile_calls):
    path = tmp_path / "data.bin"
    data = bytes(range(256)) * 40
    path.write_bytes(data)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        with open(path, "rb") as file:
            file.seek(100)
            message = {"type": "http.response.zerocopysend", "file": file, "more_body": True}
            await send({**message, "offset": 5000, "count": 10})
            await send({**message, "count": 50})  # from the position: 100..149
            await send({"type": "http.response.body", "body": b"|", "more_body": True})
            assert file.tell() == 150  # moved on, as a read would
            await send({"type": "http.response.zerocopysend", "file": file.fileno()})  # to the end

    with serve(app) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = read_chunked(sock)
    assert b"transfer-encoding: chunked" in head
    expected = data[5000:5010] + data[100:150] + b"|" + data[150:]
    assert dechunk(body) == (expected, b"")
    assert sum(sendfile_calls) == len(expected) - 1


# -- trailers --------------------------------------------------------------------------------


async def with_trailers(scope, receive, send):
    headers = [(b"trailer", b"x-checksum, x-status")]
    if scope["path"] == "/length":
        headers.append((b"content-length", b"5"))
    await send({"type": "http.response.start", "status": 200, "headers": headers, "trailers": True})
    if scope["path"] != "/nobody":
        await send({"type": "http.response.body", "body": b"hel", "more_body": True})
        await send({"type": "http.response.body", "body": b"lo"})
    await send(
        {
            "type": "http.response.trailers",
            "headers": [(b"x-checksum", b"5d41402a")],
            "more_trailers": True,
        }
    )
    await send({"type": "http.response.trailers", "headers": [(b"x-status", b"0")]})


def test_trailers_sent_to_a_client_that_accepts_them(loop_name):
    with serve(with_trailers, loop=loop_name) as server, server.connect() as sock:
        for path in (b"/", b"/nobody", b"/"):  # keep-alive after each
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nTE: gzip, trailers\r\n\r\n" % path)
            head, body = read_chunked(sock)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"transfer-encoding: chunked" in head
            assert b"trailer: x-checksum, x-status" in head
            payload, trailers = dechunk(body)
            assert payload == (b"" if path == b"/nobody" else b"hello")
            assert trailers == b"x-checksum: 5d41402a\r\nx-status: 0"


@pytest.mark.parametrize(
    ("request_bytes", "framing"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"transfer-encoding: chunked"),
        (b"GET /length HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n", b"content-length: 5"),
        (b"GET / HTTP/1.0\r\nTE: trailers\r\nConnection: keep-alive\r\n\r\n", None),
    ],
    ids=["no TE: trailers", "content-length", "HTTP/1.0"],
)
def test_trailers_dropped_where_they_cannot_go(request_bytes, framing):
    """Without `TE: trailers` (the extension's rule), with a Content-Length, or on HTTP/1.0
    (no chunks), the body goes out alone and the connection stays usable."""
    with serve(with_trailers) as server, server.connect() as sock:
        sock.sendall(request_bytes)
        if framing == b"transfer-encoding: chunked":
            head, body = read_chunked(sock)
            assert dechunk(body) == (b"hello", b"")
            assert body.endswith(b"0\r\n\r\n")
        else:
            response = read_until_close(sock, timeout=3) if framing is None else None
            if response is None:
                response = read_response(sock)
            head, _, body = response.partition(b"\r\n\r\n")
            assert body == b"hello"
        if framing is not None:
            assert framing in head
            sock.sendall(b"GET /length HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_close(sock).endswith(b"\r\n\r\nhello")


def test_invalid_trailers_are_refused():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"x"})
        await send({"type": "http.response.trailers", "headers": [(b"x-bad", b"a\r\nb")]})

    with serve(app) as server:
        response = server.request(b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
    # The body was out; the trailers were not: the connection is cut, never left to look
    # complete.
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert not response.endswith(b"\r\n\r\n")


# -- early hints -----------------------------------------------------------------------------


async def hinting(scope, receive, send):
    style = b"</style.css>; rel=preload; as=style"
    await send({"type": "http.response.early_hint", "links": [style]})
    await send({"type": "http.response.early_hint", "links": [b"</app.js>; rel=preload"]})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.early_hint", "links": [b"</late.js>; rel=preload"]})
    if scope["path"] == "/slow":
        await asyncio.sleep(0.05)  # the head goes out: a hint after it is dropped
        await send({"type": "http.response.early_hint", "links": [b"</never.js>"]})
    await send({"type": "http.response.body", "body": b"page"})


def test_early_hints_precede_the_response(loop_name):
    with serve(hinting, loop=loop_name) as server:
        response = server.request(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        slow = server.request(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        http10 = server.request(b"GET / HTTP/1.0\r\n\r\n")
        # A client that knows 1xx skips them and reads the response.
        assert httpx.get(server.url).text == "page"
    hints = response.split(b"HTTP/1.1 200 OK\r\n")[0]
    assert hints == (
        b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nlink: </app.js>; rel=preload\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nlink: </late.js>; rel=preload\r\n\r\n"
    )
    assert response.endswith(b"\r\n\r\npage")
    assert slow.count(b"103 Early Hints") == 3 and b"never" not in slow
    assert slow.endswith(b"\r\n4\r\npage\r\n0\r\n\r\n")
    assert http10.startswith(b"HTTP/1.1 200 OK\r\n")  # never a 1xx to an HTTP/1.0 client


def test_an_early_hint_with_a_line_break_is_refused():
    async def app(scope, receive, send):
        await send({"type": "http.response.early_hint", "links": [b"</a>\r\nx-injected: 1"]})

    with serve(app) as server:
        response = server.request(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 500 ")
    assert b"x-injected" not in response
