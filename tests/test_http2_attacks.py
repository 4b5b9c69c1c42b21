"""HTTP/2 attacks, each made by a raw-frame client on a real socket, while another client on the
same server goes on being served (docs/http2.md, "How each attack is answered").

For each: what the attacker gets (GOAWAY with its error code, a stream reset, a refused
stream, a dropped connection), that the server logs exactly one line for the attacker's
connection, that no more apps run at once than the concurrency limit allows, and that a
bystander, a well-behaved client on its own connection, has every request answered before,
during and after the attack.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

import hpack
import pytest

from conftest import serve
from test_http2 import Client

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0,
    1,
    2,
    3,
    4,
    6,
    7,
    8,
    9,
)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4

NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
REFUSED_STREAM = 0x7
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# The bounds of protocols/http2.py, as the docs give them.
RESET_BURST = 1000
GLITCH_BURST = 10000


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + (payload)
    )


def literal(name: bytes, value: bytes) -> bytes:
    """A field as a literal never entering the table: blocks built this way are stateless,
    so they can be sent in any number and order."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


def request(path: bytes = b"/", method: bytes = b"GET", *extra: tuple[bytes, bytes]) -> bytes:
    block = literal(b":method", method) + b"\x86" + literal(b":path", path)  # :scheme http
    block += literal(b":authority", b"example.com")
    for name, value in extra:
        block += literal(name, value)
    return block


def headers(stream_id: int, block: bytes, end_stream: bool = True) -> bytes:
    return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream_id, block)


def rst(stream_id: int, code: int = 0x8) -> bytes:
    return frame(RST_STREAM, 0, stream_id, code.to_bytes(4, "big"))


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))


_attackers: list[Attacker] = []


@pytest.fixture(autouse=True)
def _close_attackers() -> Any:
    yield
    while _attackers:
        _attackers.pop().close()


