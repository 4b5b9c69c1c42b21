"""HTTP/1.1 behaviour over real sockets: framing, keep-alive, pipelining, errors, flow control."""

from __future__ import annotations

import asyncio
import contextvars
import socket
import threading
import time
from http import HTTPStatus

import httpx
import pytest

from aserve.flow_control import READY
from conftest import read_response, read_until_close, serve


async def hello(scope, receive, send):
    body = b"Hello, world!"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def echo_body(scope, receive, send):
    """Answers with the request body, streaming chunked (no content-length)."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
        await send({"type": "http.response.body", "body": message["body"], "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def test_get_with_httpx(loop_name):
    with serve(hello, loop=loop_name) as server:
        response = httpx.get(server.url + "/")
    assert response.status_code == 200
    assert response.text == "Hello, world!"
    assert response.headers["server"] == "aserve"
    assert "date" in response.headers


def test_scope_of_each_request_on_a_connection_is_its_own():
    """Requests answered one after another on one keep-alive connection (then HTTP/1.0) each
    see their own method, version and query string, whichever differ from the common ones,
    in the same key order."""
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        while (await receive())["more_body"]:
            pass
        await hello(scope, receive, send)

    with serve(app) as server, server.connect() as sock:
        requests = [
            b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
            b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n",
            b"DELETE /c?y HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /d HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
            b"PATCH /e HTTP/1.1\r\nHost: h\r\n\r\n",
        ]
        for request in requests:
            sock.sendall(request)
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
    seen = [(s["method"], s["http_version"], s["path"], s["query_string"]) for s in scopes]
    assert seen == [
        ("POST", "1.1", "/a", b"x=1"),
        ("GET", "1.1", "/b", b""),
        ("DELETE", "1.1", "/c", b"y"),
        ("GET", "1.0", "/d", b""),
        ("PATCH", "1.1", "/e", b""),
    ]
    keys = ["type", "asgi", "http_version", "server", "client", "scheme", "method"]
    keys += ["root_path", "path", "raw_path", "query_string", "headers", "state", "extensions"]
    assert all(list(scope) == keys for scope in scopes)
    assert all(scope["scheme"] == "http" for scope in scopes)


def test_scope_is_complete_and_exact():
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        await hello(scope, receive, send)

    with serve(app, root_path="/api") as server:
        server.request(
            b"GET /caf%C3%A9/x%2Fy?a=1&b=%20 HTTP/1.1\r\nHost: example\r\n"
            b"X-Dup: 1\r\nx-dup: 2\r\nConnection: close\r\n\r\n"
        )
        port = server.port
    scope = scopes[0]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/café/x/y"
    assert scope["raw_path"] == b"/api/caf%C3%A9/x%2Fy"
    assert scope["query_string"] == b"a=1&b=%20"
    assert scope["headers"] == [
        (b"host", b"example"),
        (b"x-dup", b"1"),
        (b"x-dup", b"2"),
        (b"connection", b"close"),
    ]
    assert scope["server"] == ("127.0.0.1", port)
    assert scope["client"][0] == "127.0.0.1"
    assert isinstance(scope["client"][1], int)
    assert scope["state"] == {}


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/a/b?x=1", "/a/b", b"x=1"),
        (b"/a?", "/a", b""),
        (b"http://example.com/abs?q=2", "/abs", b"q=2"),
        (b"http://example.com", "/", b""),
    ],
)
def test_request_target_forms(target, path, query):
    """Origin form and absolute form (RFC 9112, 3.2); a fragment is refused
    (tests/test_request_rules.py)."""
    seen = []

    async def app(scope, receive, send):
        seen.append((scope["path"], scope["query_string"]))
        await hello(scope, receive, send)

    with serve(app) as server:
        response = server.request(
            b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target
        )
    assert response.startswith(b"HTTP/1.1 200 OK"), response
    assert seen == [(path, query)]


def test_connect_is_answered_as_http_and_the_tunnel_is_not_parsed():
    methods = []

    async def app(scope, receive, send):
        methods.append((scope["method"], scope["path"]))
        await hello(scope, receive, send)

    with serve(app) as server:
        response = server.request(
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        )
    assert response.startswith(b"HTTP/1.1 "), response
    assert b"/smuggled" not in response
    assert len(methods) <= 1 and all(method == "CONNECT" for method, _ in methods)


def test_keep_alive_reuses_connection():
    with serve(hello) as server, server.connect() as sock:
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            response = read_response(sock)
            assert response.startswith(b"HTTP/1.1 200 OK\r\n")
            assert response.endswith(b"Hello, world!")
            assert b"connection: close" not in response


def test_connection_close_from_client():
    with serve(hello) as server:
        data = server.request(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"\r\nconnection: close\r\n" in data
    assert data.endswith(b"Hello, world!")  # and the server closed: request() returned


@pytest.mark.parametrize(
    "field", [b"Connection: close", b"Proxy-Connection: close", b"connection: keep-alive, Close"]
)
def test_connection_close_in_any_form_from_client(field):
    """Every field llhttp reads as the connection's (Proxy-Connection too, any case, in a
    list) ends it after the answer; other fields and no field keep it."""
    with serve(hello) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Connection: close\r\n\r\n")
        assert b"connection: close" not in read_response(sock)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % field)
        data = read_until_close(sock)
    assert b"\r\nconnection: close\r\n" in data
    assert data.endswith(b"Hello, world!")


def test_connection_close_from_app():
    async def app(scope, receive, send):
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"Connection", b"close")]}
        )
        await send({"type": "http.response.body", "body": b"bye"})

    with serve(app) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until_close(sock)
    assert data.count(b"onnection") == 1  # the app's header is replaced by ours, not doubled
    assert b"connection: close\r\n" in data
    assert data.endswith(b"bye")


def test_http10_without_keep_alive_is_close_delimited():
    with serve(echo_body) as server:
        data = server.request(b"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"transfer-encoding" not in head.lower()
    assert b"content-length" not in head.lower()
    assert b"connection: close" in head
    assert body == b"hello"


def test_http10_keep_alive():
    with serve(hello) as server, server.connect() as sock:
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response = read_response(sock)
            assert b"connection: keep-alive\r\n" in response
            assert response.endswith(b"Hello, world!")


async def version_echo(scope, receive, send):
    """Reads the body, answers with the scope's http_version."""
    while (await receive()).get("more_body"):
        pass
    body = scope["http_version"].encode()
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


