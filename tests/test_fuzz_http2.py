"""Property-based tests of the HTTP/2 frame layer: generated and mutated frame sequences after
the client preface, whole and split anywhere, fed into one connection (in memory).

For any bytes after the preface, the server answers with responses, stream resets or a
GOAWAY that ends the connection: no exception escapes, it never hangs (closed, or a deadline
kept), writes only well-formed frames and valid HPACK, and keeps bounded state
(tests/memory.py, `check_h2_outcome`). `make fuzz` runs the same oracle coverage-guided
(tests/fuzz/fuzz_http2.py).
"""

from __future__ import annotations

import logging

import h2.config
import h2.connection
import h2.settings
import hpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory import check_h2_outcome, cut, exchange_h2

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run: a seeded run, as CI needs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + (payload)
    )


_encoder = hpack.Encoder()
BLOCKS = [
    # Stateless blocks (no table insertion) so any order decodes, plus a few that index.
    b"\x82\x86\x84\x01\x0bexample.com",  # GET http / example.com
    b"\x83\x86\x84\x01\x01h\x0f\x0d\x015",  # POST, content-length: 5
    b"\x82\x86\x04\x02/x\x01\x01h\x00\x02te\x08trailers",
    b"\x82\x86\x84",  # no :authority
    b"\x82\x84",  # no :scheme: malformed
    b"\x00\x03foo\x03bar",  # trailers, or a request without pseudo-headers
    b"\x82\x86\x84\x01\x01h\x00\x04Host\x01h",  # an uppercase name
    b"\x3f\xe1\x1f",  # a table size update to 4096
    b"\x3f\xe1\x3f",  # ... to 8192: above ours
    b"\xff\xff\xff\xff\x0f",  # an index past every table
    _encoder.encode([(":method", "GET"), (":path", "/i"), (":scheme", "http"), ("x-a", "1")]),
    b"",
]

KIND = st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x42])
FLAGS = st.sampled_from([0, 1, 4, 5, 8, 9, 0x20, 0x24, 0x25, 0x2D, 0xFF])
STREAM = st.sampled_from([0, 1, 1, 3, 3, 5, 2, 4, 7, 2**31 - 1, 0x80000001])
PAYLOAD = st.one_of(
    st.sampled_from(BLOCKS),
    st.sampled_from(
        [
            b"\x00\x00\x00\x00",  # 0: a WINDOW_UPDATE of 0, RST NO_ERROR
            b"\x00\x00\xff\xff",
            b"\x7f\xff\xff\xff",  # 2**31-1
            b"\x00\x00\x00\x08",  # CANCEL
            b"12345678",  # PING
            b"\x00\x04\x7f\xff\xff\xff",  # SETTINGS_INITIAL_WINDOW_SIZE 2**31-1
            b"\x00\x04\x80\x00\x00\x00",  # ... past it
            b"\x00\x05\x00\x00\x40\x00",  # SETTINGS_MAX_FRAME_SIZE 16384
            b"\x00\x01\x00\x00\x00\x00",  # SETTINGS_HEADER_TABLE_SIZE 0
            b"\x00\x00\x00\x03\x10",  # PRIORITY on 3
            b"\x00\x00\x00\x01\x00\x00\x00\x00",  # GOAWAY
            b"\x05hello\x00\x00\x00\x00\x00",  # padded
            b"hello",
        ]
    ),
    st.binary(max_size=24),
)


@st.composite
def well_formed(draw: st.DrawFn, stream_id: int, opening: bool) -> bytes:
    """A frame of the right shape for its type on `stream_id` (HEADERS when `opening` it):
    what a client might send, so that sequences reach past the frame checks into streams
    and requests."""
    kind = "headers" if opening else draw(st.sampled_from(["headers", "data", "data", "other"]))
    if kind == "headers":
        block = draw(st.sampled_from(BLOCKS[:3] * 3 + BLOCKS))
        flags = 0x04 | draw(st.sampled_from([0, 1, 1, 0x08]))
        if flags & 0x08:
            block = b"\x02" + block + b"\x00\x00"
        if draw(st.integers(0, 5)) == 0 and len(block) > 2:  # split over a CONTINUATION
            cut_at = draw(st.integers(1, len(block) - 1))
            return frame(1, flags & ~0x04, stream_id, block[:cut_at]) + frame(
                9, 0x04, stream_id, block[cut_at:]
            )
        return frame(1, flags, stream_id, block)
    if kind == "data":
        body = draw(st.sampled_from([b"", b"hello", b"x" * 100, b"abcde"]))
        return frame(0, draw(st.sampled_from([0, 1, 1])), stream_id, body)
    return draw(
        st.sampled_from(
            [
                frame(8, 0, stream_id, b"\x00\x00\x10\x00"),
                frame(8, 0, 0, b"\x00\x01\x00\x00"),
                frame(3, 0, stream_id, b"\x00\x00\x00\x08"),
                frame(6, 0, 0, b"12345678"),
                frame(4, 0, 0, b"\x00\x04\x00\x00\x00\x10"),
                frame(4, 1, 0, b""),
                frame(2, 0, stream_id, b"\x00\x00\x00\x00\x10"),
                frame(7, 0, 0, b"\x00\x00\x00\x01\x00\x00\x00\x00"),
            ]
        )
    )


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    parts = []
    if draw(st.integers(0, 9)):  # mostly the SETTINGS a preface ends with, to go deeper
        parts.append(frame(4, 0, 0, b""))
    stream_id = -1
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.integers(0, 6)):
            opening = stream_id < 0 or draw(st.integers(0, 2)) == 0
            if opening:
                stream_id += 2  # the next stream
            parts.append(draw(well_formed(stream_id, opening)))
        else:
            parts.append(frame(draw(KIND), draw(FLAGS), draw(STREAM), draw(PAYLOAD)))
    return b"".join(parts)


