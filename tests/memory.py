"""An in-memory connection: aserve's HTTP protocol fed bytes in any split, no socket.

Fast enough to run a request once per split point, and exact about what the protocol wrote
and whether it closed, which a socket test can only observe through timing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aserve.config import Config
from aserve.protocols.http import HttpProtocol
from aserve.state import ServerState

STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


class MemoryTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False
        self.eof = False  # our side shut down for writing (`write_eof`, a lingering close)
        self.paused = False
        self.protocol: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: Any) -> None:
        assert not self.closed, "write after close"
        assert not self.eof, "write after write_eof"
        self.data += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def get_write_buffer_size(self) -> int:
        return 0


@dataclass
class Outcome:
    data: bytes
    closed: bool
    calls: list[dict[str, Any]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # paths the app answered, in order
    timer_armed: bool = False  # a deadline was kept when the client stopped sending

    @property
    def statuses(self) -> list[int]:
        return [int(code) for code in STATUS_LINE.findall(self.data)]


def recording_app(outcome: Outcome) -> Any:
    """Reads the whole body, then answers 200 with the path: every call is recorded."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        outcome.calls.append(scope)
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message["body"]
            if not message.get("more_body"):
                break
        outcome.bodies.append(body)
        outcome.answered.append(scope["path"])
        payload = scope["path"].encode()
        headers = [(b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return app


async def exchange(pieces: Iterable[bytes], app: Any = None, **options: Any) -> Outcome:
    """Feed `pieces` as separate reads into one connection; what did the server answer?"""
    outcome = Outcome(b"", False)
    application = app if app is not None else recording_app(outcome)
    options.setdefault("access_log", False)
    loop = asyncio.get_running_loop()
    state = ServerState(Config(app=application, **options), application, loop)
    protocol = HttpProtocol(state)
    transport = MemoryTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    for piece in pieces:
        if transport.closed or transport.eof:
            break
        transport.protocol.data_received(piece)
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    outcome.timer_armed = getattr(transport.protocol, "_timer", None) is not None
    if not transport.closed:
        transport.protocol.connection_lost(None)
    await asyncio.sleep(0)
    outcome.data = bytes(transport.data)
    outcome.closed = transport.closed or transport.eof  # the server's output has ended
    return outcome


def splits(data: bytes) -> Iterator[list[bytes]]:
    """The bytes whole, cut in two at every position, and one byte per read."""
    yield [data]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]
    yield [data[i : i + 1] for i in range(len(data))]


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    """`data` cut into reads at `points` (taken modulo its length)."""
    marks = sorted({point % (len(data) + 1) for point in points})
    pieces, start = [], 0
    for mark in [*marks, len(data)]:
        if mark > start:
            pieces.append(data[start:mark])
            start = mark
    return pieces


def check_outcomes(data: bytes, whole: Outcome, split: Outcome) -> None:
    """What must hold for any bytes a client sends, whole or split (the fuzzers' oracle)."""
    for outcome in (whole, split):
        statuses = outcome.statuses
        # Never hangs: either closed, or a deadline is kept for what it waits for.
        assert outcome.closed or outcome.timer_armed, (data, outcome.data)
        # One 200 per request the app answered, at most one error, and that one last.
        assert statuses.count(200) == len(outcome.answered), (data, outcome.data)
        refused = [status for status in statuses if status >= 400]
        assert len(refused) <= 1, (data, outcome.data)
        if refused:
            assert statuses[-1] == refused[0] and outcome.closed, (data, outcome.data)
            # Nothing after the error response: its one-line body ends the output.
            assert outcome.data.endswith(b".\n"), (data, outcome.data)
    # The split changes nothing the client can see (but a 100 Continue, sent only when the
    # app asks for a body that has not arrived yet).
    final = [[status for status in o.statuses if status >= 200] for o in (whole, split)]
    assert final[0] == final[1], (data, whole.data, split.data)
    assert split.answered == whole.answered, data


# -- HTTP/2 ------------------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class H2Outcome:
    """What an HTTP/2 connection fed a client's bytes did: its output and end state."""

    data: bytes
    closed: bool
    timer_armed: bool
    protocol: Any
    errors: list[str] = field(default_factory=list)  # escaped exceptions, loop errors
    frames: list[tuple[int, int, int, bytes]] = field(default_factory=list)


async def exchange_h2(pieces: Iterable[bytes], app: Any = None, **options: Any) -> H2Outcome:
    """Feed the HTTP/2 preface, then `pieces` as separate reads, into one cleartext connection
    (it turns into HTTP/2 as a socket's would, from the HTTP/1.1 protocol)."""
    outcome = Outcome(b"", False)
    application = app if app is not None else recording_app(outcome)
    options.setdefault("access_log", False)
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(str(context.get("message"))))
    try:
        state = ServerState(Config(app=application, **options), application, loop)
        transport = MemoryTransport()
        transport.protocol = HttpProtocol(state)
        transport.protocol.connection_made(transport)
        for piece in [PREFACE, *pieces]:
            if transport.closed or transport.eof:
                break
            try:
                transport.protocol.data_received(piece)
            except Exception as exc:
                errors.append(f"data_received raised {exc!r}")
                break
            await asyncio.sleep(0)
        for _ in range(5):
            await asyncio.sleep(0)
        protocol = transport.protocol
        timer_armed = getattr(protocol, "_timer", None) is not None
        closed = transport.closed or transport.eof
        if not transport.closed:
            protocol.connection_lost(None)
        for _ in range(3):
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    return H2Outcome(bytes(transport.data), closed, timer_armed, protocol, errors)