GET_10 = b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
# The read that ends this body holds "HTTP/1.1\r" at the offset where GET_10's version would
# be if the read began with GET_10's request line.
POST_11_BODY_LOOKS_LIKE_A_LINE = (
    b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n",
    b"1234567HTTP/1.1\r\n",
)


@pytest.mark.parametrize(
    ("sends", "versions"),
    [
        ([GET_10], ["1.0"]),
        ([b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" + GET_10], ["1.1", "1.0"]),
        ([GET_10 + b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"], ["1.0", "1.1"]),
        # Blank lines before the request line shift it from where the version is looked for.
        ([b"\r\n" + GET_10, b"\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n"], ["1.0", "1.1"]),
        # The request line split across reads.
        ([b"GET /b HTTP/1.", b"0\r\nConnection: keep-alive\r\n\r\n"], ["1.0"]),
        ([b"GE", b"T /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"], ["1.0"]),
        # The head split after the request line, the next read with a version where this
        # request line would have its own.
        (
            [b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\nX: a", b"bcdefg HTTP/1.1\r\n\r\n"],
            ["1.0"],
        ),
        # A body whose bytes end like a request line, then a request in the same read.
        ([b"".join(POST_11_BODY_LOOKS_LIKE_A_LINE) + GET_10], ["1.1", "1.0"]),
        # ... and with the body's end arriving in the read that carries the next request.
        (
            [POST_11_BODY_LOOKS_LIKE_A_LINE[0], POST_11_BODY_LOOKS_LIKE_A_LINE[1] + GET_10],
            ["1.1", "1.0"],
        ),
    ],
)
def test_http_version_of_each_request(sends, versions):
    """The version is read from the request line for the common case (one request per read);
    every other arrangement of bytes must give the same answer as the parser."""
    with serve(version_echo) as server, server.connect() as sock:
        for data in sends:
            sock.sendall(data)
            time.sleep(0.05)  # separate reads on the server
        answers = [read_response(sock).rpartition(b"\r\n\r\n")[2] for _ in versions]
    assert answers == [v.encode() for v in versions]


def test_chunked_response_when_no_content_length():
    with serve(echo_body) as server:
        data = server.request(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"5\r\nhello\r\n0\r\n\r\n"


def test_single_body_gets_content_length_instead_of_chunks():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"abc"})

    with serve(app) as server:
        data = server.request(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"content-length: 3\r\n" in data
    assert b"chunked" not in data
    assert data.endswith(b"\r\n\r\nabc")


def test_chunked_request_body_streams_in_pieces():
    pieces = []
    arrived = threading.Event()

    async def app(scope, receive, send):
        while True:
            message = await receive()
            pieces.append(message["body"])
            arrived.set()
            if not message["more_body"]:
                break
        await hello(scope, receive, send)

    with serve(app) as server, server.connect() as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
        )
        assert arrived.wait(5)
        assert pieces == [b"first"]  # handed to the app before the rest exists
        sock.sendall(b"6\r\nsecond\r\n0\r\n\r\n")
        response = read_response(sock)
    assert response.endswith(b"Hello, world!")
    assert b"".join(pieces) == b"firstsecond"


def test_head_and_no_body_statuses():
    async def app(scope, receive, send):
        status = int(scope["path"][1:]) if scope["path"][1:].isdigit() else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"body bytes"})

    with serve(app) as server, server.connect() as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = read_response(sock, head=True)
        assert b"content-length: 10\r\n" in head  # what GET would send
        assert head.endswith(b"\r\n\r\n")
        for status in (204, 304):
            sock.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % status)
            response = read_response(sock)
            assert response.startswith(b"HTTP/1.1 %d " % status)
            assert response.endswith(b"\r\n\r\n")
            assert b"content-length" not in response and b"chunked" not in response
        # The connection is still in sync: a following request is answered correctly.
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).endswith(b"body bytes")