class Attacker:
    """A client writing raw frames; a thread reads what the server answers (so that a flood
    is never held up by a server waiting for its answers to be read, unless `read` is off)."""

    def __init__(
        self,
        port: int,
        settings: bytes = b"",
        *,
        ack: bool = True,
        read: bool = True,
        rcvbuf: int | None = None,
    ) -> None:
        sock = self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        _attackers.append(self)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        self.decoder = hpack.Decoder()
        self.statuses: dict[int, int] = {}
        self.resets: dict[int, int] = {}
        self.goaways: list[tuple[int, int, bytes]] = []  # (last stream id, code, debug)
        self.pings = 0
        self.server_settings = threading.Event()
        self.closed = threading.Event()
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))
        if read:
            threading.Thread(target=self._read, daemon=True).start()
            assert self.server_settings.wait(5), "no SETTINGS from the server"
            if ack:
                self.send(frame(SETTINGS, ACK, 0))

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                self.closed.set()
                return
            buffer += chunk
            while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                length = int.from_bytes(buffer[:3], "big")
                kind, flags = buffer[3], buffer[4]
                stream_id = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                payload = buffer[9 : 9 + length]
                buffer = buffer[9 + length :]
                if kind == SETTINGS and not flags & ACK:
                    self.server_settings.set()
                elif kind == HEADERS:
                    fields = dict(self.decoder.decode(payload, raw=True))
                    if b":status" in fields and stream_id not in self.statuses:
                        self.statuses[stream_id] = int(fields[b":status"])
                elif kind == RST_STREAM:
                    self.resets[stream_id] = int.from_bytes(payload, "big")
                elif kind == GOAWAY:
                    last = int.from_bytes(payload[:4], "big")
                    self.goaways.append((last, int.from_bytes(payload[4:8], "big"), payload[8:]))
                elif kind == PING and flags & ACK:
                    self.pings += 1

    def send(self, data: bytes) -> bool:
        """Send unless the server has closed; False once it has."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def flood(self, data: bytes, times: int, chunk: int = 500, between: Any = None) -> int:
        """`data` `times` times, in writes of `chunk` copies, until the server closes."""
        return self.flood_frames([data] * times, chunk, between)

    def flood_frames(self, frames: list[bytes], chunk: int = 500, between: Any = None) -> int:
        """`frames` in writes of `chunk`, until the server closes; `between` is called after
        each write the connection survived (a bystander served mid-attack). How many writes
        the connection survived."""
        survived = 0
        for i in range(0, len(frames), chunk):
            if self.closed.is_set() or not self.send(b"".join(frames[i : i + chunk])):
                break
            if between is not None and not self.closed.is_set():
                between()
                if not self.closed.is_set():
                    survived += 1
        return survived

    def wait(self, condition: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the condition was not met in time")
            time.sleep(0.01)

    def goaway(self, timeout: float = 10.0) -> tuple[int, int, bytes]:
        """The GOAWAY that ends the connection, once the server has closed it."""
        self.wait(lambda: self.goaways and self.closed.is_set(), timeout)
        return self.goaways[-1]

    def close(self) -> None:
        self.sock.close()


class Bystander:
    """A well-behaved client (python-hyper's h2) asking for /fast in a loop on its own
    connection, in a thread: every answer it gets, and any error."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.statuses: list[int] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            client = Client(self.port)
            while not self._stop.is_set():
                response = client.response(client.request("/fast"), timeout=10)
                self.statuses.append(response.status)
            client.close()
        except BaseException as exc:  # reported on leaving
            self.errors.append(exc)

    def __enter__(self) -> Bystander:
        self._thread.start()
        self.wait_for(1)
        return self

    def served(self) -> None:
        """One more request answered, from now."""
        self.wait_for(len(self.statuses) + 1)

    def wait_for(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.statuses) < count and not self.errors:
            assert time.monotonic() < deadline, "the bystander was not served"
            time.sleep(0.01)

    def __exit__(self, *exc_info: Any) -> None:
        # Served after the attack as well: two more answers, then stop.
        self.wait_for(len(self.statuses) + 2)
        self._stop.set()
        self._thread.join(15)
        assert not self.errors, self.errors
        assert self.statuses and set(self.statuses) == {200}, self.statuses


class Apps:
    """The app: /fast answers at once; /slow runs until released (or 10 s), ignoring
    http.disconnect, as a backend still working on a request the client gave up; /stream
    sends 64 KiB pieces while the client takes them. It counts the /slow apps called and
    running at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.calls = 0
        self.release = threading.Event()
        self.streamed = 0
        self.stream_ends: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/slow":
            with self.lock:
                self.calls += 1
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                deadline = time.monotonic() + 10
                while not self.release.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
            finally:
                with self.lock:
                    self.running -= 1
            return
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            piece = b"x" * 65536
            try:
                while True:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                    with self.lock:
                        self.streamed += len(piece)
            except OSError as exc:  # ClientDisconnected: the connection was dropped
                self.stream_ends.append(type(exc).__name__)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def apps() -> Any:
    apps = Apps()
    yield apps
    apps.release.set()


@pytest.fixture
def error_log(caplog: pytest.LogCaptureFixture) -> Any:
    """The lines logged for one connection, by its client port."""
    caplog.set_level(logging.DEBUG, logger="aserve.error")

    def lines(port: int) -> list[str]:
        return [
            record.getMessage()
            for record in caplog.records
            if record.name == "aserve.error"
            and record.levelno >= logging.DEBUG
            and f"127.0.0.1:{port}" in record.getMessage()
        ]

    return lines


def one_line(error_log: Any, attacker: Attacker) -> str:
    """The server's one log line for the attacker's connection."""
    deadline = time.monotonic() + 5
    while not error_log(attacker.port) and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = error_log(attacker.port)
    assert len(lines) == 1, lines
    return lines[0]


# -- resets ------------------------------------------------------------------------------------


def _open_slow(attacker: Attacker, apps: Apps, streams: list[int], end_stream: bool) -> None:
    """Open `streams` on /slow, each in its own write, and wait until each app runs."""
    for number, stream_id in enumerate(streams, 1):
        attacker.send(headers(stream_id, request(b"/slow"), end_stream))
        attacker.wait(lambda number=number: apps.calls >= number)


def test_rapid_reset(apps, error_log):
    """CVE-2023-44487: streams opened and reset at once. Streams reset while their apps still
    run count against the concurrency limit, so the client cannot run more apps than it; the
    resets themselves are rate-limited, and the connection ends with ENHANCE_YOUR_CALM."""
    with (
        serve(apps, http2_max_concurrent_streams=4) as server,
        Bystander(server.port) as bystander,
    ):
        attacker = Attacker(server.port)
        _open_slow(attacker, apps, [1, 3, 5, 7], end_stream=True)
        attacker.send(b"".join(rst(stream_id) for stream_id in (1, 3, 5, 7)))
        # The four apps run on (their requests were cancelled): a fifth stream is refused.
        attacker.send(headers(9, request(b"/slow")))
        attacker.wait(lambda: 9 in attacker.resets)
        assert attacker.resets[9] == REFUSED_STREAM
        assert apps.calls == 4
        bystander.served()  # while the attacker's four apps run
        # Then the flood: HEADERS and RST_STREAM, over and over.
        pairs = [
            headers(stream_id, request(b"/slow")) + rst(stream_id)
            for stream_id in range(11, 11 + 2 * 2000, 2)
        ]
        assert attacker.flood_frames(pairs, 100, bystander.served) >= 1
        _, code, debug = attacker.goaway()
        assert code == ENHANCE_YOUR_CALM
        assert b"too many stream resets" in debug
        assert apps.most <= 4
        line = one_line(error_log, attacker)
        assert "ENHANCE_YOUR_CALM" in line and "stream resets" in line
        apps.release.set()


def _trailers(stream_id: int) -> bytes:
    return headers(stream_id, literal(b"x-trailer", b"1"))


# Frames that make the server reset a stream (the MadeYouReset primitives), each with whether
# it is sent on a stream the client half-closed (a GET) or on one still open (a POST with a
# content-length of 1 and no body yet).
PROVOKE = {
    "WINDOW_UPDATE of 0": (lambda stream_id: window_update(stream_id, 0), False),
    "stream window overflow": (lambda stream_id: window_update(stream_id, 2**31 - 1), False),
    "PRIORITY of a wrong size": (lambda stream_id: frame(PRIORITY, 0, stream_id, b"\0" * 4), False),
    "body past content-length": (
        lambda stream_id: frame(DATA, END_STREAM, stream_id, b"xx"),
        False,
    ),
    "DATA after END_STREAM": (lambda stream_id: frame(DATA, 0, stream_id, b"x"), True),
    "HEADERS after END_STREAM": (_trailers, True),
}


@pytest.mark.parametrize("name", list(PROVOKE))
def test_made_you_reset(apps, error_log, name):
    """CVE-2025-8671: frames that make the server reset a stream whose app runs on. Those
    resets count against the concurrency limit and the reset budget as the client's own."""
    provoke, half_closed = PROVOKE[name]

    def open_stream(stream_id: int, path: bytes) -> bytes:
        if half_closed:
            return headers(stream_id, request(path), end_stream=True)
        block = request(path, b"POST", (b"content-length", b"1"))
        return headers(stream_id, block, end_stream=False)

    with (
        serve(apps, http2_max_concurrent_streams=4) as server,
        Bystander(server.port) as bystander,
    ):
        # The streams it resets keep their places while their apps run on.
        attacker = Attacker(server.port)
        for number, stream_id in enumerate((1, 3, 5, 7), 1):
            attacker.send(open_stream(stream_id, b"/slow"))
            attacker.wait(lambda number=number: apps.calls >= number)
        attacker.send(b"".join(provoke(stream_id) for stream_id in (1, 3, 5, 7)))
        attacker.wait(lambda: len(attacker.resets) == 4)
        assert set(attacker.resets) == {1, 3, 5, 7}
        attacker.send(open_stream(9, b"/slow"))
        attacker.wait(lambda: 9 in attacker.resets)
        assert attacker.resets[9] == REFUSED_STREAM  # the four reset apps still run
        assert apps.most <= 4
        bystander.served()
        apps.release.set()
        attacker.close()
        # Each reset it provokes spends the reset budget: on a new connection, with no
        # stream refused, a stream opened and made to be reset, over and over.
        attacker = Attacker(server.port)
        pairs = [
            open_stream(stream_id, b"/fast") + provoke(stream_id)
            for stream_id in range(1, 1 + 2 * 2000, 2)
        ]
        assert attacker.flood_frames(pairs, 100, bystander.served) >= 1
        _, code, debug = attacker.goaway()
        assert code == ENHANCE_YOUR_CALM
        assert debug == b"too many stream resets (streams its frames made us reset)"
        assert RESET_BURST <= len(attacker.resets) < 2000
        assert REFUSED_STREAM not in attacker.resets.values()
        line = one_line(error_log, attacker)
        assert "ENHANCE_YOUR_CALM" in line and "made us reset" in line


def test_reset_streams_stop_counting_once_their_apps_end(apps):
    """The other side of counting reset streams: once their apps end, their places are
    free again and the connection serves new streams."""
    with serve(apps, http2_max_concurrent_streams=2) as server:
        attacker = Attacker(server.port)
        _open_slow(attacker, apps, [1, 3], end_stream=True)
        attacker.send(rst(1) + rst(3))
        attacker.send(headers(5, request(b"/fast")))
        attacker.wait(lambda: 5 in attacker.resets)
        assert attacker.resets[5] == REFUSED_STREAM
        apps.release.set()
        attacker.wait(lambda: apps.running == 0)
        attacker.send(headers(7, request(b"/fast")))
        attacker.wait(lambda: 7 in attacker.statuses)
        assert attacker.statuses[7] == 200
        attacker.close()


# -- header blocks -----------------------------------------------------------------------------


@pytest.mark.parametrize("piece", [b"", b"\x00" * 16384], ids=["empty frames", "16 KiB frames"])
def test_continuation_flood(apps, error_log, piece):
    """The CONTINUATION flood (CVE-2024-27316 and its family): a header block that never
    ends. Bounded in frames (empty ones never reach a size bound) and in bytes, before any of
    it is decoded."""
    with serve(apps) as server, Bystander(server.port):
        attacker = Attacker(server.port)
        attacker.send(frame(HEADERS, 0, 1, request(b"/fast")[:10]))
        attacker.flood(frame(CONTINUATION, 0, 1, piece), 10_000, chunk=10 if piece else 1000)
        _, code, debug = attacker.goaway()
        assert code == ENHANCE_YOUR_CALM
        assert debug in (b"too many CONTINUATION frames", b"header block too large")
        if not piece:
            assert debug == b"too many CONTINUATION frames"
        assert "ENHANCE_YOUR_CALM" in one_line(error_log, attacker)


def test_hpack_bomb(apps, error_log):
    """A small block naming one large table entry many times: refused with 431 as it is
    decoded, without being expanded; the connection goes on. A table size update above the
    table we announced (4096 bytes, SETTINGS_HEADER_TABLE_SIZE's default) ends it."""
    with serve(apps, limit_request_head=16384) as server, Bystander(server.port):
        attacker = Attacker(server.port)
        # Stream 1 puts a 4 KB field in the table (a literal with incremental indexing)...
        encoder = hpack.Encoder()
        first = encoder.encode([*_base(b"/fast"), (b"x-big", b"v" * 4000)])
        bomb = encoder.encode(_base(b"/fast") + [(b"x-big", b"v" * 4000)] * 3000)
        assert len(bomb) < 16384  # 3,000 references to a 4 KB entry: 12 MB decoded
        attacker.send(headers(1, first) + headers(3, bomb))
        # (Stream 3's 431 is aserve's own, written at once; stream 1's app may answer later.)
        attacker.wait(lambda: len(attacker.statuses) == 2)
        assert attacker.statuses == {1: 200, 3: 431}
        # A table size update to 8192: above SETTINGS_HEADER_TABLE_SIZE (4096).
        attacker.send(headers(5, b"\x3f\xe1\x3f" + request(b"/fast")))
        _, code, debug = attacker.goaway()
        assert code == COMPRESSION_ERROR
        assert b"table size update" in debug
        assert "COMPRESSION_ERROR" in one_line(error_log, attacker)


def _base(path: bytes) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":path", path), (b":scheme", b"http"), (b":authority", b"h")]


