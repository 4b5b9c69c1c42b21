"""When answers leave: at the end of the loop iteration that read their requests, in order."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aserve.config import Config
from aserve.protocols.http import HttpProtocol
from aserve.state import ServerState
from conftest import read_response, serve
from memory import MemoryTransport

REQUEST = b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n"


class RecordingTransport(MemoryTransport):
    """Keeps each `write` call apart, to see how the answers were cut into writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        super().write(data)
        self.writes.append(bytes(data))


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = scope["path"].encode()
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def connect(app: Any, count: int) -> list[tuple[HttpProtocol, RecordingTransport]]:
    state = ServerState(Config(app=app, access_log=False), app, asyncio.get_running_loop())
    pairs = []
    for _ in range(count):
        protocol, transport = HttpProtocol(state), RecordingTransport()
        transport.protocol = protocol
        protocol.connection_made(transport)
        pairs.append((protocol, transport))
    return pairs


async def test_answers_of_one_iteration_leave_together_at_its_end() -> None:
    """Requests read from many connections in one loop iteration are all answered before
    any answer is written; then each connection gets its answer in one write, before the
    loop polls for more."""
    pairs = connect(hello, 8)
    for index, (protocol, _) in enumerate(pairs):
        protocol.data_received(REQUEST % index)
    assert all(transport.writes == [] for _, transport in pairs)
    await asyncio.sleep(0)  # the rest of this iteration: the batches go out
    for index, (_, transport) in enumerate(pairs):
        assert len(transport.writes) == 1
        assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert transport.writes[0].endswith(b"\r\n\r\n/%d" % index)


async def test_a_lone_request_is_answered_within_one_loop_turn() -> None:
    """Waiting for the end of the iteration adds no timer: one turn and the answer is out."""
    [(protocol, transport)] = connect(hello, 1)
    protocol.data_received(REQUEST % 1)
    await asyncio.sleep(0)
    assert transport.writes and transport.writes[0].endswith(b"/1")


async def test_what_an_app_sends_after_suspending_follows_its_batch() -> None:
    """Bytes sent from a later step of the app's Task in the same iteration join the batch
    its eager start left, so the client reads them in the order they were sent."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one,", "more_body": True})
        await asyncio.sleep(0)  # the rest comes from the Task's next step
        await send({"type": "http.response.body", "body": b"two,", "more_body": True})
        await send({"type": "http.response.body", "body": b"three"})

    [(protocol, transport)] = connect(app, 1)
    protocol.data_received(REQUEST % 1)
    for _ in range(5):
        await asyncio.sleep(0)
    data = b"".join(transport.writes)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"4\r\none,\r\n4\r\ntwo,\r\n5\r\nthree\r\n0\r\n\r\n"


async def test_a_connection_closed_before_the_end_of_the_iteration_gets_its_answer() -> None:
    """An answer that ends the connection is written before the close, not dropped with it."""
    [(protocol, transport)] = connect(hello, 1)
    protocol.data_received(b"GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    for _ in range(5):  # (3.11 has no eager start: the app runs on the next loop turn)
        if transport.closed:
            break
        await asyncio.sleep(0)
    assert transport.closed
    assert transport.writes and transport.writes[0].endswith(b"connection: close\r\n\r\n/bye")
    await asyncio.sleep(0)
    assert len(transport.writes) == 1


def test_many_connections_at_once_each_get_their_own_answers(loop_name: str) -> None:
    """Over real sockets: 32 connections, each with two requests in flight one after the
    other, all sent before any answer is read; every connection reads its own answers."""
    with serve(hello, loop=loop_name) as server:
        socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(32)]
        try:
            for round_ in range(2):
                for index, sock in enumerate(socks):
                    sock.sendall(REQUEST % (index * 10 + round_))
                for index, sock in enumerate(socks):
                    answer = read_response(sock)
                    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
                    assert answer.endswith(b"\r\n\r\n/%d" % (index * 10 + round_)), answer
        finally:
            for sock in socks:
                sock.close()


class ThrottledTransport(RecordingTransport):
    """Pauses its protocol past `high` bytes unread, as a socket's transport does for a client
    that stops reading; `drain` plays the client reading everything."""

    high = 64 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.buffered = 0
        self.writing_paused = False

    def write(self, data: Any) -> None:
        super().write(data)
        self.buffered += len(data)
        if self.buffered > self.high and not self.writing_paused:
            self.writing_paused = True
            self.protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def drain(self) -> None:
        self.buffered = 0
        if self.writing_paused:
            self.writing_paused = False
            self.protocol.resume_writing()


async def test_an_app_streaming_during_its_eager_start_is_paused_by_flow_control() -> None:
    """Batched writes still reach the transport in time for it to push back: an app that
    streams 4 MiB without ever waiting on anything but `send` is held at the transport's high
    water, not buffered whole, and the client gets every byte in order once it reads."""
    chunk = b"%04d" * 1024  # 4 KiB, numbered below
    chunks = 1024
    sent = 0

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal sent
        size = b"%d" % (len(chunk) * chunks)
        headers = [(b"content-length", size)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for index in range(chunks):
            body = chunk % ((index % 10000,) * 1024)
            await send({"type": "http.response.body", "body": body, "more_body": True})
            sent += 1
        await send({"type": "http.response.body", "body": b""})

    state = ServerState(Config(app=app, access_log=False), app, asyncio.get_running_loop())
    protocol, transport = HttpProtocol(state), ThrottledTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    protocol.data_received(REQUEST % 1)
    for _ in range(5):
        await asyncio.sleep(0)
    # Held back at the high water: what was written is the head, one 64 KiB batch and at
    # most one more chunk, nowhere near the 4 MiB the app has to send.
    assert transport.writing_paused
    assert sent < 40
    assert transport.buffered <= ThrottledTransport.high + 2 * len(chunk) + 200
    for _ in range(10_000):  # the client reads until the answer is complete
        if sent == chunks and protocol._active is None:
            break
        transport.drain()
        await asyncio.sleep(0)
    data = b"".join(transport.writes)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"".join(chunk % ((index % 10000,) * 1024) for index in range(chunks))
