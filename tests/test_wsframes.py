"""The fast path for common WebSocket frames against websockets' own parser, differentially.

Each stream of client frames (sizes at every length-encoding boundary, masks, opcodes, RSV
bits, fragments with control frames between them, UTF-8 split across frames, close frames,
frames over the size limit) is fed to two connections: one as aserve runs it, with
`protocols/wsframes.py` reading the common frames, and one where websockets' parser reads
every byte. The stream is fed whole, one byte per read, and cut in two at every position (near
the frame boundaries for the long ones), and after each read both connections must have shown
the app the same messages and written the same bytes. `make test` runs this on the compiled
module and again on its Python source.
"""

from __future__ import annotations

import asyncio
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

from aserve.config import Config
from aserve.protocols.http import HttpProtocol
from aserve.protocols.websocket import WebSocketProtocol
from aserve.protocols.wsframes import binary_frame, text_frame
from aserve.state import ServerState
from memory import MemoryTransport

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
DEFLATE_OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# -- client frames, built by hand so that they can be wrong on purpose -----------------------


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    key: bytes | None = None,
    length_code: int | None = None,
    rng: random.Random | None = None,
) -> bytes:
    """One client frame. `length_code` forces the length encoding (126 or 127, even for a
    short payload: websockets accepts that), `key` the mask."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload)
    code = length_code if length_code is not None else (size if size < 126 else 126)
    if length_code is None and size >= 65536:
        code = 127
    second = (0x80 if masked else 0) | code
    header = bytes((first, second))
    if code == 126:
        header += size.to_bytes(2, "big")
    elif code == 127:
        header += size.to_bytes(8, "big")
    if not masked:
        return header + payload
    if key is None:
        key = (rng or random).randbytes(4)
    body = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
    return header + key + body


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


class Compressor:
    """permessage-deflate as a client sends it: one compression context per connection."""

    def __init__(self) -> None:
        self.context = zlib.compressobj(wbits=-12)

    def message(self, data: bytes) -> bytes:
        compressed = self.context.compress(data) + self.context.flush(zlib.Z_SYNC_FLUSH)
        assert compressed.endswith(b"\x00\x00\xff\xff")
        return compressed[:-4]


# -- the streams -----------------------------------------------------------------------------


@dataclass
class Stream:
    name: str
    data: bytes
    deflate: bool = False  # the client offers permessage-deflate (and the server accepts)
    max_size: int = 16 * 1024 * 1024


def _text(size: int, rng: random.Random) -> bytes:
    """`size` bytes of UTF-8 with characters of one to four bytes."""
    out = bytearray()
    while len(out) < size:
        char = rng.choice("abcdé€𝄞").encode()
        out += char if len(out) + len(char) <= size else b"x"
    return bytes(out)


BOUNDARY_SIZES = (0, 1, 2, 3, 4, 5, 124, 125, 126, 127, 128, 65535, 65536, 65537)


def streams() -> Iterator[Stream]:
    rng = random.Random(6455)
    tail = frame(TEXT, b"after", rng=rng)  # a frame after each case: the stream goes on
    for size in BOUNDARY_SIZES:
        yield Stream(f"text-{size}", frame(TEXT, _text(size, rng), rng=rng) + tail)
        yield Stream(f"binary-{size}", frame(BINARY, rng.randbytes(size), rng=rng) + tail)
    for size in (5, 125, 126, 200):
        yield Stream(f"text-{size}-as-126", frame(TEXT, b"y" * size, length_code=126) + tail)
        yield Stream(f"text-{size}-as-127", frame(TEXT, b"y" * size, length_code=127) + tail)
    yield Stream(
        "length-with-top-bit",
        bytes((0x81, 0xFF)) + (1 << 63 | 5).to_bytes(8, "big") + b"\x00" * 9,
    )
    for key in (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x02\x03\x04"):
        yield Stream(f"mask-{key.hex()}", frame(BINARY, bytes(range(256)) * 3, key=key) + tail)
    for rsv in range(1, 8):
        yield Stream(f"rsv-{rsv}", frame(TEXT, b"reserved", rsv=rsv) + tail)
    for opcode in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF):
        yield Stream(f"opcode-{opcode:x}", frame(TEXT, b"ok") + frame(opcode, b"?") + tail)
    yield Stream("unmasked", frame(TEXT, b"ok") + frame(TEXT, b"plain", masked=False) + tail)
    many = b"".join(
        frame(rng.choice((TEXT, BINARY)), _text(rng.randrange(40), rng)) for _ in range(8)
    )
    yield Stream("eight-messages", many)

    # UTF-8: valid and invalid, whole and split across fragments.
    yield Stream("text-4-byte-char", frame(TEXT, "𝄞 clef".encode()) + tail)
    for name, bad in (
        ("surrogate", b"\xed\xa0\x80"),
        ("overlong", b"\xc0\xaf"),
        ("truncated", b"ok\xe2\x82"),
        ("lone-continuation", b"\x80abc"),
        ("above-max", b"\xf4\x90\x80\x80"),
    ):
        yield Stream(f"invalid-utf8-{name}", frame(TEXT, b"fine") + frame(TEXT, bad) + tail)
        yield Stream(
            f"invalid-utf8-{name}-126",
            frame(TEXT, b"z" * 300 + bad, rng=rng) + tail,
        )
    yield Stream("invalid-utf8-long", frame(TEXT, b"z" * 70_000 + b"\xff", rng=rng) + tail)
    euro = "€".encode()  # three bytes, split between fragments
    yield Stream(
        "fragmented-valid-char-split",
        frame(TEXT, b"price: " + euro[:1], fin=False)
        + frame(CONT, euro[1:2], fin=False)
        + frame(CONT, euro[2:] + b"5", fin=True)
        + tail,
    )
    yield Stream(
        "fragmented-invalid-utf8-split",
        frame(TEXT, b"ab\xe2", fin=False) + frame(CONT, b"\x28\xa1", fin=True) + tail,
    )
    yield Stream(
        "fragmented-with-controls-between",
        frame(TEXT, b"one ", fin=False)
        + frame(PING, b"ping!")
        + frame(CONT, b"two ", fin=False)
        + frame(PONG, b"unsolicited")
        + frame(CONT, b"three", fin=True)
        + frame(BINARY, b"\x00\x01", fin=False)
        + frame(PING, b"")
        + frame(CONT, b"\x02", fin=True)
        + tail,
    )
    yield Stream(
        "fragmented-then-text-instead-of-continuation",
        frame(TEXT, b"one", fin=False) + frame(TEXT, b"two") + tail,
    )
    yield Stream(
        "close-inside-fragmented-message",
        frame(TEXT, b"part", fin=False) + frame(CLOSE, close_payload(1000)) + tail,
    )
    yield Stream("stray-continuation", frame(TEXT, b"ok") + frame(CONT, b"stray") + tail)
    yield Stream(
        "fragments-of-every-size",
        frame(BINARY, rng.randbytes(126), fin=False)
        + frame(CONT, rng.randbytes(65536), fin=False)
        + frame(CONT, b"", fin=False)
        + frame(CONT, rng.randbytes(125), fin=True)
        + tail,
    )

    # Control frames between data frames, and the close handshake.
    yield Stream(
        "pings-between-messages",
        frame(TEXT, b"a") + frame(PING, b"1") + frame(TEXT, b"b") + frame(PONG) + frame(TEXT, b"c"),
    )
    yield Stream("ping-too-long", frame(TEXT, b"a") + frame(PING, b"x" * 126) + tail)
    yield Stream("ping-fragmented", frame(PING, b"x", fin=False) + tail)
    for name, payload in (
        ("normal", close_payload(1000, b"bye")),
        ("empty", b""),
        ("one-byte", b"\x03"),
        ("bad-code", close_payload(999)),
        ("private-code", close_payload(4000, "déjà".encode())),
        ("bad-reason", close_payload(1000, b"\xff")),
    ):
        yield Stream(f"close-{name}", frame(TEXT, b"last") + frame(CLOSE, payload) + tail)

    # The app closes while the start of the next frame waits in the reader: websockets must
    # read that frame whole to find the client's Close after it.
    for size in (5, 200):
        yield Stream(
            f"app-closes-before-a-{size}-byte-frame",
            frame(TEXT, b"close me")
            + frame(TEXT, b"n" * size)
            + frame(PING, b"late")
            + frame(CLOSE, close_payload(4000)),
        )

    # The size limit: frames at and over --ws-max-size.
    for size in (299, 300, 301):
        yield Stream(f"max-size-300-text-{size}", frame(TEXT, b"m" * size) + tail, max_size=300)
    yield Stream(
        "max-size-300-fragments",
        frame(TEXT, b"m" * 200, fin=False) + frame(CONT, b"m" * 101) + tail,
        max_size=300,
    )

    # permessage-deflate: compressed frames (RSV1) between uncompressed ones.
    compressor = Compressor()
    squeezed = compressor.message(b"squeezed " * 20)
    again = compressor.message(b"squeezed " * 20)  # shorter: the context remembers
    pieces = compressor.message(b"in pieces " * 10)
    yield Stream(
        "deflate-mixed",
        frame(TEXT, b"plain one")
        + frame(TEXT, squeezed, rsv=4)
        + frame(BINARY, rng.randbytes(300))
        + frame(TEXT, again, rsv=4)
        + frame(TEXT, pieces[:3], rsv=4, fin=False)
        + frame(PING, b"between")
        + frame(CONT, pieces[3:], fin=True)
        + tail,
        deflate=True,
    )
    # Random mixes of all of the above that a client may legally send, ending in a close.
    for number in range(12):
        deflate = number % 3 == 0
        compressor = Compressor()
        parts = []
        for _ in range(rng.randrange(3, 9)):
            kind = rng.randrange(6)
            size = rng.choice((0, 3, 125, 126, 127, 300))
            if kind == 0:
                parts.append(frame(TEXT, _text(size, rng), rng=rng))
            elif kind == 1:
                parts.append(frame(BINARY, rng.randbytes(size), rng=rng))
            elif kind == 2:
                parts.append(frame(rng.choice((PING, PONG)), rng.randbytes(size % 126), rng=rng))
            elif kind == 3:
                text = _text(size, rng)
                cut = rng.randrange(len(text) + 1)
                parts.append(
                    frame(TEXT, text[:cut], fin=False, rng=rng)
                    + frame(PING, b"", rng=rng)
                    + frame(CONT, text[cut:], rng=rng)
                )
            elif kind == 4 and deflate:
                parts.append(frame(BINARY, compressor.message(rng.randbytes(size)), rsv=4))
            else:
                parts.append(frame(TEXT, b"", rng=rng))
        parts.append(frame(CLOSE, close_payload(1000), rng=rng))
        yield Stream(f"random-{number}", b"".join(parts), deflate=deflate)

    yield Stream(
        "deflate-rsv2",
        frame(TEXT, b"plain") + frame(TEXT, b"x", rsv=2) + tail,
        deflate=True,
    )


STREAMS = list(streams())


# -- one connection, fed in pieces -----------------------------------------------------------


async def settle() -> None:
    for _ in range(2):  # the app takes what arrived and echoes it
        await asyncio.sleep(0)


async def run(
    stream: Stream, pieces: list[bytes], fast: bool, parsed: bytearray | None = None
) -> list[Any]:
    """What the app saw and what the server wrote, read by read (and in `parsed`, every byte
    websockets' parser was given)."""
    log: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            log.append(("app", message))
            kind = message["type"]
            if kind == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif kind == "websocket.receive":
                if message.get("text") == "close me":
                    await send({"type": "websocket.close", "code": 4000, "reason": "asked"})
                elif message.get("text") is not None:
                    await send({"type": "websocket.send", "text": message["text"]})
                else:
                    await send({"type": "websocket.send", "bytes": message["bytes"]})
            else:
                return

    loop = asyncio.get_running_loop()
    config = Config(app=app, access_log=False, ws_ping_interval=None, ws_max_size=stream.max_size)
    state = ServerState(config, app, loop)
    http = HttpProtocol(state)
    transport = MemoryTransport()
    transport.protocol = http
    http.connection_made(transport)
    http.data_received(HANDSHAKE + (DEFLATE_OFFER if stream.deflate else b"") + b"\r\n")
    await settle()
    connection = transport.protocol
    assert isinstance(connection, WebSocketProtocol)
    head, _, _ = bytes(transport.data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert (b"permessage-deflate" in head) == stream.deflate
    if fast:
        assert connection._reader is not None
    else:
        # websockets reads every byte, and frames every message sent.
        connection._reader = None
        connection._fast_send = False
    if parsed is not None:
        library = connection.protocol
        receive_data = library.receive_data

        def recording(data: bytes) -> None:
            parsed.extend(data)
            receive_data(data)

        library.receive_data = recording
    written = len(transport.data)
    for piece in pieces:
        if transport.closed:
            break
        transport.protocol.data_received(piece)
        await settle()
        log.append(("wrote", bytes(transport.data[written:]), transport.eof, transport.paused))
        written = len(transport.data)
    if not transport.closed:
        transport.protocol.eof_received()
        transport.close()
    await settle()
    log.append(("end", bytes(transport.data[written:]), transport.eof))
    return log


def cuts(stream: Stream) -> Iterator[list[bytes]]:
    """The stream whole, one byte per read (if short), and in two at every position (when
    long: at every position in and next to each frame header, and at 16 others)."""
    data = stream.data
    yield [data]
    if len(data) <= 800:
        yield [data[i : i + 1] for i in range(len(data))]
    if len(data) <= 160:
        points: list[int] = list(range(1, len(data)))
    else:
        marks = _boundaries(data)
        points = sorted(
            # every cut inside each header (14 bytes at most) and just before it
            {p for mark in marks for p in range(mark - 4, mark + 15) if 0 < p < len(data)}
            | set(random.Random(len(data)).sample(range(1, len(data)), 16))
        )
    for point in points:
        yield [data[:point], data[point:]]


def _boundaries(data: bytes) -> list[int]:
    """Where each frame of `data` begins (and the end), read from its headers."""
    marks, position = [], 0
    while position + 2 <= len(data):
        marks.append(position)
        length = data[position + 1] & 0x7F
        header = 2
        if length == 126:
            length = int.from_bytes(data[position + 2 : position + 4], "big")
            header = 4
        elif length == 127:
            length = int.from_bytes(data[position + 2 : position + 10], "big")
            header = 10
        if data[position + 1] & 0x80:
            header += 4
        position += header + length
    marks.append(len(data))
    return marks


@pytest.mark.parametrize("stream", STREAMS, ids=[s.name for s in STREAMS])
def test_the_fast_path_matches_websockets_on_every_split(stream: Stream) -> None:
    async def compare() -> int:
        count = 0
        for pieces in cuts(stream):
            fast = await run(stream, pieces, fast=True)
            reference = await run(stream, pieces, fast=False)
            assert fast == reference, (stream.name, [len(p) for p in pieces])
            count += 1
        return count

    assert asyncio.run(compare()) > 1


def test_the_streams_reach_every_outcome() -> None:
    """The streams above are not all alike: they make the server echo, fail with each close
    code, and answer the client's close and pings (checked on the fast path, whole)."""

    async def outcomes() -> set[Any]:
        seen: set[Any] = set()
        for stream in STREAMS:
            for entry in await run(stream, [stream.data], fast=True):
                if entry[0] == "app" and entry[1]["type"] == "websocket.disconnect":
                    seen.add(entry[1]["code"])
                elif entry[0] == "app" and entry[1]["type"] == "websocket.receive":
                    seen.add("text" if "text" in entry[1] else "bytes")
                elif entry[0] != "app" and b"\x8a" in entry[1][:1]:
                    seen.add("pong")
        return seen

    assert asyncio.run(outcomes()) >= {"text", "bytes", 1000, 1002, 1007, 1009, 1006}


def test_websockets_parses_only_the_frames_the_fast_path_leaves() -> None:
    """Fed a frame per read, or a byte per read, websockets' parser gets exactly the frames
    that are not common ones, and the fast path takes the common ones again after each (after
    a fragmented message, a frame whose header came in pieces, control frames)."""
    common = [
        frame(TEXT, b"one"),
        frame(BINARY, b"\x00" * 300),
        frame(TEXT, "€".encode() * 20_000),
        frame(TEXT, b"four", length_code=127),
    ]
    others = [
        frame(PING, b"p"),
        frame(TEXT, b"frag", fin=False)
        + frame(PING)
        + frame(CONT, b"ment", fin=False)
        + frame(CONT, b"ed", fin=True),
        frame(BINARY, b"y" * 10, fin=False) + frame(CONT, b"z", fin=True),
        frame(BINARY, b"x" * 70_000, fin=False) + frame(CONT, b"", fin=True),
        frame(TEXT, b"ok", fin=False) + frame(CONT, b"!", fin=True),
        frame(PONG, b"x" * 125),
    ]
    frames = [f for pair in zip(common * 2, others, strict=False) for f in pair] + common

    async def parsed_by_websockets(frames: list[bytes], pieces: list[bytes]) -> bytes:
        parsed = bytearray()
        log = await run(Stream("mixed", b"".join(frames)), pieces, fast=True, parsed=parsed)
        received = [e[1] for e in log if e[0] == "app" and e[1]["type"] == "websocket.receive"]
        # Every message reached the app (`others` has four, between its control frames).
        assert len(received) == sum(f in common or f in others[1:5] for f in frames)
        return bytes(parsed)

    expected = b"".join(f for f in frames if f not in common)
    assert asyncio.run(parsed_by_websockets(frames, frames)) == expected
    short = [f for f in frames if len(f) < 1000]  # (a byte per read through websockets is slow)
    data = b"".join(short)
    expected = b"".join(f for f in short if f not in common)
    one_by_one = [data[i : i + 1] for i in range(len(data))]
    assert asyncio.run(parsed_by_websockets(short, one_by_one)) == expected


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 65537, 200_000])
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_an_outgoing_frame_is_the_one_websockets_builds(size: int, opcode: Opcode) -> None:
    payload = bytes(random.Random(size).randbytes(size))
    expected = Frame(opcode, payload).serialize(mask=False)
    build = text_frame if opcode is Opcode.TEXT else binary_frame
    assert build(payload) == expected