# -- floods of frames that carry no request ----------------------------------------------------

FLOODS = {
    "PING": frame(PING, 0, 0, b"12345678"),
    "SETTINGS": frame(SETTINGS, 0, 0, b"\x00\x03\x00\x00\x00\x64"),
    "PRIORITY": frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"),
    "empty DATA": frame(DATA, 0, 1, b""),
    "WINDOW_UPDATE": window_update(0, 1),
    "unknown frame type": frame(0x42, 0, 0, b"abc"),
    "PING acknowledgement": frame(PING, ACK, 0, b"12345678"),
}


@pytest.mark.parametrize("name", list(FLOODS))
def test_floods(apps, error_log, name):
    """Frames that cost the server an answer or work and carry no request, sent without end
    (CVE-2019-9512, -9515, -9518, ...): past the glitch budget, GOAWAY ENHANCE_YOUR_CALM."""
    with serve(apps) as server, Bystander(server.port) as bystander:
        attacker = Attacker(server.port)
        # A stream open with a body to come, for the frames that need one (empty DATA).
        attacker.send(headers(1, request(b"/slow", b"POST"), end_stream=False))
        attacker.wait(lambda: apps.calls == 1)
        # The bystander is served between the flood's writes, while the connection lasts.
        assert attacker.flood(FLOODS[name], GLITCH_BURST + 5000, 500, bystander.served) >= 1
        _, code, debug = attacker.goaway()
        assert code == ENHANCE_YOUR_CALM, (code, debug)
        assert debug.startswith(b"flood of ")
        assert "ENHANCE_YOUR_CALM" in one_line(error_log, attacker)
        apps.release.set()


