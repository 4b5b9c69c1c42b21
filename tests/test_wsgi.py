"""WSGI apps (PEP 3333) through real servers: environ, streamed bodies both ways, start_response,
close(), the thread pool, and the server's limits, deadlines, logs and metrics applied to them."""

import asyncio
import functools
import json
import logging
import re
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from aserve.config import Config, ConfigError
from aserve.importer import detect_interface, load_app
from aserve.wsgi import WSGIAdapter
from conftest import read_response, read_until_close, serve
from processes import wait_for

DEADLINE = 10.0


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def environ_echo(environ, start_response):
    """The environ as JSON (what JSON can hold), after reading the whole body."""
    body = environ["wsgi.input"].read()
    shown = {
        key: value
        for key, value in environ.items()
        if isinstance(value, str | bool | int | tuple) and not key.startswith("wsgi.input")
    }
    shown["wsgi.input_terminated"] = environ["wsgi.input_terminated"]
    shown["body"] = body.decode("latin-1")
    shown["errors_has_write"] = callable(getattr(environ["wsgi.errors"], "write", None))
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(shown).encode()]


def head_and_body(response: bytes) -> tuple[bytes, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body


def dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out += body[:size]
        body = body[size + 2 :]


# -- environ ---------------------------------------------------------------------------------


def test_environ_is_complete_and_exact():
    # --root-path: a proxy in front took "/mount" off; the scope's path has it back, and WSGI
    # splits it into SCRIPT_NAME and PATH_INFO.
    with serve(environ_echo, interface="wsgi", root_path="/mount") as server:
        request = (
            b"POST /caf%C3%A9/x%FFy%2Fz?q=1&r=%20 HTTP/1.1\r\n"
            b"Host: example.com:8080\r\n"
            b"Content-Type: text/plain\r\n"
            b"Content-Length: 5\r\n"
            b"Accept: a\r\nAccept: b\r\n"
            b"Cookie: a=1\r\nCookie: b=2\r\n"
            b"X_Forwarded_For: 6.6.6.6\r\n"  # an underscore: dropped, never a spoof
            b"X-Custom: \xe9t\xe9\r\n"
            b"Connection: close\r\n\r\nhello"
        )
        with server.connect() as sock:
            sock.sendall(request)
            response = read_until_close(sock)
        head, body = head_and_body(response)
        environ = json.loads(body)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert environ["REQUEST_METHOD"] == "POST"
        assert environ["SCRIPT_NAME"] == "/mount"
        # PEP 3333: the path percent-decoded to bytes, each byte one latin-1 character.
        assert environ["PATH_INFO"] == "/caf\xc3\xa9/x\xffy/z"
        assert environ["QUERY_STRING"] == "q=1&r=%20"
        assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
        assert environ["SERVER_NAME"] == "127.0.0.1"
        assert environ["SERVER_PORT"] == str(server.port)
        assert environ["REMOTE_ADDR"] == "127.0.0.1"
        assert environ["REMOTE_PORT"].isdigit()
        assert environ["CONTENT_TYPE"] == "text/plain"
        assert environ["CONTENT_LENGTH"] == "5"
        assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ
        assert environ["HTTP_HOST"] == "example.com:8080"
        assert environ["HTTP_ACCEPT"] == "a, b"
        assert environ["HTTP_COOKIE"] == "a=1; b=2"
        assert "HTTP_X_FORWARDED_FOR" not in environ
        assert environ["HTTP_X_CUSTOM"] == "\xe9t\xe9"
        assert environ["wsgi.version"] == [1, 0]
        assert environ["wsgi.url_scheme"] == "http"
        assert environ["wsgi.multithread"] is True
        assert environ["wsgi.multiprocess"] is False
        assert environ["wsgi.run_once"] is False
        assert environ["wsgi.input_terminated"] is True
        assert environ["errors_has_write"] is True
        assert environ["body"] == "hello"


def test_environ_after_trusted_proxy_headers():
    """REMOTE_ADDR and wsgi.url_scheme are the client's as the trusted proxy says."""
    forwarded = {"X-Forwarded-For": "203.0.113.9, 127.0.0.1", "X-Forwarded-Proto": "https"}
    with (
        serve(environ_echo, interface="wsgi", forwarded_allow_ips="127.0.0.1") as server,
        server.client() as client,
    ):
        proxied = client.get("/", headers=forwarded).json()
    assert proxied["REMOTE_ADDR"] == "203.0.113.9"  # the first address no trusted proxy has
    assert proxied["wsgi.url_scheme"] == "https"
    with (
        serve(environ_echo, interface="wsgi", forwarded_allow_ips="10.0.0.1") as server,
        server.client() as client,
    ):
        direct = client.get("/", headers=forwarded).json()
    assert direct["REMOTE_ADDR"] == "127.0.0.1"  # an untrusted peer's headers change nothing
    assert direct["wsgi.url_scheme"] == "http"


def test_environ_on_a_unix_socket(aserve_unix_server):
    server = aserve_unix_server(environ_echo, interface="wsgi", lifespan="off")
    with server.client() as client:
        environ = client.get("/", headers={"Host": "app.example:81"}).json()
        no_port = client.get("/", headers={"Host": "app.example"}).json()
    assert environ["SERVER_NAME"] == "app.example" and environ["SERVER_PORT"] == "81"
    assert no_port["SERVER_NAME"] == "app.example" and no_port["SERVER_PORT"] == "80"
    assert "REMOTE_ADDR" not in environ  # a Unix peer has no address


def test_wsgi_settings_reach_the_environ():
    single = load_app(Config(environ_echo, interface="wsgi", wsgi_threads=1, workers=2))
    assert isinstance(single, WSGIAdapter)
    assert single.pool.size == 1
    with serve(single) as server, httpx.Client(base_url=server.url) as client:
        environ = client.get("/").json()
    assert environ["wsgi.multithread"] is False  # one thread: never two calls at once
    assert environ["wsgi.multiprocess"] is True
    with pytest.raises(ConfigError, match="wsgi_threads must be a positive integer"):
        Config(hello, wsgi_threads=0)


# -- request bodies --------------------------------------------------------------------------


class Recorder:
    """What a WSGI app saw, with events a test can wait on."""

    def __init__(self):
        self.events: dict[str, threading.Event] = {}
        self.values: dict[str, object] = {}

    def event(self, name):
        return self.events.setdefault(name, threading.Event())

    def wait(self, name, timeout=DEADLINE):
        assert self.event(name).wait(timeout), f"the app never got to {name!r}"


def test_request_body_streams_to_wsgi_input_as_it_arrives():
    """The app reads the first piece while the client has not sent the last: nothing waits
    for the whole body."""
    seen = Recorder()

    def upload(environ, start_response):
        stream = environ["wsgi.input"]
        first = stream.read(5)
        seen.values["first"] = first
        seen.event("first").set()
        rest = stream.read()
        start_response("200 OK", [])
        return [b"%s|%s" % (first, rest)]

    for framing in (b"Content-Length: 10\r\n", b"Transfer-Encoding: chunked\r\n"):
        seen.events.clear()
        with serve(upload, interface="wsgi") as server, server.connect() as sock:
            sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n")
            chunked = b"chunked" in framing
            sock.sendall(b"5\r\nfirst\r\n" if chunked else b"first")
            seen.wait("first")  # the app has it, and the client has not sent the rest yet
            assert seen.values["first"] == b"first"
            sock.sendall(b"5\r\nsecnd\r\n0\r\n\r\n" if chunked else b"secnd")
            response = read_response(sock)
        assert response.endswith(b"first|secnd"), response


def test_wsgi_input_file_methods():
    def lines(environ, start_response):
        stream = environ["wsgi.input"]
        first = stream.readline()
        limited = stream.readline(3)
        rest_of_line = stream.readline()
        iterated = list(stream)
        start_response("200 OK", [])
        answer = [first, limited, rest_of_line, *iterated, b"<eof>" + stream.read()]
        return [json.dumps([part.decode() for part in answer]).encode()]

    def readlines(environ, start_response):
        got = environ["wsgi.input"].readlines()
        start_response("200 OK", [])
        return [str(len(got)).encode()]

    body = b"one\nabcdef\n" + b"x" * 200_000 + b"\nlast"
    with serve(lines, interface="wsgi") as server, server.client() as client:
        parts = client.post("/", content=iter([body[:7], body[7:100_000], body[100_000:]])).json()
    assert parts[0] == "one\n"
    assert parts[1] == "abc"
    assert parts[2] == "def\n"
    assert parts[3] == "x" * 200_000 + "\n"
    assert parts[4] == "last"
    assert parts[5] == "<eof>"
    with serve(readlines, interface="wsgi") as server, server.client() as client:
        assert client.post("/", content=b"a\nb\nc").text == "3"
        assert client.get("/").text == "0"  # no body: end of file at once


def test_expect_100_continue_is_answered_when_the_app_first_reads():
    """The client waits for 100 Continue before it sends the body: it comes when the app
    reads wsgi.input, not before; an app that never reads answers without it."""
    seen = Recorder()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/read":
            seen.event("called").set()
            seen.wait("go")
            body = environ["wsgi.input"].read()
        else:
            body = b"not read"
        start_response("200 OK", [])
        return [body]

    head = b"HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
    with serve(app, interface="wsgi") as server:
        with server.connect() as sock:
            sock.sendall(b"POST /read " + head + b"\r\n")
            seen.wait("called")
            sock.settimeout(0.3)
            with pytest.raises(TimeoutError):
                sock.recv(1)  # the app has not read yet: no 100 Continue
            seen.event("go").set()
            sock.settimeout(DEADLINE)
            interim = b""
            while b"\r\n\r\n" not in interim:
                interim += sock.recv(65536)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(b"hello")
            read = read_response(sock, DEADLINE)
        with server.connect() as sock:
            sock.sendall(b"POST /ignore " + head + b"Connection: close\r\n\r\n")
            ignored = read_until_close(sock, DEADLINE)
    assert read.startswith(b"HTTP/1.1 200 OK\r\n") and read.endswith(b"\r\n\r\nhello")
    assert ignored.startswith(b"HTTP/1.1 200 OK\r\n") and ignored.endswith(b"not read")


def test_an_app_that_does_not_read_holds_the_client_back():
    """Flow control still works: the server stops reading a body nobody reads, instead of
    buffering it. The client can only get so far (kernel buffers) of a 64 MiB body."""
    seen = Recorder()
    size = 64 * 1024 * 1024

    def slow_reader(environ, start_response):
        stream = environ["wsgi.input"]
        first = stream.read(1024)
        seen.event("first").set()
        seen.wait("go")
        total = len(first)
        while True:
            data = stream.read(1 << 20)
            if not data:
                break
            total += len(data)
        start_response("200 OK", [])
        return [str(total).encode()]

    with serve(slow_reader, interface="wsgi") as server, server.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        sock.setblocking(False)
        piece = b"x" * 65536
        sent = 0
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 0.5 and sent < size:
            try:
                sent += sock.send(piece[: size - sent])
                quiet_since = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
        seen.wait("first")
        assert sent < size // 2, f"the client sent {sent} bytes nobody read"
        seen.event("go").set()
        sock.setblocking(True)
        sock.settimeout(DEADLINE)
        sock.sendall(piece[:0] + b"x" * (size - sent))
        assert read_response(sock, DEADLINE).endswith(b"\r\n\r\n%d" % size)


# -- responses -------------------------------------------------------------------------------


def test_a_list_of_one_gets_a_content_length_and_a_generator_is_chunked():
    def generator(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b""
        yield b"a"
        yield b"bc"

    with serve(hello, interface="wsgi") as server, server.client() as client:
        one = client.get("/")
    assert one.text == "hello" and one.headers["content-length"] == "5"
    assert one.headers["content-type"] == "text/plain"
    with serve(generator, interface="wsgi") as server, server.client() as client:
        many = client.get("/")
    assert many.text == "abc" and many.headers["transfer-encoding"] == "chunked"


def test_the_reason_phrase_is_the_servers():
    """A WSGI status line's text is the app's choice; what goes on the wire is the server's
    reason phrase for the code, so an app cannot put odd text in the status line."""

    def app(environ, start_response):
        start_response(environ["QUERY_STRING"].replace("+", " "), [])
        return [b"x"]

    with serve(app, interface="wsgi") as server:
        close = b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        fine = server.request(b"GET /?200+Fine" + close)
        gone = server.request(b"GET /?404+Gone+Fishing" + close)
    assert fine.startswith(b"HTTP/1.1 200 OK\r\n"), fine
    assert gone.startswith(b"HTTP/1.1 404 Not Found\r\n"), gone


def test_headers_go_out_with_the_first_non_empty_chunk():
    seen = Recorder()

    def slow_start(environ, start_response):
        start_response("201 Created", [("X-A", "1")])
        yield b""  # not yet: an empty string sends nothing, headers included
        seen.event("empty").set()
        seen.wait("go")
        yield b"body"

    with serve(slow_start, interface="wsgi") as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        seen.wait("empty")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        seen.event("go").set()
        sock.settimeout(DEADLINE)
        response = b""
        while not response.endswith(b"0\r\n\r\n"):
            response += sock.recv(65536)
    head, body = head_and_body(response)
    assert head.startswith(b"HTTP/1.1 201 Created\r\n") and b"X-A: 1" in head
    assert dechunk(body) == b"body"


def test_content_length_reached_ends_the_response_and_the_iteration():
    """PEP 3333: the server stops iterating once Content-Length bytes are out."""
    seen = Recorder()

    def declared(environ, start_response):
        start_response("200 OK", [("Content-Length", "4")])
        try:
            yield b"ab"
            yield b"cd"
            seen.values["iterated past"] = True
            yield b"never"
        finally:
            seen.event("closed").set()

    with serve(declared, interface="wsgi") as server, server.client() as client:
        response = client.get("/")
        seen.wait("closed")
    assert response.content == b"abcd"
    assert "iterated past" not in seen.values


def test_write_callable_sends_at_once():
    seen = Recorder()

    def writer(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"")  # the headers go now, even for an empty write
        seen.event("headers").set()
        seen.wait("go")
        write(b"written ")
        write(bytearray(b"then "))
        return [b"returned"]

    with serve(writer, interface="wsgi") as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        seen.wait("headers")
        sock.settimeout(DEADLINE)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"transfer-encoding: chunked" in head
        seen.event("go").set()
        body = head.partition(b"\r\n\r\n")[2]
        while not body.endswith(b"0\r\n\r\n"):
            body += sock.recv(65536)
    assert dechunk(body) == b"written then returned"


def test_exc_info_replaces_a_response_not_yet_sent(caplog):
    def recovers(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("while rendering")
        except ValueError:
            start_response("500 Internal Server Error", [("X-Error", "yes")], sys.exc_info())
        return [b"custom error page"]

    def twice(environ, start_response):
        start_response("200 OK", [])
        start_response("404 Not Found", [])
        return [b"x"]

    caplog.set_level(logging.ERROR, logger="aserve.error")
    with serve(recovers, interface="wsgi") as server, server.client() as client:
        response = client.get("/")
    assert response.status_code == 500
    assert response.headers["x-error"] == "yes"
    assert response.text == "custom error page"
    with serve(twice, interface="wsgi") as server, server.client() as client:
        response = client.get("/")
    assert response.status_code == 500 and response.text == "Internal Server Error"
    assert "start_response was called a second time without exc_info" in caplog.text


def test_exc_info_after_the_headers_were_sent_reraises_and_cuts_the_response(caplog):
    seen = Recorder()

    def fails_mid_stream(environ, start_response):
        start_response("200 OK", [])
        yield b"first part"
        try:
            raise KeyError("lost")
        except KeyError:
            try:
                start_response("500 Internal Server Error", [], sys.exc_info())
            except KeyError:
                seen.event("reraised").set()
                raise

    caplog.set_level(logging.ERROR, logger="aserve.error")
    with serve(fails_mid_stream, interface="wsgi") as server:
        response = server.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        seen.wait("reraised")
    head, body = head_and_body(response)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"first part" in body and not body.endswith(b"0\r\n\r\n")  # cut: no last chunk
    assert "KeyError: 'lost'" in caplog.text


def test_app_errors_are_500_before_the_response_and_logged(caplog):
    def raises(environ, start_response):
        raise RuntimeError("broken view")

    def no_start(environ, start_response):
        return [b"body without a status"]

    def bad_status(environ, start_response):
        start_response(200, [])
        return [b""]

    def text_body(environ, start_response):
        start_response("200 OK", [])
        return ["not bytes"]

    caplog.set_level(logging.ERROR, logger="aserve.error")
    for app, message in [
        (raises, "RuntimeError: broken view"),
        (no_start, "returned a body without calling start_response"),
        (bad_status, "a WSGI status must be a str such as '200 OK', got 200"),
        (text_body, "a WSGI response must be made of bytes, got str"),
    ]:
        with serve(app, interface="wsgi") as server, server.client() as client:
            response = client.get("/")
            assert response.status_code == 500, app
            assert client.get("/").status_code == 500  # and the server still serves
        assert message in caplog.text


def test_invalid_headers_are_refused_by_the_server(caplog):
    closed = threading.Event()

    class Response:
        def __iter__(self):
            yield b"x"

        def close(self):
            closed.set()

    def injects(environ, start_response):
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: b")])
        return Response()

    caplog.set_level(logging.ERROR, logger="aserve.error")
    with serve(injects, interface="wsgi") as server, server.client() as client:
        response = client.get("/")
        assert closed.wait(DEADLINE)
    assert response.status_code == 500
    assert "set-cookie" not in response.headers
    assert "control character" in caplog.text


def test_slow_reader_streaming_memory_is_bounded_and_disconnect_closes():
    """The thread waits while send() waits: with the client not reading, the app stops being
    asked for chunks; when the client leaves, iteration stops and close() is called."""
    seen = Recorder()
    produced = [0]
    chunk = b"x" * 65536

    class Endless:
        def __iter__(self):
            for _ in range(4096):  # 256 MiB if nothing held it back
                produced[0] += 1
                yield chunk

        def close(self):
            seen.values["closed on"] = threading.current_thread().name
            seen.event("closed").set()

    def stream(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Endless()

    with serve(stream, interface="wsgi") as server:
        sock = server.connect()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")

        def settled():  # no new chunk for a while: the thread waits for send()
            before = produced[0]
            time.sleep(0.3)
            return produced[0] == before

        wait_for(settled, "the app to be held back")
        held = produced[0]
        # Kernel buffers on both sides plus the transport's and the thread's 64 KiB windows.
        assert held * len(chunk) < 32 * 1024 * 1024, held
        sock.close()
        seen.wait("closed")
    assert produced[0] < 4096  # the iteration stopped: the client left
    assert seen.values["closed on"].startswith("aserve-wsgi-")


def test_http2_flow_control_holds_a_wsgi_response_back():
    """Over HTTP/2 the brake is the stream's window: a client that grants no more window
    holds the app's thread back (a bounded amount produced), and granting it lets the whole
    response through."""
    from test_http2 import connect

    produced = [0]
    chunk = b"x" * 16384
    chunks = 256  # 4 MiB if nothing held it back

    def app(environ, start_response):
        start_response("200 OK", [])
        for _ in range(chunks):
            produced[0] += 1
            yield chunk

    with serve(app, interface="wsgi") as server:
        client = connect(server, auto_window=False)
        try:
            stream = client.request("/")
            client.wait(lambda: len(client.responses[stream].body) >= 65535)

            def settled():  # no new chunk for a while: the thread waits for send()
                before = produced[0]
                time.sleep(0.3)
                return produced[0] == before

            wait_for(settled, "the app to be held back")
            held = produced[0]
            received = len(client.responses[stream].body)
            client.conn.increment_flow_control_window(8 << 20)  # then the whole window
            client.conn.increment_flow_control_window(8 << 20, stream)
            client.flush()
            response = client.response(stream, DEADLINE)
        finally:
            client.close()
    assert received == 65535  # the initial window, and not a byte more
    # The window, the transport's buffer and the thread's 64 KiB: far from the 4 MiB.
    assert held * len(chunk) < 1024 * 1024, held
    assert len(response.body) == chunks * len(chunk) and produced[0] == chunks


def test_close_is_called_when_the_client_leaves_while_the_app_works():
    """A client that leaves while the app works between two chunks: the next write raises,
    the iteration stops there, and close() is called."""
    seen = Recorder()
    after = [0]

    class Response:
        def __iter__(self):
            yield b"first"
            seen.event("first").set()
            seen.wait("go")
            for _ in range(100):
                after[0] += 1
                yield b"more"

        def close(self):
            seen.event("closed").set()

    def app(environ, start_response):
        start_response("200 OK", [])
        return Response()

    with serve(app, interface="wsgi") as server:
        sock = server.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        seen.wait("first")
        sock.close()
        time.sleep(0.1)  # (the server sees the close; the app is still at work)
        seen.event("go").set()
        seen.wait("closed")
    assert after[0] == 1, after[0]  # the first write after the client left raised


def test_close_is_called_when_an_http2_stream_is_reset():
    """Over HTTP/2 a client leaves one response with RST_STREAM, the connection staying
    open: the iteration stops, close() is called, and the connection serves on."""
    import h2.errors

    from test_http2 import connect

    seen = Recorder()
    produced = [0]

    class Endless:
        def __iter__(self):
            for _ in range(1000):
                produced[0] += 1
                yield b"x" * 1024
                time.sleep(0.01)

        def close(self):
            seen.event("closed").set()

    def app(environ, start_response):
        start_response("200 OK", [])
        return Endless() if environ["PATH_INFO"] == "/endless" else [b"still serving"]

    with serve(app, interface="wsgi") as server:
        client = connect(server)
        try:
            stream = client.request("/endless")
            client.wait(lambda: client.responses[stream].body)
            client.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
            client.flush()
            seen.wait("closed")
            stopped_at = produced[0]
            after = client.get("/other")
        finally:
            client.close()
    assert stopped_at < 1000 and produced[0] == stopped_at  # stopped, and stays stopped
    assert after.status == 200 and after.body == b"still serving"


def test_close_is_called_when_the_iteration_raises(caplog):
    """PEP 3333: close() whatever ends the request, the app's own error included: before the
    headers (a 500, the server still serves) and after them (the response is cut)."""
    closed: list[str] = []

    class Failing:
        def __init__(self, path):
            self.path = path

        def __iter__(self):
            if self.path == "/late":
                yield b"first part"
            raise ValueError(f"failed at {self.path}")

        def close(self):
            closed.append(self.path)

    def app(environ, start_response):
        start_response("200 OK", [])
        return Failing(environ["PATH_INFO"])

    caplog.set_level(logging.ERROR, logger="aserve.error")
    with serve(app, interface="wsgi") as server:
        with server.client() as client:
            early = client.get("/early")
            assert client.get("/early").status_code == 500  # the same connection still serves
        late = server.request(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n", DEADLINE)
        wait_for(lambda: len(closed) == 3, "close() of every response")
    assert early.status_code == 500 and early.text == "Internal Server Error"
    head, body = head_and_body(late)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"first part" in body
    assert not body.endswith(b"0\r\n\r\n")  # cut: no last chunk, never a complete response
    assert closed == ["/early", "/early", "/late"]
    assert "ValueError: failed at /early" in caplog.text
    assert "ValueError: failed at /late" in caplog.text


def test_wsgi_errors_go_to_the_error_log(caplog):
    def logs(environ, start_response):
        errors = environ["wsgi.errors"]
        errors.write("Traceback (most recent call last):\n  File 'x'\nValueError: boom\n")
        errors.write("partial ")
        errors.write("line\nunfinished")
        errors.flush()
        errors.writelines(["a\n", "b\n"])
        errors.write("left at the end")
        start_response("200 OK", [])
        return [b"ok"]

    caplog.set_level(logging.ERROR, logger="aserve.error")
    with serve(logs, interface="wsgi") as server, server.client() as client:
        assert client.get("/").text == "ok"
    messages = [r.getMessage() for r in caplog.records if r.name == "aserve.error"]
    assert messages == [
        "Traceback (most recent call last):\n  File 'x'\nValueError: boom",
        "partial line",
        "unfinished",
        "a",
        "b",
        "left at the end",
    ]
    assert all(r.levelno == logging.ERROR for r in caplog.records if r.name == "aserve.error")


# -- the thread pool -------------------------------------------------------------------------


def test_the_pool_is_bounded_and_requests_wait_their_turn():
    lock = threading.Lock()
    running = [0, 0]  # now, most at once
    threads = set()

    def slow(environ, start_response):
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
            threads.add(threading.current_thread().name)
        time.sleep(0.1)
        with lock:
            running[0] -= 1
        start_response("200 OK", [])
        return [b"done"]

    # --wsgi-threads 3, as the command line sets it (Config), not an adapter made by hand.
    with serve(slow, interface="wsgi", wsgi_threads=3) as server:
        results = []

        def one():
            with httpx.Client(base_url=server.url, timeout=DEADLINE) as client:
                results.append(client.get("/").text)

        clients = [threading.Thread(target=one) for _ in range(9)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(DEADLINE)
    assert results == ["done"] * 9
    assert running[1] == 3  # never more than the pool's size, and the pool is used
    assert len(threads) == 3


def test_an_idle_thread_ends_and_the_next_request_starts_one(monkeypatch):
    """A burst's threads (and what they hold) do not stay for good: a thread idle for
    IDLE_TIMEOUT ends, and the next request is served by a new one."""
    monkeypatch.setattr("aserve.wsgi.IDLE_TIMEOUT", 0.2)
    names: list[str] = []

    def app(environ, start_response):
        names.append(threading.current_thread().name)
        start_response("200 OK", [])
        return [b"ok"]

    adapter = WSGIAdapter(app, threads=2)
    with serve(adapter) as server, server.client() as client:
        assert client.get("/").text == "ok"
        assert adapter.pool.threads == 1
        wait_for(lambda: adapter.pool.threads == 0, "the idle thread to end")
        assert client.get("/").text == "ok"
        assert adapter.pool.threads == 1
    assert len(names) == 2 and names[0] != names[1], names


def test_context_of_the_server_reaches_the_app_thread():
    import contextvars

    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    marker.set("from the server's context")  # serve() starts the server in a copy of this

    def reads(environ, start_response):
        start_response("200 OK", [])
        return [marker.get().encode()]

    with serve(reads, interface="wsgi") as server, server.client() as client:
        assert client.get("/").text == "from the server's context"


# -- limits, deadlines, logs and metrics: the same as for ASGI apps ---------------------------


def test_body_limit_applies_to_a_wsgi_app():
    seen = Recorder()

    def reads_all(environ, start_response):
        stream = environ["wsgi.input"]
        try:
            first = stream.read(10)
            seen.event("reading").set()
            data = first + stream.read()
        except OSError as exc:
            seen.values["error"] = type(exc).__name__
            seen.event("error").set()
            raise
        start_response("200 OK", [])
        return [str(len(data)).encode()]

    with serve(reads_all, interface="wsgi", limit_request_body=1000) as server:
        declared = server.request(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000
        )
        with server.connect() as sock:  # a chunked body goes over the limit while read
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            sock.sendall(b"300\r\n" + b"x" * 0x300 + b"\r\n")
            seen.wait("reading")
            sock.sendall(b"300\r\n" + b"x" * 0x300 + b"\r\n0\r\n\r\n")
            chunked = read_until_close(sock)
        seen.wait("error")
    assert declared.startswith(b"HTTP/1.1 413 ")
    assert chunked.startswith(b"HTTP/1.1 413 "), chunked
    assert seen.values["error"] == "ClientDisconnected"  # the app's read ended, not hung


def test_body_idle_deadline_applies_to_a_wsgi_app():
    """A body that stops arriving: 408, and the read the app's thread waits in raises
    instead of holding the thread for good."""
    seen = Recorder()

    def reads_all(environ, start_response):
        try:
            data = environ["wsgi.input"].read()
        except OSError as exc:
            seen.values["error"] = type(exc).__name__
            seen.event("error").set()
            raise
        start_response("200 OK", [])
        return [data]

    with (
        serve(reads_all, interface="wsgi", timeout_request_body_idle=0.3) as server,
        server.connect() as sock,
    ):
        start = time.monotonic()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        response = read_until_close(sock, DEADLINE)
        seen.wait("error")
    assert response.startswith(b"HTTP/1.1 408 "), response
    assert time.monotonic() - start < 5
    assert seen.values["error"] == "ClientDisconnected"


def test_request_timeout_answers_503_and_the_app_finds_out(caplog):
    seen = Recorder()

    def too_slow(environ, start_response):
        seen.wait("go")
        write = start_response("200 OK", [])
        try:
            write(b"late")  # long after the server answered 503 in its place
        except OSError as exc:
            seen.values["error"] = str(exc)
            raise
        finally:
            seen.event("closed").set()
        return []

    caplog.set_level(logging.ERROR, logger="aserve.error")
    with serve(too_slow, interface="wsgi", timeout_request=0.3) as server:
        start = time.monotonic()
        response = server.request(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n", DEADLINE)
        elapsed = time.monotonic() - start
        seen.event("go").set()
        seen.wait("closed")
    assert response.startswith(b"HTTP/1.1 503 "), response
    assert elapsed < 5
    assert "cancelled" in seen.values["error"]
    assert "Request cancelled after 0.3s without a response: GET /slow" in caplog.text


def test_a_request_cancelled_while_waiting_for_a_thread_never_reaches_the_app():
    seen = Recorder()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/block":
            seen.event("blocking").set()
            seen.wait("go")
        else:
            seen.values["queued ran"] = True
        start_response("200 OK", [])
        return [b"done"]

    with serve(app, interface="wsgi", wsgi_threads=1, timeout_request=0.3) as server:
        with server.connect() as first:
            first.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
            seen.wait("blocking")  # the one thread is taken
            second = server.request(b"GET /queued HTTP/1.1\r\nHost: x\r\n\r\n", DEADLINE)
            seen.event("go").set()
            assert read_until_close(first, DEADLINE).startswith(b"HTTP/1.1 503 ")
        with server.client() as client:  # the thread is free again, and serves
            assert client.get("/after").text == "done"
    assert second.startswith(b"HTTP/1.1 503 ")
    assert seen.values == {"queued ran": True}  # by /after only: /queued was never called


def test_limit_concurrency_counts_wsgi_requests_waiting_for_a_thread():
    """--limit-concurrency counts a WSGI request from its start, running or queued for a
    thread: one thread, a limit of 2, a third request at once gets 503. (Three streams of one
    HTTP/2 connection: the number of connections is not what refuses it.)"""
    from test_http2 import connect

    seen = Recorder()

    def app(environ, start_response):
        seen.event("running").set()
        seen.wait("go")
        start_response("200 OK", [])
        return [b"served"]

    with serve(app, interface="wsgi", wsgi_threads=1, limit_concurrency=2) as server:
        client = connect(server)
        try:
            first, second = client.request("/1"), client.request("/2")
            seen.wait("running")  # /1 holds the one thread, /2 waits for it
            refused = client.response(client.request("/3"))
            seen.event("go").set()
            answers = [client.response(first, DEADLINE), client.response(second, DEADLINE)]
            after = client.get("/4")
        finally:
            client.close()
    assert refused.status == 503
    assert [(a.status, a.body) for a in answers] == [(200, b"served")] * 2
    assert after.status == 200  # the limit counts requests, not what was once refused


def test_access_log_and_metrics_count_wsgi_requests(caplog):
    from test_metrics import scrape

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/missing":
            start_response("404 Not Found", [])
            return [b"nope"]
        size = len(environ["wsgi.input"].read())
        start_response("200 OK", [])
        return [b"got %d" % size]

    caplog.set_level(logging.INFO, logger="aserve.access")
    with serve(app, interface="wsgi", metrics_port=0) as server:
        with server.client() as client:
            assert client.post("/up?x=1", content=b"y" * 1000).text == "got 1000"
            assert client.get("/missing").status_code == 404
        samples = scrape(server.server.metrics_port)
    lines = [r.getMessage() for r in caplog.records if r.name == "aserve.access"]
    assert len(lines) == 2
    assert re.fullmatch(r'127\.0\.0\.1:\d+ - "POST /up\?x=1 HTTP/1\.1" 200 OK', lines[0])
    assert re.fullmatch(r'127\.0\.0\.1:\d+ - "GET /missing HTTP/1\.1" 404 Not Found', lines[1])
    assert samples["aserve_http_requests_total"] == 2
    assert samples['aserve_http_responses_total{status="2xx"}'] == 1
    assert samples['aserve_http_responses_total{status="4xx"}'] == 1
    assert samples["aserve_http_request_body_bytes_total"] == 1000
    assert samples["aserve_http_response_body_bytes_total"] == len(b"got 1000") + 4


def test_websocket_handshake_to_a_wsgi_app_is_refused():
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with serve(hello, interface="wsgi") as server:
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{server.port}/", open_timeout=DEADLINE)
        with server.client() as client:
            assert client.get("/").text == "hello"
    assert refused.value.response.status_code == 403


def test_lifespan_on_and_graceful_shutdown_waits_for_a_wsgi_request():
    seen = Recorder()

    def slow(environ, start_response):
        seen.event("started").set()
        time.sleep(0.3)
        start_response("200 OK", [])
        return [b"finished"]

    server = serve(slow, interface="wsgi", lifespan="on")
    live = server.__enter__()
    try:
        sock = live.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        seen.wait("started")
    finally:
        server.__exit__(None, None, None)  # graceful: the answer still comes
    assert read_until_close(sock).endswith(b"finished")
    sock.close()


# -- --interface auto ------------------------------------------------------------------------


def test_interface_detection():
    def wsgi_function(environ, start_response):
        return []

    class WSGIObject:
        def __call__(self, environ, start_response):
            return []

    class WSGIClass:  # PEP 3333's other form: the class is the app, its instance the body
        def __init__(self, environ, start_response):
            pass

    class ASGI2Class:
        def __init__(self, scope):
            pass

    def asgi2_function(scope):
        return None

    async def asgi3(scope, receive, send):
        pass

    class ASGI3Object:
        async def __call__(self, scope, receive, send):
            pass

    def asgi3_plain(scope, receive, send):  # returns an awaitable from a plain call
        return asgi3(scope, receive, send)

    @functools.wraps(wsgi_function)
    def wrapped(*args, **kwargs):
        return wsgi_function(*args, **kwargs)

    def unwrapped(*args, **kwargs):
        return wsgi_function(*args, **kwargs)

    def with_extra(config, environ, start_response):
        return []

    assert detect_interface(wsgi_function) == "wsgi"
    assert detect_interface(WSGIObject()) == "wsgi"
    assert detect_interface(WSGIClass) == "wsgi"
    assert detect_interface(wrapped) == "wsgi"  # functools.wraps: the signature underneath
    assert detect_interface(functools.partial(with_extra, {})) == "wsgi"
    assert detect_interface(WSGIObject().__call__) == "wsgi"
    assert detect_interface(ASGI2Class) == "asgi2"
    assert detect_interface(asgi2_function) == "asgi2"
    assert detect_interface(asgi3) == "asgi3"
    assert detect_interface(ASGI3Object()) == "asgi3"
    assert detect_interface(asgi3_plain) == "asgi3"
    assert detect_interface(unwrapped) == "asgi2"  # takes anything: as before, ASGI 2
    assert detect_interface(len) == "asgi2"  # one argument (a builtin's signature)

    from flask import Flask

    assert detect_interface(Flask(__name__)) == "wsgi"  # Django's: test_frameworks.py
    assert isinstance(load_app(Config(wsgi_function)), WSGIAdapter)
    assert load_app(Config(wsgi_function, interface="asgi3")) is wsgi_function  # as told
    assert isinstance(load_app(Config(asgi3, interface="wsgi")), WSGIAdapter)


def test_a_wsgi_class_is_served():
    from apps.wsgi_apps import ClassApp

    with serve(ClassApp) as server, server.client() as client:
        response = client.get("/")
    assert response.text == "from a class"


# -- the command line ------------------------------------------------------------------------

APPS = str(Path(__file__).parent / "apps")


def test_cli_finds_and_serves_wsgi_apps():
    from processes import AserveProcess

    for target, args, answer in [
        ("wsgi_apps:app", ("--wsgi-threads", "3"), "aserve-wsgi-1 /x"),  # --interface auto
        ("wsgi_apps:flask_app", (), "flask"),
        ("wsgi_apps:ClassApp", ("--interface", "wsgi", "--wsgi-threads", "2"), "from a class"),
    ]:
        server = AserveProcess(target, "--app-dir", APPS, "--port", "0", *args)
        try:
            port = server.wait_for_port()
            text = httpx.get(f"http://127.0.0.1:{port}/x", timeout=DEADLINE).text
            assert answer in text, (target, text)
        finally:
            assert server.stop() == 0, server.output
        threads = args[args.index("--wsgi-threads") + 1] if "--wsgi-threads" in args else "10"
        detected = f"The app is a WSGI callable: serving it from {threads} thread(s)"
        assert (detected in server.output) == ("--interface" not in args), server.output


@pytest.mark.once
def test_cli_serves_a_wsgi_app_from_two_workers():
    from processes import AserveProcess

    server = AserveProcess(
        "wsgi_apps:app", "--app-dir", APPS, "--port", "0", "--workers", "2", "--no-access-log"
    )
    try:
        port = server.wait_for_port()
        pids: set[str] = set()

        def both_answered() -> bool:
            # A new connection each time: the workers share the listening socket.
            answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=DEADLINE).text
            pid, thread, path = answer.split()
            assert thread.startswith("aserve-wsgi-") and path == "/"
            pids.add(pid)
            return len(pids) == 2

        wait_for(both_answered, "both workers to answer")
    finally:
        assert server.stop() == 0, server.output


@pytest.mark.once
def test_wsgi_errors_reach_the_process_log_as_one_json_record():
    """The real command with --log-format json: a traceback an app writes to wsgi.errors in
    one call is one JSON line of the error log (stderr), at ERROR, from aserve.error."""
    from apps.wsgi_apps import ERRORS_TEXT
    from processes import AserveProcess

    server = AserveProcess(
        "wsgi_apps:app", "--app-dir", APPS, "--port", "0", "--log-format", "json", "--no-access-log"
    )
    try:
        port = server.wait_for_port()
        answer = httpx.get(f"http://127.0.0.1:{port}/errors", timeout=DEADLINE)
        assert answer.status_code == 200 and answer.text.endswith(" /errors")
        server.wait_until(lambda: "from the app" in server.output, "the wsgi.errors record")
    finally:
        assert server.stop() == 0, server.output
    records = [json.loads(line) for line in server.lines]  # every line is one JSON object
    (record,) = [r for r in records if "from the app" in r["message"]]
    assert record["logger"] == "aserve.error" and record["level"] == "ERROR"
    assert record["message"] == ERRORS_TEXT.rstrip("\n")


@pytest.mark.once
def test_a_stuck_wsgi_call_does_not_hold_the_process_past_the_graceful_timeout(tmp_path):
    """A thread cannot be stopped; the pool's threads are daemons, so after
    --timeout-graceful-shutdown the process exits anyway."""
    from processes import AserveProcess

    mark = tmp_path / "stuck"
    server = AserveProcess(
        "wsgi_apps:app",
        "--app-dir",
        APPS,
        "--port",
        "0",
        "--timeout-graceful-shutdown",
        "1",
        env={"ASERVE_TEST_STUCK_MARK": str(mark)},
    )
    try:
        port = server.wait_for_port()
        sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        sock.sendall(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
        server.wait_until(mark.exists, "the app to be in the stuck call")
        started = time.monotonic()
        code = server.stop(timeout=DEADLINE)
        elapsed = time.monotonic() - started
        sock.close()
    finally:
        server.stop()
    assert code == 0, server.output
    assert elapsed < 5, elapsed
    assert "Graceful shutdown timed out after 1.0s: cancelling 1 request(s)" in server.output


def test_wsgi_over_http2():
    """The adapter speaks only ASGI, so HTTP/2 serves WSGI apps as they are: a body without a
    Content-Length (HTTP/2 needs none) is read to its end, responses stream, streams of one
    connection run in the pool side by side."""

    together = threading.Barrier(3, timeout=DEADLINE)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return (b"part %d\n" % i for i in range(3))
        if environ["PATH_INFO"] == "/together":
            together.wait()  # three calls at once, or BrokenBarrierError (a 500)
        body = environ["wsgi.input"].read()
        answer = json.dumps(
            {
                "protocol": environ["SERVER_PROTOCOL"],
                "length": environ.get("CONTENT_LENGTH"),
                "size": len(body),
                "thread": threading.current_thread().name,
            }
        ).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [answer]

    with (
        serve(app, interface="wsgi") as server,
        httpx.Client(base_url=server.url, http1=False, http2=True) as client,
    ):
        plain = client.get("/")
        streamed_body = client.post("/", content=iter([b"a" * 70_000, b"b" * 70_000]))
        streamed = client.get("/stream")

    async def three_at_once():
        async with httpx.AsyncClient(base_url=server.url, http1=False, http2=True) as client:
            return await asyncio.gather(*(client.get("/together") for _ in range(3)))

    with serve(app, interface="wsgi") as server:
        concurrent = asyncio.run(three_at_once())
    assert [r.status_code for r in concurrent] == [200] * 3
    assert {r.http_version for r in concurrent} == {"HTTP/2"}
    assert len({r.json()["thread"] for r in concurrent}) == 3
    assert plain.http_version == "HTTP/2"
    assert plain.json()["protocol"] == "HTTP/2" and plain.json()["size"] == 0
    assert streamed_body.json()["length"] is None and streamed_body.json()["size"] == 140_000
    assert streamed.text == "part 0\npart 1\npart 2\n"