def test_framing_follows_the_request_not_the_scope_the_app_changed():
    """A middleware may rewrite `method` or `http_version` in its scope (HEAD served as GET,
    say); what goes on the wire still answers the request the client sent."""

    async def app(scope, receive, send):
        scope["method"], scope["http_version"] = "GET", "1.0"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"body ", "more_body": True})
        await send({"type": "http.response.body", "body": b"bytes"})

    with serve(app) as server, server.connect() as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = read_response(sock, head=True)
        assert head.endswith(b"\r\n\r\n") and b"connection: close" not in head
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # still in sync, still 1.1
        sock.settimeout(5)
        response = b""
        while not response.endswith(b"0\r\n\r\n"):
            response += sock.recv(65536)
    assert b"transfer-encoding: chunked" in response
    assert b"5\r\nbody \r\n5\r\nbytes\r\n0\r\n\r\n" in response


def test_messages_may_be_any_mapping():
    from types import MappingProxyType

    async def app(scope, receive, send):
        start = {"type": "http.response.start", "status": 200, "headers": []}
        await send(MappingProxyType(start))
        await send(MappingProxyType({"type": "http.response.body", "body": b"ok"}))

    with serve(app) as server:
        response = httpx.get(server.url)
    assert response.status_code == 200 and response.text == "ok"


def test_status_may_be_an_http_status_member():
    async def app(scope, receive, send):
        start = {"type": "http.response.start", "status": HTTPStatus.CREATED, "headers": []}
        await send(start)
        await send({"type": "http.response.body", "body": b"ok"})

    with serve(app) as server:
        response = httpx.get(server.url)
    assert response.status_code == 201 and response.text == "ok"


def test_expect_100_continue_sent_only_when_app_reads():
    async def reads(scope, receive, send):
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    async def refuses(scope, receive, send):
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b"too big"})

    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    with serve(reads) as server, server.connect() as sock:
        sock.sendall(request)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"data")
        assert read_response(sock).endswith(b"\r\n\r\ndata")
    with serve(refuses) as server, server.connect() as sock:
        sock.sendall(request)
        data = read_until_close(sock)
    assert b"100 Continue" not in data
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in data  # the body was never asked for, so we cannot go on