def test_empty_headers_flood(apps, error_log):
    """HEADERS frames with an empty block, each a malformed request reset by the server:
    counted as the resets the client's frames provoke."""
    with serve(apps) as server, Bystander(server.port) as bystander:
        attacker = Attacker(server.port)
        empty = [frame(HEADERS, END_HEADERS | END_STREAM, i, b"") for i in range(1, 4001, 2)]
        assert attacker.flood_frames(empty, 100, bystander.served) >= 1
        _, code, debug = attacker.goaway()
        assert code == ENHANCE_YOUR_CALM
        assert b"too many stream resets" in debug
        assert "ENHANCE_YOUR_CALM" in one_line(error_log, attacker)


def test_settings_with_too_many_entries(apps, error_log):
    """One SETTINGS frame with thousands of entries (CVE-2020-11080): 32 at most."""
    with serve(apps) as server, Bystander(server.port):
        attacker = Attacker(server.port)
        attacker.send(frame(SETTINGS, 0, 0, b"\x00\x04\x00\x01\x00\x00" * 2000))
        _, code, debug = attacker.goaway()
        assert code == ENHANCE_YOUR_CALM
        assert b"too many entries" in debug
        assert "ENHANCE_YOUR_CALM" in one_line(error_log, attacker)


@pytest.mark.parametrize(
    "attack",
    [
        pytest.param(window_update(0, 2**31 - 1), id="connection window"),
        pytest.param(frame(SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00"), id="initial window"),
    ],
)
def test_window_overflow(apps, error_log, attack):
    """A window pushed past 2**31-1: FLOW_CONTROL_ERROR for the connection."""
    with serve(apps) as server, Bystander(server.port):
        attacker = Attacker(server.port)
        attacker.send(attack)
        _, code, _ = attacker.goaway()
        assert code == FLOW_CONTROL_ERROR
        assert "FLOW_CONTROL_ERROR" in one_line(error_log, attacker)


def test_stream_window_overflow_resets_the_stream(apps):
    with serve(apps) as server:
        attacker = Attacker(server.port)
        _open_slow(attacker, apps, [1], end_stream=True)
        attacker.send(window_update(1, 2**31 - 1))
        attacker.wait(lambda: 1 in attacker.resets)
        assert attacker.resets[1] == FLOW_CONTROL_ERROR
        attacker.send(headers(3, request(b"/fast")))
        attacker.wait(lambda: 3 in attacker.statuses)  # the connection goes on
        apps.release.set()
        attacker.close()


# -- a client that never reads -----------------------------------------------------------------


def test_client_that_never_reads(apps, error_log):
    """The client opens its windows wide, asks for endless responses and reads nothing.
    The streams' bytes wait on the socket rather than piling up in memory (each app's send
    waits), and once the socket has taken nothing for --timeout-request-body-idle the
    connection is dropped, its apps told."""
    wide = b"\x00\x04\x7f\xff\xff\xff"  # SETTINGS_INITIAL_WINDOW_SIZE 2**31-1
    with (
        serve(apps, timeout_request_body_idle=1.0) as server,
        Bystander(server.port) as bystander,
    ):
        attacker = Attacker(server.port, wide, read=False, rcvbuf=4096)
        attacker.send(frame(SETTINGS, ACK, 0) + window_update(0, 2**31 - 1 - 65535))
        attacker.send(b"".join(headers(i, request(b"/stream")) for i in range(1, 21, 2)))
        attacker.wait(lambda: apps.streamed > 0)
        bystander.served()  # while the attacker's streams wait on its full socket
        assert apps.stream_ends == []  # (it is dropped after a second)
        deadline = time.monotonic() + 15
        while len(apps.stream_ends) < 10:
            assert time.monotonic() < deadline, (apps.stream_ends, apps.streamed)
            time.sleep(0.05)
        # Ten streams of endless 64 KiB pieces: what they handed over is bounded by the
        # socket's buffers and one piece per stream, not by how long they ran.
        assert apps.streamed < 32 * 1024 * 1024, apps.streamed
        line = one_line(error_log, attacker)
        assert "dropped" in line and "read nothing" in line
        attacker.close()


# -- stream ids --------------------------------------------------------------------------------


def test_stream_id_exhaustion(apps, error_log):
    """A client at the last stream id (2**31-1) is answered, and told with GOAWAY to go on on
    a new connection: it has no id left."""
    with serve(apps) as server, Bystander(server.port):
        attacker = Attacker(server.port)
        last = 2**31 - 1
        attacker.send(headers(last, request(b"/fast")))
        attacker.wait(lambda: last in attacker.statuses)
        assert attacker.statuses[last] == 200
        last_id, code, _ = attacker.goaway()
        assert (last_id, code) == (last, NO_ERROR)
        assert error_log(attacker.port) == []  # a graceful close, not an error


@pytest.mark.parametrize(
    ("first", "frames", "code"),
    [
        pytest.param(None, headers(2, request()), PROTOCOL_ERROR, id="HEADERS on an even id"),
        pytest.param(5, headers(3, request()), STREAM_CLOSED, id="HEADERS on a lower id"),
        pytest.param(5, rst(2), PROTOCOL_ERROR, id="RST_STREAM on an even id"),
        pytest.param(5, window_update(4, 1), PROTOCOL_ERROR, id="WINDOW_UPDATE on an even id"),
        pytest.param(5, frame(DATA, 0, 2, b"x"), PROTOCOL_ERROR, id="DATA on an even id"),
        # The reserved bit is not part of the id: 0x80000001 is stream 1.
        pytest.param(0x80000001, headers(1, request()), STREAM_CLOSED, id="the reserved bit"),
    ],
)
def test_stream_ids(apps, error_log, first, frames, code):
    """Client streams are odd and only grow; even ids are the server's, which pushes
    nothing, so every frame on one is a protocol error (RFC 9113, 5.1.1)."""
    with serve(apps) as server:
        attacker = Attacker(server.port)
        if first is not None:
            attacker.send(headers(first, request()))
            attacker.wait(lambda: first & 0x7FFFFFFF in attacker.statuses)
        attacker.send(frames)
        _, got, _ = attacker.goaway()
        assert got == code
        assert len(error_log(attacker.port)) == 1


# -- deadlines ---------------------------------------------------------------------------------


def test_settings_acknowledgement_timeout(apps, error_log):
    """A client that never acknowledges our SETTINGS: GOAWAY SETTINGS_TIMEOUT after
    --timeout-request-header."""
    with serve(apps, timeout_request_header=0.5) as server, Bystander(server.port):
        attacker = Attacker(server.port, ack=False)
        started = time.monotonic()
        attacker.send(headers(1, request(b"/slow")))  # not idle: only the SETTINGS are late
        _, code, _ = attacker.goaway()
        assert code == SETTINGS_TIMEOUT
        assert 0.4 <= time.monotonic() - started < 5
        assert "SETTINGS_TIMEOUT" in one_line(error_log, attacker)
        apps.release.set()


def test_idle_timeout(apps, error_log):
    """A connection with no open stream for --timeout-keep-alive is closed with GOAWAY
    NO_ERROR; PINGs do not keep it alive."""
    with serve(apps, timeout_keep_alive=0.5) as server, Bystander(server.port):
        attacker = Attacker(server.port)
        attacker.send(headers(1, request(b"/fast")))
        attacker.wait(lambda: 1 in attacker.statuses)
        started = time.monotonic()
        while not attacker.goaways and time.monotonic() - started < 5:
            attacker.send(frame(PING, 0, 0, b"stillhere"[:8]))
            time.sleep(0.1)
        last, code, _ = attacker.goaway()
        assert (last, code) == (1, NO_ERROR)
        assert time.monotonic() - started < 3
        assert attacker.pings > 0
        assert error_log(attacker.port) == []  # an idle connection closed is no error
