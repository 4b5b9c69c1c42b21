"""WebSockets over real sockets: handshake, messages, close codes, limits, flow control, shutdown.

Well-behaved traffic uses the `websockets` client; malformed handshakes and frames a client
library would refuse to send go over raw sockets.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import struct
import threading
import time
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from aserve.asgi import ClientDisconnected
from aserve.logging import TRACE
from conftest import read_response, read_until_close, serve

# -- helpers ---------------------------------------------------------------------------------


def ws_url(server: Any, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def handshake_request(path: bytes = b"/", extra: bytes = b"", version: bytes = b"13") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: %s\r\n%s\r\n"
        % (path, key, version, extra)
    )


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1)  # byte by byte: frames that follow stay in the socket
        if not chunk:
            break
        data += chunk
    return data


def raw_websocket(server: Any, after: bytes = b"") -> socket.socket:
    """A raw socket past a successful handshake (no extensions offered)."""
    sock = server.connect()
    sock.sendall(handshake_request() + after)
    head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A masked client frame, built by hand so that it can be wrong on purpose."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    first = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        header = struct.pack("!BB", first, 0x80 | len(payload))
    else:
        header = struct.pack("!BBH", first, 0x80 | 126, len(payload))
    return header + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server frame in `data`."""
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


def close_code(data: bytes) -> int | None:
    for opcode, payload in server_frames(data):
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0] if payload else 1005
    return None


async def echo(scope, receive, send):
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


def recorder(*, accept: bool = True) -> tuple[list[Any], threading.Event, Any]:
    """An app that records every message it receives until the disconnect."""
    got: list[Any] = []
    done = threading.Event()

    async def app(scope, receive, send):
        got.append(await receive())
        if accept:
            await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            got.append(message)
            if message["type"] == "websocket.disconnect":
                break
        done.set()

    return got, done, app


# -- handshake and messages ------------------------------------------------------------------


def test_echo_text_and_bytes(loop_name):
    with serve(echo, loop=loop_name) as server, connect(ws_url(server)) as ws:
        ws.send("héllo")
        assert ws.recv() == "héllo"
        ws.send(b"\x00\xff" * 1000)
        assert ws.recv() == b"\x00\xff" * 1000
        ws.send(["frag", "mented"])  # one message in two frames
        assert ws.recv() == "fragmented"
        ws.send("x" * 100_000)
        assert ws.recv() == "x" * 100_000


def test_scope_is_complete():
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        await echo(scope, receive, send)

    with serve(app, root_path="/api") as server:
        port = server.port
        with connect(ws_url(server, "/chat%20room?x=1"), subprotocols=["v2", "v1"]) as ws:
            ws.send("ping")
            ws.recv()
    scope = scopes[0]
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["server"] == ("127.0.0.1", port)
    assert scope["client"][0] == "127.0.0.1"
    assert scope["root_path"] == "/api"
    assert scope["path"] == "/api/chat room"
    assert scope["raw_path"] == b"/api/chat%20room"
    assert scope["query_string"] == b"x=1"
    assert scope["subprotocols"] == ["v2", "v1"]
    assert (b"sec-websocket-protocol", b"v2, v1") in scope["headers"]
    assert scope["state"] == {}
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert "method" not in scope


def test_subprotocol_and_extra_headers_on_accept():
    async def app(scope, receive, send):
        await receive()
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": "v1",
                "headers": [(b"x-room", b"lobby"), (b"set-cookie", b"a=1")],
            }
        )
        await receive()

    with serve(app) as server, connect(ws_url(server), subprotocols=["v2", "v1"]) as ws:
        assert ws.subprotocol == "v1"
        headers = ws.response.headers
        assert headers["X-Room"] == "lobby"
        assert headers["Set-Cookie"] == "a=1"
        assert headers["Server"] == "aserve"


def test_per_message_deflate_negotiated_only_when_enabled():
    with serve(echo) as server, connect(ws_url(server)) as ws:
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        ws.send("abc" * 10_000)
        assert ws.recv() == "abc" * 10_000
    with serve(echo, ws_per_message_deflate=False) as server, connect(ws_url(server)) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers


def test_frames_sent_before_the_101_wait_for_accept():
    async def app(scope, receive, send):
        await receive()
        await asyncio.sleep(0.1)  # the client's frame is already here
        await send({"type": "websocket.accept"})
        message = await receive()
        await send({"type": "websocket.send", "text": message["text"].upper()})
        await receive()

    # The frame goes out in the same packet as the handshake, long before the 101.
    with serve(app) as server, raw_websocket(server, client_frame(0x1, b"early")) as sock:
        data = sock.recv(100)
        assert server_frames(data) == [(0x1, b"EARLY")]


def test_a_receive_cancelled_by_a_timeout_loses_no_message():
    got: list[str] = []
    done = threading.Event()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            try:
                message = await asyncio.wait_for(receive(), 0.001)
            except TimeoutError:
                continue
            if message["type"] == "websocket.disconnect":
                break
            got.append(message["text"])
        done.set()

    with serve(app) as server:
        with connect(ws_url(server)) as ws:
            for i in range(300):
                ws.send(str(i))
                if i % 10 == 0:
                    time.sleep(0.001)
        assert done.wait(5)
    assert got == [str(i) for i in range(300)]


# -- closing ---------------------------------------------------------------------------------


def test_app_closes_with_code_and_reason(loop_name):
    got, done, _ = recorder()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
        got.append(await receive())
        with pytest.raises(ClientDisconnected):
            await send({"type": "websocket.send", "text": "too late"})
        await send({"type": "websocket.close"})  # closing twice is harmless
        done.set()

    with serve(app, loop=loop_name) as server, connect(ws_url(server)) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
        assert info.value.rcvd.code == 4001
        assert info.value.rcvd.reason == "bye"
        assert done.wait(5)
    assert got == [{"type": "websocket.disconnect", "code": 4001, "reason": "bye"}]


def test_client_close_reaches_app_and_send_then_raises():
    outcome = []
    done = threading.Event()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        outcome.append(await receive())
        outcome.append(await receive())  # again: no hang, the same answer
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except ClientDisconnected as exc:
            outcome.append(exc)
        done.set()

    with serve(app) as server:
        with connect(ws_url(server)) as ws:
            ws.close(4002, "done")
        assert done.wait(5)
    assert outcome[0] == {"type": "websocket.disconnect", "code": 4002, "reason": "done"}
    assert outcome[1] == outcome[0]
    assert isinstance(outcome[2], ClientDisconnected) and isinstance(outcome[2], OSError)


def test_messages_sent_before_the_close_reach_a_slow_app():
    release = threading.Event()
    got: list[Any] = []
    done = threading.Event()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while not release.is_set():
            await asyncio.sleep(0.01)
        while (message := await receive())["type"] != "websocket.disconnect":
            got.append(message["text"])
        got.append(message)
        done.set()

    with serve(app) as server:
        with connect(ws_url(server)) as ws:
            for text in ("a", "b", "c"):
                ws.send(text)
            ws.close()  # the server answers the Close while the app is still busy
        release.set()
        assert done.wait(5)
    assert got == ["a", "b", "c", {"type": "websocket.disconnect", "code": 1000, "reason": ""}]


def test_connection_loss_is_1006():
    got, done, app = recorder()
    with serve(app) as server:
        sock = raw_websocket(server)
        sock.close()
        assert done.wait(5)
    assert got[-1] == {"type": "websocket.disconnect", "code": 1006, "reason": ""}


def test_app_returning_after_accept_closes_1000():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})

    with serve(app) as server, connect(ws_url(server)) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
        assert info.value.rcvd.code == 1000


def test_exception_after_accept_closes_1011(caplog):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        raise RuntimeError("boom")

    with serve(app) as server, connect(ws_url(server)) as ws:
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
        assert info.value.rcvd.code == 1011
    assert "Exception in ASGI application" in caplog.text


def test_close_interrupting_a_fragmented_message_is_normal():
    got, done, app = recorder()
    with serve(app) as server, raw_websocket(server) as sock:
        sock.sendall(client_frame(0x1, b"part", fin=False) + client_frame(0x8, b"\x03\xe8"))
        assert close_code(read_until_close(sock)) == 1000
        assert done.wait(5)
    assert got[-1]["code"] == 1000


# -- refusing the handshake ------------------------------------------------------------------


def test_close_before_accept_is_403():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.close"})

    with serve(app) as server, pytest.raises(InvalidStatus) as info:
        connect(ws_url(server))
    assert info.value.response.status_code == 403