def test_pipelined_requests_answered_in_order():
    async def app(scope, receive, send):
        if scope["path"] == "/slow":
            await asyncio.sleep(0.2)
        body = scope["path"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    requests = b"".join(
        b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path for path in (b"/slow", b"/1", b"/slow", b"/2")
    )
    with serve(app) as server:
        data = server.request(
            requests + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    bodies = [part.split(b"\r\n\r\n")[1] for part in data.split(b"HTTP/1.1 200 OK")[1:]]
    assert bodies == [b"/slow", b"/1", b"/slow", b"/2", b"/last"]


def test_deep_pipeline_does_not_recurse():
    count = 3000
    with serve(hello) as server:
        pipeline = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * count
        data = server.request(pipeline + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.count(b"Hello, world!") == count + 1


REQUEST_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("request_var")
BASE_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("base_var", default="unset")


def test_pipelined_requests_never_share_context(loop_name):
    seen = []

    async def app(scope, receive, send):
        seen.append((scope["path"], REQUEST_VAR.get(None), BASE_VAR.get()))
        REQUEST_VAR.set(scope["path"])
        if scope["path"] == "/pause":
            await asyncio.sleep(0.05)
        await hello(scope, receive, send)

    token = BASE_VAR.set("from-base")  # set before the server starts: every request sees it
    try:
        with serve(app, loop=loop_name) as server:
            paths = [b"/a", b"/pause", b"/b", b"/c", b"/pause", b"/d"]
            pipeline = b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p for p in paths)
            with server.connect() as sock:
                sock.sendall(pipeline)
                for _ in paths:
                    read_response(sock)
                # and after the pipeline: plain keep-alive requests on the same connection
                sock.sendall(b"GET /e HTTP/1.1\r\nHost: x\r\n\r\n")
                read_response(sock)
    finally:
        BASE_VAR.reset(token)
    assert [s[0] for s in seen] == ["/a", "/pause", "/b", "/c", "/pause", "/d", "/e"]
    assert all(previous is None for _, previous, _ in seen), seen
    assert all(base == "from-base" for _, _, base in seen), seen


def test_app_runs_in_a_real_task_with_anyio_cancel_scope():
    import anyio

    results = {}

    async def app(scope, receive, send):
        results["task"] = asyncio.current_task() is not None
        with anyio.CancelScope() as cancel_scope:  # needs a current task at the first line
            cancel_scope.cancel()
            await anyio.sleep(1)
        results["cancelled"] = cancel_scope.cancelled_caught
        async with asyncio.timeout(1):
            await asyncio.sleep(0)
        await hello(scope, receive, send)

    with serve(app) as server:
        assert httpx.get(server.url).status_code == 200
    assert results == {"task": True, "cancelled": True}


def test_exception_before_response_is_500_and_server_lives(caplog):
    async def app(scope, receive, send):
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        await hello(scope, receive, send)

    with serve(app) as server, httpx.Client(base_url=server.url) as client:
        response = client.get("/boom")
        assert response.status_code == 500
        assert response.text == "Internal Server Error"
        assert client.get("/").text == "Hello, world!"
    assert "Exception in ASGI application" in caplog.text


def test_exception_after_start_closes_connection():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("mid-stream")

    with serve(app) as server:
        data = server.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"7\r\npartial\r\n" in data
    assert not data.endswith(b"0\r\n\r\n")  # never looks complete


def test_app_returning_without_response_is_500():
    async def app(scope, receive, send):
        return None

    with serve(app) as server:
        assert httpx.get(server.url).status_code == 500


@pytest.mark.parametrize(
    "header",
    [
        (b"x-evil", b"a\r\nset-cookie: injected=1"),
        (b"x-evil", b"a\nb"),
        (b"x-evil", b"a\x00b"),
        (b"bad name", b"v"),
        (b"x-evil\r\nset-cookie", b"v"),
    ],
)
def test_response_header_injection_refused(header):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [header]})
        await send({"type": "http.response.body", "body": b"never"})

    with serve(app) as server:
        data = server.request(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 500 ")
    assert b"injected" not in data and b"never" not in data


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1 GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_bad_requests_get_one_400_and_close(request_bytes, caplog):
    calls = []

    async def app(scope, receive, send):
        calls.append(scope)
        await hello(scope, receive, send)

    with serve(app) as server:
        data = server.request(request_bytes)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data
    assert data.count(b"HTTP/1.1") == 1
    assert b"connection: close" in data
    assert b"Invalid HTTP request: " in data
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (b"GET http://exa[mple HTTP/1.1\r\nHost: x\r\n\r\n", b"invalid request target"),
        (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", b"Invalid char in url path"),
    ],
)
def test_bad_request_target_is_named_in_the_400(request_bytes, reason):
    with serve(hello) as server:
        data = server.request(request_bytes)
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data
    assert reason in data.split(b"\r\n\r\n", 1)[1], data


