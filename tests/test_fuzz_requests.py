"""Property-based tests of the request path: generated and mutated requests, split anywhere.

For any bytes, fed in any split into one connection (in memory): the server never raises,
always keeps a deadline or closes (never hangs), answers each request at most once, never
answers anything after an error response, and gives the same answers whatever the split.
"""

from __future__ import annotations

import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory import check_outcomes, cut, exchange

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABCDXYZ0123456789!#$%&'*+.^_`|~", min_size=1)
NAME = st.one_of(
    st.sampled_from(
        [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Upgrade",
            "Connection",
            "Expect",
            "X-Forwarded-For",
        ]
    ),
    TOKEN,
)
VALUE = st.one_of(
    st.sampled_from(
        [
            "chunked",
            "gzip, chunked",
            "5",
            "0",
            "-1",
            "0x5",
            "",
            "close",
            "keep-alive",
            "100-continue",
            "websocket",
            "h2c",
            "example.com",
            "a b",
        ]
    ),
    st.binary(max_size=12).map(lambda b: b.decode("latin-1")),
)
METHOD = st.sampled_from(
    ["GET", "POST", "HEAD", "PUT", "OPTIONS", "CONNECT", "DELETE", "get", "FOO", "PRI"]
)
TARGET = st.one_of(
    st.sampled_from(
        ["/", "/a?b=1", "*", "http://example.com/x", "example.com:443", "/a#f", "/%41", "//x"]
    ),
    st.binary(min_size=1, max_size=10).map(lambda b: b.decode("latin-1")),
)
VERSION = st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", ""])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method, target, version = draw(METHOD), draw(TARGET), draw(VERSION)
    line = f"{method} {target} {version}".rstrip() + "\r\n"
    fields = draw(st.lists(st.tuples(NAME, VALUE), max_size=5))
    if draw(st.booleans()):
        fields.insert(0, ("Host", "example.com"))
    head = line + "".join(f"{name}: {value}\r\n" for name, value in fields) + "\r\n"
    body = draw(
        st.sampled_from(
            [
                b"",
                b"hello",
                b"5\r\nhello\r\n0\r\n\r\n",
                b"0\r\n\r\n",
                b"3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n",
            ]
        )
    )
    return head.encode("latin-1") + body


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(b"".join(draw(st.lists(requests(), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 58, 127, 255, 0x41]))
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
        whole = await exchange([data])
        split = await exchange(cut(data, points))
    finally:
        logging.getLogger("aserve.error").removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records]
    check_outcomes(data, whole, split)


@SETTINGS
@given(data=mutated(), points=st.lists(st.integers(0, 10_000), max_size=6))
async def test_any_request_bytes_in_any_split(data, points):
    await check(data, points)


@SETTINGS
@given(data=st.binary(max_size=200), points=st.lists(st.integers(0, 10_000), max_size=4))
async def test_random_bytes(data, points):
    await check(data, points)


@SETTINGS
@given(
    data=st.lists(requests(), min_size=1, max_size=4).map(b"".join),
    points=st.lists(st.integers(0, 10_000), max_size=8),
)
async def test_generated_requests(data, points):
    await check(data, points)