@st.composite
def conversations(draw: st.DrawFn) -> bytes:
    """What a real client sends (python-hyper's h2 makes the frames): requests with and
    without bodies, trailers, resets, pings, window updates, priorities, settings, GOAWAY."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    open_streams: list[int] = []
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["get", "get", "post", "data", "end", "other"]))
        if action in ("get", "post") or not open_streams:
            stream_id = client.get_next_available_stream_id()
            fields = [
                (b":method", b"GET" if action == "get" else b"POST"),
                (b":path", draw(st.sampled_from([b"/", b"/a?b=1", b"/%41", b"*"]))),
                (b":scheme", b"http"),
                (b":authority", b"example.com"),
            ]
            fields += draw(st.sampled_from([[], [(b"te", b"trailers")], [(b"x-a", b"1")]]))
            client.send_headers(stream_id, fields, end_stream=action == "get")
            if action != "get":
                open_streams.append(stream_id)
            continue
        stream_id = draw(st.sampled_from(open_streams))
        if action == "data":
            client.send_data(stream_id, draw(st.sampled_from([b"", b"hello", b"y" * 300])))
        elif action == "end":
            if draw(st.booleans()):
                client.send_data(stream_id, b"!", end_stream=True)
            else:
                client.send_headers(stream_id, [(b"x-t", b"1")], end_stream=True)
            open_streams.remove(stream_id)
        else:
            other = draw(st.sampled_from(["reset", "ping", "window", "priority", "settings"]))
            if other == "reset":
                client.reset_stream(stream_id)
                open_streams.remove(stream_id)
            elif other == "ping":
                client.ping(b"12345678")
            elif other == "window":
                client.increment_flow_control_window(1000, stream_id=stream_id)
            elif other == "priority":
                client.prioritize(stream_id, weight=draw(st.integers(1, 256)))
            else:
                client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    if draw(st.integers(0, 4)) == 0:
        client.close_connection()
    return bytes(client.data_to_send())[24:]  # after the preface, which exchange_h2 sends


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.one_of(frames(), conversations())))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = draw(st.sampled_from([0, 1, 4, 5, 9, 0x7F, 0x80, 0xFF]))
        if action == "flip":
            data[at] = byte
        elif action == "insert":
            data.insert(at, byte)
        else:
            del data[at]
    return bytes(data)


class Errors(logging.Handler):
    """ERROR records of aserve.error: with an app that never fails, each one is a bug of ours."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def check(data: bytes, points: list[int]) -> None:
    errors = Errors()
    logging.getLogger("aserve.error").addHandler(errors)
    try:
        check_h2_outcome(data, await exchange_h2([data]))
        check_h2_outcome(data, await exchange_h2(cut(data, points)))
    finally:
        logging.getLogger("aserve.error").removeHandler(errors)
    assert not errors.records, (data, [r.getMessage() for r in errors.records])


@SETTINGS
@given(data=mutated(), points=st.lists(st.integers(0, 400), max_size=5))
async def test_any_frames_after_the_preface(data, points):
    await check(data, points)


@SETTINGS
@given(data=st.binary(max_size=200), points=st.lists(st.integers(0, 200), max_size=3))
async def test_any_bytes_after_the_preface(data, points):
    await check(data, points)


async def test_a_conversation_is_served():
    """The oracle sees what a real client's conversation gets: responses."""
    data = frame(4, 0, 0, b"") + frame(1, 5, 1, BLOCKS[0]) + frame(1, 4, 3, BLOCKS[1])
    data += frame(0, 1, 3, b"hello") + frame(6, 0, 0, b"12345678")
    outcome = await exchange_h2([data])
    check_h2_outcome(data, outcome)
    kinds = [(kind, stream_id) for kind, _, stream_id, _ in outcome.frames]
    assert (1, 1) in kinds and (1, 3) in kinds  # both answered
    assert (6, 0) in kinds  # the PING acknowledged
    assert not any(kind == 7 for kind, _ in kinds)  # no GOAWAY