def test_bad_request_after_good_one_in_pipeline():
    with serve(hello) as server:
        data = server.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / NOT-HTTP\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"Hello, world!HTTP/1.1 400 Bad Request" in data


def test_disconnect_reaches_app_waiting_after_body():
    got = []
    done = threading.Event()

    async def app(scope, receive, send):
        got.append(await receive())  # the (empty) body
        got.append(await receive())  # blocks until the client leaves
        done.set()

    with serve(app) as server:
        sock = server.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        assert not done.is_set()
        sock.close()
        assert done.wait(5)
    assert got == [
        {"type": "http.request", "body": b"", "more_body": False},
        {"type": "http.disconnect"},
    ]


def test_send_after_disconnect_raises_oserror():
    outcome = []
    done = threading.Event()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(1000):
                await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})
                await asyncio.sleep(0.01)
        except OSError as exc:
            outcome.append(exc)
        done.set()

    with serve(app) as server:
        sock = server.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(100)
        sock.close()
        assert done.wait(5)
    assert outcome and isinstance(outcome[0], OSError)


def test_large_upload_pauses_reading():
    """With an app that does not read, the server stops reading instead of buffering it all."""
    state = {}
    release = threading.Event()

    async def app(scope, receive, send):
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 5)
        total = 0
        more = True
        while more:
            message = await receive()
            total += len(message["body"])
            more = message["more_body"]
        state["total"] = total
        await hello(scope, receive, send)

    size = 32 * 1024 * 1024
    with serve(app) as server, server.connect(timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        sock.setblocking(False)
        sent = 0
        chunk = b"x" * 65536
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and sent < size:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        assert sent < size  # the socket buffers filled up: the server stopped reading
        release.set()
        sock.setblocking(True)
        sock.settimeout(10)
        remaining = size - sent
        while remaining:
            remaining -= sock.send(chunk[: min(len(chunk), remaining)])
        assert read_response(sock, timeout=10).endswith(b"Hello, world!")
    assert state["total"] == size


def test_send_waits_while_client_does_not_read():
    progress = {"sent": 0}

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"x" * 65536
        for _ in range(1024):  # 64 MiB if nobody stops us
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            progress["sent"] += len(chunk)
        await send({"type": "http.response.body", "body": b""})

    with serve(app) as server, server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)
        stalled_at = progress["sent"]
        time.sleep(0.3)
        assert progress["sent"] == stalled_at  # send() is waiting, not buffering
        assert stalled_at < 16 * 1024 * 1024


def test_send_can_be_wrapped_in_a_task():
    """With uvicorn `send` returns a coroutine, so apps may hand it to `create_task`; that
    works here too, both when `send` need not wait and when the client is slow to read."""
    size = 8 * 1024 * 1024
    waited = []

    async def app(scope, receive, send):
        headers = [(b"content-length", str(size).encode())]
        start = {"type": "http.response.start", "status": 200, "headers": headers}
        await asyncio.create_task(send(start))
        chunk = b"x" * 65536
        for i in range(size // len(chunk)):
            pending = send({"type": "http.response.body", "body": chunk, "more_body": True})
            waited.append(pending is not READY)
            wrap = asyncio.create_task if i % 2 else asyncio.ensure_future
            await wrap(pending)
        await asyncio.wait_for(send({"type": "http.response.body", "body": b""}), 5)

    with serve(app) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)  # let the transport's buffer fill: later sends must wait
        response = read_response(sock, timeout=10)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and len(body) == size
    assert any(waited) and not all(waited)