def test_returning_without_accept_is_403(caplog):
    async def app(scope, receive, send):
        await receive()

    with serve(app) as server, pytest.raises(InvalidStatus) as info:
        connect(ws_url(server))
    assert info.value.response.status_code == 403
    assert "without accepting" in caplog.text


def test_exception_before_accept_is_500(caplog):
    async def app(scope, receive, send):
        raise RuntimeError("boom")

    with serve(app) as server:
        response = server.request(handshake_request())
    assert response.startswith(b"HTTP/1.1 500 ")
    assert "Exception in ASGI application" in caplog.text


def test_denial_response_extension():
    async def app(scope, receive, send):
        assert "websocket.http.response" in scope["extensions"]
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Basic")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"who ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"are you?"})

    with serve(app) as server:
        response = server.request(handshake_request())
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b"\r\nwww-authenticate: Basic" in head
    assert b"\r\nContent-Length: 12" in head
    assert b"\r\nserver: aserve" in head
    assert body == b"who are you?"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (handshake_request().replace(b"Sec-WebSocket-Key", b"X-Nothing"), b"400"),
        (handshake_request().replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: short"), b"400"),
        (handshake_request(version=b"8"), b"426"),
        (handshake_request(extra=b"Content-Length: 5\r\n") + b"hello", b"400"),
        (handshake_request(extra=b"Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n", b"400"),
        (handshake_request().replace(b"GET", b"POST"), b"405"),
    ],
    ids=["no-key", "bad-key", "version", "content-length", "chunked", "post"],
)
def test_malformed_handshake_answered_at_once_without_the_app(request_bytes, status):
    called = []

    async def app(scope, receive, send):
        called.append(scope)

    with serve(app) as server:
        started = time.monotonic()
        response = server.request(request_bytes)
        assert time.monotonic() - started < 2  # answered and closed, no hang
    assert response.split(b" ")[1] == status, response
    if status == b"426":
        assert b"Sec-WebSocket-Version: 13\r\n" in response
    assert called == []


# -- protocol errors and limits --------------------------------------------------------------


def test_message_over_max_size_closes_1009():
    got, done, app = recorder()
    with serve(app, ws_max_size=1024) as server, connect(ws_url(server)) as ws:
        ws.send(b"x" * 1024)  # at the limit: fine
        ws.send(b"x" * 1025)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
        assert info.value.rcvd.code == 1009
        assert done.wait(5)
    assert got[1] == {"type": "websocket.receive", "bytes": b"x" * 1024}
    assert got[-1]["type"] == "websocket.disconnect" and got[-1]["code"] == 1009


@pytest.mark.parametrize(
    "frames",
    [
        client_frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"),
        client_frame(0x1, b"ok", fin=False) + client_frame(0x0, b"\xff", fin=False),
    ],
    ids=["whole", "fragment"],
)
def test_invalid_utf8_closes_1007(frames):
    got, done, app = recorder()
    with serve(app) as server, raw_websocket(server) as sock:
        sock.sendall(frames)
        assert close_code(read_until_close(sock)) == 1007
        assert done.wait(5)
    assert got[-1]["code"] == 1007


@pytest.mark.parametrize(
    "frame",
    [
        client_frame(0x3, b"reserved opcode"),
        client_frame(0x0, b"stray continuation"),
        client_frame(0x9, b"x" * 126),  # control frame too long
        struct.pack("!BB", 0x81, 2) + b"hi",  # unmasked
    ],
    ids=["opcode", "continuation", "long-ping", "unmasked"],
)
def test_protocol_errors_close_1002(frame):
    got, done, app = recorder()
    with serve(app) as server, raw_websocket(server) as sock:
        sock.sendall(frame)
        assert close_code(read_until_close(sock)) == 1002
        assert done.wait(5)
    assert got[-1]["code"] == 1002


# -- keepalive -------------------------------------------------------------------------------


def test_ping_timeout_drops_a_dead_peer():
    got, done, app = recorder()
    with serve(app, ws_ping_interval=0.1, ws_ping_timeout=0.2) as server:
        with raw_websocket(server) as sock:  # never answers the ping
            started = time.monotonic()
            data = read_until_close(sock, timeout=5)
            assert time.monotonic() - started < 2
        assert done.wait(5)
    assert server_frames(data)[0][0] == 0x9  # the ping
    assert close_code(data) == 1011
    assert got[-1]["code"] == 1011


