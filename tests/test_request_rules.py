"""Strict HTTP/1.1 request parsing (RFC 9112) and request limits, each rule with the request
whole, cut in two at every byte, and one byte per read (in memory), plus real sockets."""

from __future__ import annotations

import socket

import pytest

from conftest import read_until_close, serve
from memory import cut, exchange, splits

HOST = b"Host: example.com\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"


def post(headers: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST /p HTTP/%s\r\n%s%s\r\n%s" % (version, HOST, headers, body)


def get(line_rest: bytes = b"/ HTTP/1.1", headers: bytes = HOST) -> bytes:
    return b"GET %s\r\n%s\r\n" % (line_rest, headers)


# (request, status): refused with this status, the app never called, then the connection closes.
REFUSED = {
    # Framing (RFC 9112, 6): the smuggling vectors.
    "content-length and transfer-encoding": (
        post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        400,
    ),
    "transfer-encoding and content-length": (
        post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),
        400,
    ),
    "conflicting content-length": (
        post(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd"),
        400,
    ),
    "repeated content-length": (post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"), 400),
    "content-length list": (post(b"Content-Length: 3, 3\r\n", b"abc"), 400),
    "signed content-length +": (post(b"Content-Length: +3\r\n", b"abc"), 400),
    "signed content-length -": (post(b"Content-Length: -3\r\n", b"abc"), 400),
    "hex content-length": (post(b"Content-Length: 0x3\r\n", b"abc"), 400),
    "empty content-length": (post(b"Content-Length: \r\n", b"abc"), 400),
    "oversized content-length": (post(b"Content-Length: 99999999999999999999999\r\n", b"a"), 400),
    "final coding not chunked": (post(b"Transfer-Encoding: gzip\r\n", b"abc"), 400),
    "chunked not last": (post(b"Transfer-Encoding: chunked, gzip\r\n", b"abc"), 400),
    "chunked twice": (post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"), 400),
    "unsupported coding before chunked": (
        post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),
        501,
    ),
    "deflate before chunked": (post(b"Transfer-Encoding: deflate,chunked\r\n", b"0\r\n\r\n"), 501),
    "deflate, chunked": (post(b"Transfer-Encoding: deflate, chunked\r\n", b"0\r\n\r\n"), 501),
    "gzip and chunked in two fields": (
        post(b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        501,
    ),
    "deflate and chunked in two fields": (
        post(b"Transfer-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        501,
    ),
    "chunked in HTTP/1.0": (post(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", b"1.0"), 400),
    "bad chunk size": (post(b"Transfer-Encoding: chunked\r\n", b"zz\r\n"), 400),
    # A chunk-size line ends with CRLF and nothing else (RFC 9112, 7.1).
    "bare CR after the chunk size": (post(CHUNKED, b"3\rabc\r\n0\r\n\r\n"), 400),
    "bare LF after the chunk size": (post(CHUNKED, b"3\nabc\r\n0\r\n\r\n"), 400),
    "space after the chunk size": (post(CHUNKED, b"3 \r\nabc\r\n0\r\n\r\n"), 400),
    "CR CR LF after the chunk size": (post(CHUNKED, b"3\r\r\nabc\r\n0\r\n\r\n"), 400),
    "a byte after the chunk size": (post(CHUNKED, b"3x\r\nabc\r\n0\r\n\r\n"), 400),
    "bare CR after a chunk extension": (post(CHUNKED, b"3;a=b\rabc\r\n0\r\n\r\n"), 400),
    "bare CR inside a chunk extension": (post(CHUNKED, b"3;a=b\rc\r\nabc\r\n0\r\n\r\n"), 400),
    "bare CR after the chunk data": (post(CHUNKED, b"3\r\nabc\r0\r\n\r\n"), 400),
    "bare CR after the last chunk": (post(CHUNKED, b"3\r\nabc\r\n0\r\r\n"), 400),
    # Field syntax (RFC 9112, 5).
    "obs-fold": (get(headers=HOST + b"X: a\r\n b\r\n"), 400),
    "whitespace before colon": (get(headers=HOST + b"X : a\r\n"), 400),
    "bare LF ends the request line": (b"GET / HTTP/1.1\n" + HOST + b"\r\n", 400),
    "bare LF ends a field": (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
    "bare CR in a field": (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
    "NUL in a value": (get(headers=HOST + b"X: a\x00b\r\n"), 400),
    "control character in a value": (get(headers=HOST + b"X: a\x01b\r\n"), 400),
    "DEL in a value": (get(headers=HOST + b"X: a\x7fb\r\n"), 400),
    "control character in a name": (get(headers=HOST + b"X\x01: b\r\n"), 400),
    "space in a name": (get(headers=HOST + b"X Y: b\r\n"), 400),
    "empty name": (get(headers=HOST + b": b\r\n"), 400),
    # Request line (RFC 9112, 3).
    "unknown method": (b"FOO / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "method in lowercase": (b"get / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "HTTP/0.9 request line": (b"GET /\r\n\r\n", 505),
    "HTTP/2.0 request line": (get(b"/ HTTP/2.0"), 505),
    "HTTP/1.2": (get(b"/ HTTP/1.2"), 505),
    "HTTP/0.9 version": (get(b"/ HTTP/0.9"), 505),
    "version in lowercase": (get(b"/ http/1.1"), 400),
    "space after version": (get(b"/ HTTP/1.1 "), 400),
    # Single spaces only between method, target and version (RFC 9112, 3).
    "two spaces after the method": (get(b" / HTTP/1.1"), 400),
    "two spaces before the version": (get(b"/  HTTP/1.1"), 400),
    "spaces around the target": (get(b"   /a   HTTP/1.1"), 400),
    "control character in target": (get(b"/a\x01b HTTP/1.1"), 400),
    "non-ASCII target": (get(b"/caf\xc3\xa9 HTTP/1.1"), 400),
    "fragment in target": (get(b"/a#b HTTP/1.1"), 400),
    "asterisk without OPTIONS": (get(b"* HTTP/1.1"), 400),
    "authority form without CONNECT": (get(b"example.com:80 HTTP/1.1"), 400),
    "CONNECT with an origin form": (b"CONNECT / HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "CONNECT (not served)": (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        501,
    ),
    "absolute form, not http": (get(b"ftp://example.com/ HTTP/1.1"), 400),
    # Host (RFC 9112, 3.2).
    "missing Host": (get(headers=b"X: y\r\n"), 400),
    "two Host fields": (get(headers=HOST + HOST), 400),
    "Host with a path": (get(headers=b"Host: example.com/a\r\n"), 400),
    "Host with userinfo": (get(headers=b"Host: user@example.com\r\n"), 400),
    "Host with a space": (get(headers=b"Host: exa mple.com\r\n"), 400),
    "Host with a bad port": (get(headers=b"Host: example.com:8x\r\n"), 400),
}

# (request, path): served once, the connection stays open.
SERVED = {
    "origin form": (get(b"/a?b=1 HTTP/1.1"), "/a"),
    "HTTP/1.0 without Host": (b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "/old"),
    "Host with a port": (get(headers=b"Host: example.com:8080\r\n"), "/"),
    "IPv6 Host": (get(headers=b"Host: [::1]:8000\r\n"), "/"),
    "empty Host": (get(headers=b"Host:\r\n"), "/"),
    "asterisk form for OPTIONS": (b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n", "*"),
    "absolute form": (get(b"http://example.com/abs?q HTTP/1.1"), "/abs"),
    "blank line before the request line": (b"\r\n" + get(), "/"),
    "chunked with extensions and trailers": (
        post(b"Transfer-Encoding: chunked\r\n", b"3;ext=1\r\nabc\r\n0\r\nT: v\r\n\r\n"),
        "/p",
    ),
    "chunked, any case": (post(b"Transfer-Encoding: Chunked\r\n", b"0\r\n\r\n"), "/p"),
}


# Errors in a body: the app may have been called with the head; it still gets no answer out.
IN_BODY = {"bad chunk size", "chunked body over the body limit", "too many trailer fields"}
IN_BODY |= {"trailer field too large"}
IN_BODY |= {name for name in REFUSED if "chunk" in name and ("bare" in name or "after" in name)}


@pytest.mark.parametrize("name", list(REFUSED))
async def test_refused_with_one_answer_in_every_split(name):
    request, status = REFUSED[name]
    for pieces in splits(request):
        outcome = await exchange(pieces)
        assert outcome.statuses == [status], (pieces, outcome.data)
        if name not in IN_BODY:
            assert outcome.calls == [], pieces
        assert outcome.closed, pieces
        assert b"connection: close\r\n" in outcome.data
        assert b"Invalid HTTP request: " in outcome.data


async def test_the_http2_preface_without_http2_is_refused_in_every_split():
    for pieces in splits(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        outcome = await exchange(pieces, http2=False)
        assert outcome.statuses == [505], (pieces, outcome.data)
        assert outcome.closed, pieces


async def test_the_http2_preface_starts_http2_in_every_split():
    """(With HTTP/2 on, the default: tests/test_http2.py has the rest.)"""
    settings_frame = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    for pieces in splits(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings_frame):
        outcome = await exchange(pieces)
        # Our SETTINGS, then the acknowledgement of the client's: HTTP/2, not an HTTP/1.1 answer.
        assert outcome.data[3:5] == b"\x04\x00", (pieces, outcome.data)
        assert b"\x00\x00\x00\x04\x01\x00\x00\x00\x00" in outcome.data, pieces
        assert not outcome.data.startswith(b"HTTP/1.1"), pieces


@pytest.mark.parametrize("name", list(SERVED))
async def test_served_once_in_every_split(name):
    request, path = SERVED[name]
    for pieces in splits(request):
        outcome = await exchange(pieces)
        assert outcome.statuses == [200], (pieces, outcome.data)
        assert [scope["path"] for scope in outcome.calls] == [path]
        assert not outcome.closed, pieces


@pytest.mark.parametrize(
    "name",
    [
        "missing Host",
        "unsupported coding before chunked",
        "obs-fold",
        "two spaces before the version",
    ],
)
async def test_a_valid_request_before_a_refused_one_is_answered_first(name):
    bad, status = REFUSED[name]
    good = get(b"/first HTTP/1.1")
    for pieces in splits(good + bad):
        outcome = await exchange(pieces)
        assert outcome.statuses == [200, status], (pieces, outcome.data)
        assert [scope["path"] for scope in outcome.calls] == ["/first"]
        assert outcome.closed


async def test_nothing_after_an_error_is_served():
    smuggled = get(b"/smuggled HTTP/1.1")
    for prefix in (REFUSED["content-length and transfer-encoding"][0], b"GET /\r\n\r\n"):
        for pieces in splits(prefix + smuggled):
            outcome = await exchange(pieces)
            assert len(outcome.statuses) == 1 and outcome.calls == [], (pieces, outcome.data)
            assert b"/smuggled" not in outcome.data


# Requests one after the other in a read, as a client that pipelines sends them: one without a
# body, a Content-Length body that ends in a byte other than LF, a blank line, a chunked body
# with an extension and a trailer, then a target as long as a short request. Where one ends and
# the next begins is worked out from the bytes (httptools does not say): each later request
# line is checked where it really is.
PIPELINE = (
    get(b"/a HTTP/1.1")
    + post(b"Content-Length: 5\r\n", b"12345")
    + b"\r\n"
    + post(CHUNKED, b"3;x=1\r\nabc\r\n0\r\nT: v\r\n\r\n")
    + get(b"/" + b"b" * 40 + b"?q=1 HTTP/1.1")
)


async def test_pipelined_requests_are_served_in_every_split():
    for pieces in splits(PIPELINE):
        outcome = await exchange(pieces)
        assert outcome.statuses == [200, 200, 200, 200], (pieces, outcome.data[-300:])
        assert outcome.answered == ["/a", "/p", "/p", "/" + "b" * 40], pieces
        assert outcome.bodies == [b"", b"12345", b"abc", b""]
        assert not outcome.closed


@pytest.mark.parametrize(
    "before",
    [
        get(b"/a HTTP/1.1"),
        post(b"Content-Length: 5\r\n", b"12345"),
        post(CHUNKED, b"3;x=1\r\nabc\r\n0\r\n\r\n") + b"\r\n",
    ],
    ids=["after-a-bodiless-request", "after-a-body", "after-chunks-and-a-blank-line"],
)
async def test_a_request_line_with_two_spaces_is_refused_behind_others(before):
    for pieces in splits(before + get(b"/b  HTTP/1.1")):
        outcome = await exchange(pieces)
        assert outcome.statuses == [200, 400], (pieces, outcome.data[-300:])
        assert b"more than one space in the request line" in outcome.data
        assert outcome.closed


async def test_trailers_are_not_headers_of_the_next_request():
    chunked = post(
        b"Transfer-Encoding: chunked\r\n", b"1\r\na\r\n0\r\nHost: evil\r\nX-T: 1\r\n\r\n"
    )
    for pieces in splits(chunked + get(b"/next HTTP/1.1")):
        outcome = await exchange(pieces)
        assert outcome.statuses == [200, 200], (pieces, outcome.data)
        assert outcome.bodies == [b"a", b""]
        next_headers = dict(outcome.calls[1]["headers"])
        assert next_headers == {b"host": b"example.com"}


async def test_an_upgrade_not_performed_never_parses_its_body_as_a_request():
    upgrade = (
        b"POST /up HTTP/1.1\r\n" + HOST + b"Connection: upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: 39\r\n\r\n" + get(b"/smuggled HTTP/1.1")
    )
    for pieces in splits(upgrade):
        outcome = await exchange(pieces)
        assert [scope["path"] for scope in outcome.calls] == ["/up"], pieces
        assert outcome.statuses == [200]
        assert outcome.closed


# -- limits --------------------------------------------------------------------------------

SMALL = {
    "limit_request_line": 40,
    "limit_request_field_size": 40,
    "limit_request_fields": 4,
    "limit_request_head": 120,
    "limit_request_body": 10,
}


LIMITED_REFUSED = {
    # The request line is `GET <target> HTTP/1.1\r\n`: 15 bytes around the target.
    "request line one byte too long": (get(b"/" + b"a" * 25 + b" HTTP/1.1"), 414),
    "request target longer than the line": (get(b"/" + b"a" * 60 + b" HTTP/1.1"), 414),
    "field one byte too long": (get(headers=HOST + b"X: " + b"v" * 36 + b"\r\n"), 431),
    "field without spaces one byte too long": (
        get(headers=HOST + b"X:" + b"v" * 36 + b"\r\n"),
        431,
    ),
    "too many fields": (get(headers=HOST + b"A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n"), 431),
    "head one byte too large": (
        get(
            headers=HOST
            + b"A: "
            + b"1" * 30
            + b"\r\nB: "
            + b"2" * 30
            + b"\r\nC: "
            + b"3" * 9
            + b"\r\n"
        ),
        431,
    ),
    "content-length over the body limit": (post(b"Content-Length: 11\r\n", b"x" * 11), 413),
    "chunked body over the body limit": (
        post(b"Transfer-Encoding: chunked\r\n", b"6\r\nxxxxxx\r\n5\r\nxxxxx\r\n0\r\n\r\n"),
        413,
    ),
    "too many trailer fields": (
        post(
            b"Transfer-Encoding: chunked\r\n", b"0\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n"
        ),
        431,
    ),
    "trailer field too large": (
        post(b"Transfer-Encoding: chunked\r\n", b"0\r\nT: " + b"v" * 40 + b"\r\n\r\n"),
        431,
    ),
    # Between two pieces of chunk data (CRLF, the size line and its extensions), at most
    # --limit-request-head plus --limit-request-field-size: 160 bytes here.
    "chunk extension one byte over the limit": (
        post(CHUNKED, b"1;e=" + b"x" * 155 + b"\r\na\r\n0\r\n\r\n"),
        400,
    ),
    "later chunk extension one byte over the limit": (
        post(CHUNKED, b"1\r\na\r\n1;e=" + b"x" * 153 + b"\r\nb\r\n0\r\n\r\n"),
        400,
    ),
}
IN_BODY |= {
    "chunk extension one byte over the limit",
    "later chunk extension one byte over the limit",
}

LIMITED_SERVED = {
    "request line at the limit": get(b"/" + b"a" * 24 + b" HTTP/1.1"),
    "field at the limit": get(headers=HOST + b"X: " + b"v" * 35 + b"\r\n"),
    "fields at the limit": get(headers=HOST + b"A: 1\r\nB: 2\r\nC: 3\r\n"),
    "head at the limit": get(
        headers=HOST + b"A: " + b"1" * 30 + b"\r\nB: " + b"2" * 30 + b"\r\nC: " + b"3" * 8 + b"\r\n"
    ),
    "body at the limit": post(b"Content-Length: 10\r\n", b"x" * 10),
    "chunked body at the limit": post(
        b"Transfer-Encoding: chunked\r\n", b"5\r\nxxxxx\r\n5\r\nxxxxx\r\n0\r\n\r\n"
    ),
    "chunk extension at the limit": post(CHUNKED, b"1;e=" + b"x" * 154 + b"\r\na\r\n0\r\n\r\n"),
    "later chunk extension at the limit": post(
        CHUNKED, b"1\r\na\r\n1;e=" + b"x" * 152 + b"\r\nb\r\n0\r\n\r\n"
    ),
}


def test_limit_cases_are_on_the_boundary():
    assert len(LIMITED_SERVED["head at the limit"]) == SMALL["limit_request_head"]
    assert len(LIMITED_REFUSED["head one byte too large"][0]) == SMALL["limit_request_head"] + 1
    assert len(b"GET /" + b"a" * 24 + b" HTTP/1.1\r\n") == SMALL["limit_request_line"]


@pytest.mark.parametrize("name", list(LIMITED_REFUSED))
async def test_limit_refused_in_every_split(name):
    request, status = LIMITED_REFUSED[name]
    for pieces in splits(request):
        outcome = await exchange(pieces, **SMALL)
        assert outcome.statuses == [status], (pieces, outcome.data)
        if name not in IN_BODY:
            assert outcome.calls == [], pieces  # refused before the app runs
        assert outcome.closed


@pytest.mark.parametrize("name", list(LIMITED_SERVED))
async def test_limit_not_reached_is_served_in_every_split(name):
    for pieces in splits(LIMITED_SERVED[name]):
        outcome = await exchange(pieces, **SMALL)
        assert outcome.statuses == [200], (pieces, outcome.data)
        assert not outcome.closed


async def test_a_header_line_in_progress_is_bounded_before_it_completes():
    """httptools hands a field over only once it is complete: a line that never ends must
    still be refused once the bytes held pass what a whole head may be."""
    start = b"GET / HTTP/1.1\r\n" + HOST + b"X: "
    pieces = [start] + [b"v" * 10] * 100
    outcome = await exchange(pieces, **SMALL)
    assert outcome.statuses == [431]
    assert outcome.closed


async def test_a_chunk_extension_over_the_limit_is_refused_in_one_read():
    # 200 KiB of extension, default limits (64 KiB + 8 KiB): refused whole and however cut.
    request = post(CHUNKED, b"1;e=" + b"x" * 200 * 1024 + b"\r\na\r\n0\r\n\r\n")
    for pieces in ([request], cut(request, [120]), cut(request, [len(request) - 30])):
        outcome = await exchange(pieces)
        assert outcome.statuses == [400], pieces[0][:100]
        assert b"chunk extensions or trailers too large" in outcome.data
        assert outcome.bodies == []


async def test_chunk_extensions_are_bounded():
    head = post(b"Transfer-Encoding: chunked\r\n")
    pieces = [head, b"1;e="] + [b"x" * 10] * 100
    outcome = await exchange(pieces, **SMALL)
    assert outcome.statuses == [400]
    assert b"chunk extensions or trailers too large" in outcome.data


async def test_chunked_body_over_the_limit_after_the_response_started_closes():
    async def streaming(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            await send({"type": "http.response.body", "body": b".", "more_body": True})

    head = post(b"Transfer-Encoding: chunked\r\n")
    outcome = await exchange([head, b"6\r\nxxxxxx\r\n", b"6\r\nxxxxxx\r\n"], streaming, **SMALL)
    assert outcome.statuses == [200]  # no second answer: the 413 would follow a 200
    assert outcome.closed


# -- real sockets ----------------------------------------------------------------------------


async def ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def status_of(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data
    return int(data[9:12])


def send_byte_by_byte(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            try:
                sock.sendall(data[i : i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
        return read_until_close(sock, 10)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (get(headers=b"X: y\r\n"), 400),
        (get(b"/ HTTP/2.0"), 505),
        (b"GET /\r\n\r\n", 505),
        (post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), 501),
        (get(b"/" + b"a" * 70_000 + b" HTTP/1.1"), 414),
        (get(headers=HOST + b"X: " + b"v" * 1_048_576 + b"\r\n"), 431),
        (get(headers=HOST + b"".join(b"X-%d: 1\r\n" % i for i in range(2000))), 431),
    ],
)
def test_refused_over_a_socket(request_bytes, status):
    with serve(ok) as server:
        data = server.request(request_bytes, timeout=10)
    assert status_of(data) == status
    assert data.count(b"HTTP/1.1 ") == 1


def test_same_answer_byte_by_byte_over_a_socket():
    requests = [
        (get(headers=HOST + HOST), 400),
        (get(headers=HOST + b"X: " + b"v" * 300 + b"\r\n"), 431),
        (post(b"Content-Length: 11\r\n", b"x" * 11), 413),
        (get(b"/" + b"a" * 100 + b" HTTP/1.1"), 414),
    ]
    limits = {**SMALL, "limit_request_field_size": 200, "limit_request_head": 400}
    with serve(ok, **limits) as server:
        for request, status in requests:
            assert status_of(server.request(request)) == status
            assert status_of(send_byte_by_byte(server.port, request)) == status