def test_limit_concurrency_answers_503():
    release = threading.Event()
    arrived = threading.Event()

    async def app(scope, receive, send):
        if scope["path"] == "/slow":
            arrived.set()
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 5)
        await hello(scope, receive, send)

    with serve(app, limit_concurrency=1) as server:
        slow = server.connect()
        slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert arrived.wait(5)
        response = httpx.get(server.url + "/")
        release.set()
        assert read_response(slow).endswith(b"Hello, world!")
        slow.close()
    assert response.status_code == 503


def test_proxy_headers_trusted_only_from_allowed_peers():
    scopes = []

    async def app(scope, receive, send):
        scopes.append((scope["client"], scope["scheme"]))
        await hello(scope, receive, send)

    headers = {"X-Forwarded-For": "203.0.113.7, 10.0.0.1", "X-Forwarded-Proto": "https"}
    with serve(app, forwarded_allow_ips="127.0.0.1,10.0.0.0/8") as server:
        httpx.get(server.url, headers=headers)
    with serve(app, forwarded_allow_ips="192.0.2.1") as server:
        httpx.get(server.url, headers=headers)
    with serve(app, proxy_headers=False, forwarded_allow_ips="*") as server:
        httpx.get(server.url, headers=headers)
    assert scopes[0] == (("203.0.113.7", 0), "https")
    assert scopes[1][0][0] == "127.0.0.1" and scopes[1][1] == "http"
    assert scopes[2][0][0] == "127.0.0.1" and scopes[2][1] == "http"


def test_server_date_and_custom_headers():
    with serve(hello, headers=[("X-Served-By", "node-1")]) as server:
        response = httpx.get(server.url)
    assert response.headers["x-served-by"] == "node-1"
    with serve(hello, server_header=False, date_header=False) as server:
        response = httpx.get(server.url)
    assert "server" not in response.headers
    assert "date" not in response.headers


def test_app_supplied_server_header_wins():
    async def app(scope, receive, send):
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"server", b"mine")]}
        )
        await send({"type": "http.response.body", "body": b""})

    with serve(app) as server:
        response = httpx.get(server.url)
    assert response.headers.get_list("server") == ["mine"]


def test_content_length_mismatch_is_not_passed_off_as_complete():
    async def app(scope, receive, send):
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]}
        )
        await send({"type": "http.response.body", "body": b"toolong"})

    with serve(app) as server:
        data = server.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"toolong" not in data


def test_keep_alive_timeout_closes_idle_connection():
    with serve(hello, timeout_keep_alive=0.3) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        read_response(sock)
        started = time.monotonic()
        assert read_until_close(sock, timeout=3) == b""
        assert 0.2 < time.monotonic() - started < 2


def test_unix_socket(tmp_path):
    path = str(tmp_path / "aserve.sock")
    with serve(hello, uds=path):
        transport = httpx.HTTPTransport(uds=path)
        with httpx.Client(transport=transport) as client:
            assert client.get("http://localhost/").text == "Hello, world!"


def test_asgi2_app_is_detected():
    class ASGI2:
        def __init__(self, scope):
            self.scope = scope

        async def __call__(self, receive, send):
            await hello(self.scope, receive, send)

    with serve(ASGI2) as server:
        assert httpx.get(server.url).text == "Hello, world!"


def test_access_log_escapes_client_controlled_text(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="aserve.access")
    fmt = '{client} "{method} {full_path}" {status} {bytes} {duration_ms} {user_agent}'
    with serve(hello, access_log_format=fmt) as server:
        server.request(
            b'GET /a%0d%0aforged%1b[31m HTTP/1.1\r\nHost: x\r\nUser-Agent: say "hi"\r\n'
            b"Connection: close\r\n\r\n"
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "aserve.access"]
    assert len(lines) == 1
    line = lines[0]
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert '"GET /a\\x0d\\x0aforged\\x1b[31m" 200 13 ' in line
    assert line.endswith('say \\"hi\\"')


def test_inherited_file_descriptor():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    with serve(hello, fd=listener.detach()):  # the server owns the descriptor now
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "Hello, world!"