def h2_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The frames of what the server wrote, as (type, flags, stream id, payload); asserts they
    are well formed and whole."""
    frames = []
    i = 0
    while i < len(data):
        assert len(data) - i >= 9, "a frame header cut short"
        length = int.from_bytes(data[i : i + 3], "big")
        assert len(data) - i - 9 >= length, "a frame cut short"
        stream_id = int.from_bytes(data[i + 5 : i + 9], "big")
        assert stream_id < 2**31, "the reserved bit set"
        frames.append((data[i + 3], data[i + 4], stream_id, data[i + 9 : i + 9 + length]))
        i += 9 + length
    return frames


def check_h2_outcome(data: bytes, outcome: H2Outcome) -> None:
    """What must hold for any bytes a client sends after the HTTP/2 preface (the oracle of
    tests/test_fuzz_http2.py and tests/fuzz/fuzz_http2.py): no exception escapes, the server
    writes well-formed frames (its SETTINGS first), answers with responses, stream resets or a
    GOAWAY that ends the connection, never hangs (closed, or a deadline kept), and keeps
    bounded state whatever it was sent."""
    from hpack import Decoder

    from aserve.protocols import http2

    assert not outcome.errors, (data, outcome.errors)
    frames = outcome.frames = h2_frames(outcome.data)
    assert frames and frames[0][0] == http2.SETTINGS, (data, outcome.data[:64])
    decoder = Decoder()
    block = b""
    for index, (kind, flags, stream_id, payload) in enumerate(frames):
        if kind in (http2.HEADERS, http2.CONTINUATION):
            block += payload
            if flags & http2.END_HEADERS:
                decoder.decode(block, raw=True)  # our blocks are valid HPACK
                block = b""
        elif kind == http2.GOAWAY and int.from_bytes(payload[4:8], "big") != http2.NO_ERROR:
            # A connection error: the last frame, and the connection ends.
            assert index == len(frames) - 1, (data, frames[index:])
            assert outcome.closed, data
        elif kind == http2.RST_STREAM:
            assert stream_id != 0 and len(payload) == 4, (data, frames[index])
    # Never hangs: closed, or the connection's one timer keeps a deadline.
    assert outcome.closed or outcome.timer_armed, (data, outcome.data[-64:])
    # Bounded whatever was sent: what the connection holds, and what it answers per byte.
    protocol = outcome.protocol
    if isinstance(protocol, http2.Http2Protocol):
        limit = protocol.state.limit_request_head
        assert len(protocol._buffer) < 9 + protocol.max_frame_size, data
        assert protocol._block_size <= limit + 2 * protocol.max_frame_size, data
        assert len(protocol._reset_ids) <= http2.RESET_MEMORY, data
        assert protocol.decoder.table_size <= protocol.decoder.max_table_size, data
        assert len(protocol._valid_fields) <= http2.VALID_FIELDS_MEMORY, data
    assert len(outcome.data) <= 16 * len(data) + 4096, (len(data), len(outcome.data))