def test_answered_pings_keep_the_connection():
    with (
        serve(echo, ws_ping_interval=0.05, ws_ping_timeout=0.1) as server,
        connect(ws_url(server)) as ws,
    ):
        time.sleep(0.5)  # the client answers pings on its own
        ws.send("still here")
        assert ws.recv() == "still here"


# -- flow control ----------------------------------------------------------------------------


def test_send_waits_while_the_client_does_not_read():
    progress = {"sent": 0}
    total = 64
    finished = threading.Event()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        chunk = b"x" * (1024 * 1024)
        for _ in range(total):
            await send({"type": "websocket.send", "bytes": chunk})
            progress["sent"] += 1
        finished.set()
        await receive()

    with serve(app, ws_per_message_deflate=False) as server, server.connect(timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(handshake_request())
        read_head(sock)
        time.sleep(0.5)
        stalled_at = progress["sent"]
        time.sleep(0.3)
        assert progress["sent"] == stalled_at < total // 2  # send() waits, not buffers
        received = 0
        while received < total * (1024 * 1024):
            received += len(sock.recv(1 << 20))
        assert finished.wait(5)


def test_full_queue_stops_reading_until_the_app_drains_it():
    release = threading.Event()
    got: list[Any] = []
    done = threading.Event()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while not release.is_set():
            await asyncio.sleep(0.01)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                break
            got.append(message["text"])
        done.set()

    with serve(app, ws_max_queue=4) as server, connect(ws_url(server)) as ws:
        for i in range(200):
            ws.send(str(i))
        time.sleep(0.2)
        (conn,) = server.server.state.connections
        assert not conn.transport.is_reading()
        release.set()
        time.sleep(0.2)
        assert conn.transport.is_reading()
        ws.close()
        assert done.wait(5)
    assert got == [str(i) for i in range(200)]


# -- shutdown --------------------------------------------------------------------------------


def test_graceful_shutdown_closes_1001_and_finishes(loop_name):
    events = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    events.append("lifespan shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        events.append(message)

    with serve(app, loop=loop_name, lifespan="on") as server, connect(ws_url(server)) as ws:
        started = time.monotonic()
        server.server.should_exit = True
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
        assert info.value.rcvd.code == 1001
        server.thread.join(5)
        assert not server.thread.is_alive()
        assert time.monotonic() - started < 2
    assert events == [
        {"type": "websocket.disconnect", "code": 1001, "reason": "going away"},
        "lifespan shutdown",
    ]


def test_shutdown_refuses_a_handshake_the_app_has_not_accepted():
    entered = threading.Event()

    async def app(scope, receive, send):
        await receive()
        entered.set()
        await receive()  # the shutdown's disconnect ends the wait

    with serve(app, timeout_graceful_shutdown=5) as server, server.connect() as sock:
        sock.sendall(handshake_request())
        assert entered.wait(5)
        started = time.monotonic()
        server.server.should_exit = True
        response = read_response(sock)
        server.thread.join(5)
        assert time.monotonic() - started < 2
    assert response.startswith(b"HTTP/1.1 503 ")


# -- upgrades that are not WebSockets --------------------------------------------------------


async def http_hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send(
        {"type": "http.response.body", "body": scope["type"].encode() + scope["path"].encode()}
    )


@pytest.mark.parametrize(
    ("upgrade", "options"),
    [(b"h2c", {"http2": False}), (b"foo/1", {})],
    ids=["h2c with HTTP/2 off", "an unknown protocol"],
)
def test_other_upgrades_are_answered_as_http_and_the_rest_is_not_parsed(upgrade, options):
    paths = []

    async def app(scope, receive, send):
        paths.append(scope["path"])
        await http_hello(scope, receive, send)

    with serve(app, **options) as server:
        response = server.request(
            b"GET /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: " + upgrade + b"\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        )
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert response.endswith(b"http/first")
    assert paths == ["/first"]


def test_ws_none_answers_upgrades_as_http():
    with serve(http_hello, ws="none") as server:
        response = server.request(handshake_request(b"/plain"))
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert response.endswith(b"http/plain")


# -- logging and frameworks ------------------------------------------------------------------


def test_access_log_lines(caplog):
    caplog.set_level(logging.INFO, logger="aserve.access")

    async def app(scope, receive, send):
        if scope["path"] == "/no":
            await receive()
            await send({"type": "websocket.close"})
        else:
            await echo(scope, receive, send)

    with serve(app) as server:
        with connect(ws_url(server, "/yes?a=1")):
            pass
        with pytest.raises(InvalidStatus):
            connect(ws_url(server, "/no"))
    lines = [r.getMessage() for r in caplog.records if r.name == "aserve.access"]
    assert any(line.endswith('- "WebSocket /yes?a=1" [accepted]') for line in lines), lines
    assert any(line.endswith('- "WebSocket /no" 403') for line in lines), lines


def test_fastapi_websocket_endpoint():
    api = FastAPI()
    closed = []

    @api.websocket("/rooms/{room}")
    async def room(websocket: WebSocket, room: str, who: str = "anon"):
        await websocket.accept(subprotocol="chat")
        try:
            while True:
                text = await websocket.receive_text()
                if text == "bye":
                    await websocket.close(code=4000)
                    return
                await websocket.send_json({"room": room, "who": who, "text": text})
        except WebSocketDisconnect as exc:
            closed.append(exc.code)

    with serve(api) as server:
        with connect(ws_url(server, "/rooms/lobby?who=ann"), subprotocols=["chat"]) as ws:
            assert ws.subprotocol == "chat"
            ws.send("hi")
            assert ws.recv() == '{"room":"lobby","who":"ann","text":"hi"}'
            ws.send("bye")
            with pytest.raises(ConnectionClosed) as info:
                ws.recv()
            assert info.value.rcvd.code == 4000
        with connect(ws_url(server, "/rooms/x"), subprotocols=["chat"]) as ws:
            ws.send("hi")
            ws.recv()
        with pytest.raises(InvalidStatus) as refused:
            connect(ws_url(server, "/nowhere"))
        deadline = time.monotonic() + 5
        while not closed and time.monotonic() < deadline:
            time.sleep(0.01)
    assert refused.value.response.status_code == 403
    assert closed == [1000]


# -- closing wait and websockets' own logger -------------------------------------------------


def test_ws_close_timeout_bounds_the_wait_for_a_silent_peer():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    with serve(app, ws_close_timeout=0.3) as server, raw_websocket(server) as sock:
        started = time.monotonic()
        data = read_until_close(sock, timeout=8)  # never answers the Close, never closes
        waited = time.monotonic() - started
    assert close_code(data) == 1000
    assert 0.2 < waited < 5  # the flag's 0.3 s, not the default 10 s


def test_websockets_connection_lines_stay_out_of_an_info_root_logger(caplog):
    """An app that sets the root logger to INFO must not get websockets' "connection open" (and
    the like) for every WebSocket; those lines are aserve's, at TRACE, when asked for."""
    caplog.set_level(logging.INFO)  # the root logger, as `logging.basicConfig(level=INFO)`
    with serve(echo) as server:
        with connect(ws_url(server)) as ws:
            ws.send("hi")
            assert ws.recv() == "hi"
        deadline = time.monotonic() + 10
        while server.server.state.connections and time.monotonic() < deadline:
            time.sleep(0.01)  # the server side has seen the close
        assert not server.server.state.connections
    server_lines = [
        r for r in caplog.records if r.name.startswith(("websockets.server", "aserve.websockets"))
    ]
    assert server_lines == [], [r.getMessage() for r in server_lines]

    caplog.clear()
    caplog.set_level(TRACE, logger="aserve.websockets")
    with serve(echo) as server:
        with connect(ws_url(server)) as ws:
            ws.send("hi")
            assert ws.recv() == "hi"
        deadline = time.monotonic() + 10
        while server.server.state.connections and time.monotonic() < deadline:
            time.sleep(0.01)
    routed = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "aserve.websockets"]
    assert (TRACE, "connection open") in routed, routed
    assert not [r for r in caplog.records if r.name.startswith("websockets.server")]


def test_handshake_access_line_carries_its_fields_for_json_logs(caplog):
    caplog.set_level(logging.INFO, logger="aserve.access")
    with serve(echo, log_format="json") as server, connect(ws_url(server, "/chat?room=1")):
        pass
    records = [r for r in caplog.records if r.name == "aserve.access"]
    assert len(records) == 1
    fields = records[0].__dict__["access"]
    assert fields["websocket"] == "accepted" and fields["status"] == 101
    assert (fields["path"], fields["query"]) == ("/chat", "room=1")
    assert records[0].getMessage().endswith('"WebSocket /chat?room=1" [accepted]')
