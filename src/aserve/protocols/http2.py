"""One HTTP/2 connection (RFC 9113): frames, streams, flow control, HPACK, GOAWAY.

Each stream's request is the version-free cycle of protocols/cycle.py; `Http2Stream` adds
the HTTP/2 bytes to it (HEADERS, CONTINUATION, DATA, trailers, RST_STREAM) and its flow
control windows. `Http2Protocol` owns the connection: it parses frames from the bytes it
reads, keeps the settings of both sides and the connection's windows, decodes header blocks
(protocols/hpack.py), validates requests (RFC 9113, 8.2-8.3), starts each stream's app at
once (streams run concurrently, unlike HTTP/1.1's queue), and ends the connection with GOAWAY.

Stream states, as far as a server needs them:
  open                 in `_streams`: the request (`remote_closed` once END_STREAM came) and
                       the response (`end_sent` once our END_STREAM left) are in progress
  closed               not in `_streams`: both sides ended, or a RST_STREAM either way. Ids
                       at most `_last_stream_id` that are not open are closed; those we reset
                       ourselves are remembered for a while (`_reset_ids`), as frames the
                       client sent before it saw our RST_STREAM are to be ignored
  idle                 ids above `_last_stream_id`

Errors: a stream error answers with RST_STREAM (`_reset`) and the connection goes on; a
connection error (`H2ConnectionError`, raised anywhere in frame handling) ends up in one place,
`_connection_error`, which sends GOAWAY, logs one line and closes.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any, Final

from aserve.flow_control import READY, UNPAUSED, WriteFlow
from aserve.logging import TRACE, error_logger
from aserve.protocols.cycle import RequestCycle, build_scope, connection_parts
from aserve.protocols.extensions import accepts_trailers
from aserve.protocols.hpack import Decoder, HpackError, encode_field, encode_status
from aserve.protocols.rejection import (
    BAD_REQUEST,
    CONTENT_TOO_LARGE,
    FIELDS_TOO_LARGE,
    NOT_IMPLEMENTED,
    REQUEST_TIMEOUT,
    URI_TOO_LONG,
    RequestRejected,
)
from aserve.tasks import task_done

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from aserve.protocols.headers import HeaderBlock
    from aserve.proxy import TrustedProxies
    from aserve.state import ServerState

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113, 6).
DATA: Final = 0
HEADERS: Final = 1
PRIORITY: Final = 2
RST_STREAM: Final = 3
SETTINGS: Final = 4
PUSH_PROMISE: Final = 5
PING: Final = 6
GOAWAY: Final = 7
WINDOW_UPDATE: Final = 8
CONTINUATION: Final = 9

# Flags.
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

# Error codes (RFC 9113, 7).
NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
INTERNAL_ERROR: Final = 0x2
FLOW_CONTROL_ERROR: Final = 0x3
SETTINGS_TIMEOUT: Final = 0x4
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
CANCEL: Final = 0x8
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

ERROR_NAMES: Final[dict[int, str]] = {
    0x0: "NO_ERROR",
    0x1: "PROTOCOL_ERROR",
    0x2: "INTERNAL_ERROR",
    0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT",
    0x5: "STREAM_CLOSED",
    0x6: "FRAME_SIZE_ERROR",
    0x7: "REFUSED_STREAM",
    0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR",
    0xA: "CONNECT_ERROR",
    0xB: "ENHANCE_YOUR_CALM",
    0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}

# Settings (RFC 9113, 6.5.2).
SETTINGS_HEADER_TABLE_SIZE: Final = 0x1
SETTINGS_ENABLE_PUSH: Final = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS: Final = 0x3
SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4
SETTINGS_MAX_FRAME_SIZE: Final = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE: Final = 0x6
SETTINGS_ENABLE_CONNECT_PROTOCOL: Final = 0x8  # RFC 8441, 3: WebSockets over HTTP/2

DEFAULT_WINDOW: Final = 65535
DEFAULT_FRAME_SIZE: Final = 16384
MAX_WINDOW: Final = 2**31 - 1
MAX_FRAME_SIZE_LIMIT: Final = 2**24 - 1
# The connection's receive window we keep open: the streams' windows are what hold a client
# back (acknowledged as each app consumes its body), so the connection's is refilled as data
# arrives (see `_on_data`), and one slow reader never stalls the other streams.
CONNECTION_WINDOW: Final = 16 * 1024 * 1024

# How many stream ids we reset ourselves are remembered, so that frames the client sent
# before it saw the reset are ignored rather than answered as errors.
RESET_MEMORY: Final = 64
# Defences against floods (docs/http2.md, "How each attack is answered"). Each is a token
# bucket per connection: it holds up to BURST tokens and regains RATE a second; a frame of its
# kind spends one, and an empty bucket ends the connection with GOAWAY ENHANCE_YOUR_CALM.
# Stream resets: the client's RST_STREAM (rapid reset, CVE-2023-44487) and the resets its
# frames make us send (MadeYouReset, CVE-2025-8671), together: nghttp2's stream reset limit.
RESET_BURST: Final = 1000.0
RESET_RATE: Final = 33.0
# Frames that cost us an answer or work and carry no request ("glitches"): PING, SETTINGS,
# PRIORITY, empty DATA, empty header block fragments, frames of unknown types, WINDOW_UPDATE
# on a window already open or on a closed stream: nghttp2's glitch limit (its current defaults).
GLITCH_BURST: Final = 10000.0
GLITCH_RATE: Final = 330.0
# Entries in one SETTINGS frame (nghttp2's bound, CVE-2020-11080), and CONTINUATION frames
# after one HEADERS (nghttp2's bound, the CONTINUATION flood of 2024: CVE-2024-27316, -28182,
# -27983, -31309), or more when --limit-request-head needs more frames of 16 KiB.
MAX_SETTINGS: Final = 32
MAX_CONTINUATIONS: Final = 8
MAX_STREAM_ID: Final = 2**31 - 1

# A graceful close (`Http2Protocol.shutdown`) sends its one GOAWAY at the first moment no
# stream is in flight. Until then the streams the client opens are answered, for this long (at
# most half the graceful timeout); after it they are left unprocessed, so that the streams in
# flight can run out and the GOAWAY names the last one processed.
GOAWAY_GRACE: Final = 1.0

# Where a connection is in its graceful close (`Http2Protocol._goaway`).
SERVING: Final = 0  # no GOAWAY due
DRAINING: Final = 1  # GOAWAY due once no stream is in flight; new streams are answered
CLOSING: Final = 2  # the same, past GOAWAY_GRACE: new streams are not processed
GONE: Final = 3  # our GOAWAY is out: streams above `_goaway_id` are not processed

# The body of an `Upgrade: h2c` request arrives before HTTP/2 flow control starts: reading
# stops while this much of it waits for its app, as for an HTTP/1.1 body.
UPGRADE_BODY_HIGH_WATER: Final = 64 * 1024

# Closing after the last frame (`Http2Protocol._close`): as HTTP/1.1's lingering close.
LINGER_TIMEOUT: Final = 2.0
LINGER_TIME: Final = 10.0

# Bytes batched for one `transport.write` before they are written anyway (`write`).
WRITE_BATCH_LIMIT: Final = 64 * 1024

# How many distinct valid request fields a connection remembers (`_check_field`).
VALID_FIELDS_MEMORY: Final = 256

_SETTINGS_ACK: Final = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"

_METHODS: Final[dict[bytes, str]] = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
}
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A field name as RFC 9113, 8.2.1 allows it: no uppercase, no control, space or non-ASCII
# byte, no colon (pseudo-headers are told apart before this applies).
_BAD_NAME: Final = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")
_BAD_VALUE: Final = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
# What a Host header or :authority may hold (RFC 9110, 7.2), as in protocols/http.py.
_HOST: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[\w.~!$&'()*+,;=:-]+\]|[\w.~!$&'()*+,;=%-]*)"
    rb"(?::[0-9]*)?",
    re.ASCII,
)
# Connection-specific fields, which HTTP/2 forbids (RFC 9113, 8.2.2).
_CONNECTION_SPECIFIC: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_ERROR_FIELDS: Final = encode_field(b"content-type", b"text/plain; charset=utf-8")


class H2ConnectionError(Exception):
    """A connection error (RFC 9113, 5.4.1): the connection ends with GOAWAY and `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class StreamRejected(Exception):
    """A malformed request (RFC 9113, 8.1.1): RST_STREAM with PROTOCOL_ERROR, no response."""


def frame_header(length: int, kind: int, flags: int, stream_id: int) -> bytes:
    return ((length << 48) | (kind << 40) | (flags << 32) | stream_id).to_bytes(9, "big")


def encode_header_block(block: HeaderBlock) -> bytes:
    """An app's validated header list (protocols/headers.py) as HPACK literals, cached on the
    block: names in lowercase, connection-specific fields left out (RFC 9113, 8.2.2)."""
    encoded = block.h2
    if encoded is None:
        encoded = block.h2 = encode_lines(block.data)
    return encoded


def encode_lines(data: bytes) -> bytes:
    """HTTP/1.1 header lines (`name: value CRLF`, as protocols/headers.py and the server's
    default headers hold them) as HPACK literals."""
    parts: list[bytes] = []
    for line in data.split(b"\r\n"):
        if len(line) == 0:
            continue
        name, _, value = line.partition(b": ")
        name = name.lower()
        if name in _CONNECTION_SPECIFIC:
            continue
        parts.append(encode_field(name, value))
    return b"".join(parts)


class Http2Stream(RequestCycle):
    """A request cycle framed as one HTTP/2 stream (see protocols/cycle.py for the contract):
    its response as HEADERS (and CONTINUATION), DATA and trailing HEADERS within the
    stream's and the connection's send windows, and its request body acknowledged with
    WINDOW_UPDATE as the app consumes it."""

    __slots__ = (
        "app_task",
        "body_read_at",
        "conn",
        "end_sent",
        "expected_length",
        "pending",
        "pending_end",
        "pending_trailers",
        "recv_window",
        "remote_closed",
        "send_waiter",
        "send_window",
        "started_at",
        "stream_id",
        "task",
        "tunnel",
    )

    def __init__(
        self, conn: Http2Protocol, stream_id: int, scope: dict[str, Any], head_only: bool
    ) -> None:
        super().__init__(conn.state, scope, head_only)
        self.conn = conn
        self.stream_id = stream_id
        self.send_window = conn.peer_initial_window
        self.recv_window = conn.initial_window  # what the client may still send us
        self.remote_closed = False  # END_STREAM received
        self.end_sent = False  # our END_STREAM left (or is queued behind window-held data)
        self.expected_length = -1  # the request's content-length, checked against its DATA
        # Response bytes the windows held back, in order, then the end and the trailers.
        self.pending: list[bytes] | None = None
        self.pending_end = False
        self.pending_trailers: bytes | None = None
        self.send_waiter: asyncio.Future[None] | None = None
        self.body_read_at = 0.0
        self.started_at = 0.0
        self.task: asyncio.Task[Any] | None = None
        # The app's Task while it runs on past `run_app`: a stream reset before it ends still
        # counts against the concurrency limit (`Http2Protocol._hold`).
        self.app_task: asyncio.Task[Any] | None = None
        # What the stream carries instead of a request, opened by an extended CONNECT (RFC
        # 8441): a WebSocket's transport (protocols/websocket_h2.py), which takes its DATA,
        # its end and its loss; None once the WebSocket is over.
        self.tunnel: Any = None

    # -- the contract's framing hooks ------------------------------------------------------

    def write_start(self) -> None:
        conn = self.conn
        if not conn.dispatching:
            # The app runs outside the eager start: the head goes out this loop turn even if
            # the body comes much later (server-sent events, long polls).
            loop = conn.loop
            loop.call_soon(
                self._flush_head_soon,
                asyncio.current_task(loop),
                context=conn.state.callback_context,
            )

    def _flush_head_soon(self, task: Any) -> None:
        if task is None or not task.done():
            self.flush_head()

    def _head(self, size: int, more_body: object) -> bytes:
        """The response's header block (HPACK), with a content-length when the first body
        message is the only one and the app declared none."""
        block = self.block
        assert block is not None
        self.head_written = True
        conn = self.conn
        state = conn.state
        status = self.status
        if block.has_server or block.has_date:
            defaults = encode_lines(state.default_headers_without(block.has_server, block.has_date))
        else:
            defaults = conn.default_fields()
        length = b""
        if (
            not more_body
            and block.content_length < 0
            and status >= 200
            and status != 204
            and status != 304
        ):
            length = encode_field(b"content-length", b"%d" % size)
        return encode_status(status) + encode_header_block(block) + defaults + length

    def write_body(self, body: bytes, more_body: object) -> None:
        conn = self.conn
        if self.end_sent or conn.closed:
            return
        if not self.head_written:
            head = self._head(len(body), more_body)
            if not more_body and (self.head_only or len(body) == 0):
                self.end_sent = True
                conn.send_headers(self.stream_id, head, True)
                conn.stream_ended(self)
                return
            conn.send_headers(self.stream_id, head, False)
        if self.head_only:
            if not more_body:
                self.end_sent = True
                conn.send_data(self, b"", True)
            return
        if not more_body:
            self.end_sent = True
            conn.send_data(self, body, True)
        elif len(body) > 0:
            conn.send_data(self, body, False)

    def write_informational(self, status: int, block: HeaderBlock) -> None:
        self.conn.send_headers(
            self.stream_id, encode_status(status) + encode_header_block(block), False
        )

    def trailers_possible(self) -> bool:
        return True

    def write_trailers(self, blocks: list[HeaderBlock]) -> None:
        if self.end_sent or self.conn.closed:
            return
        self.end_sent = True
        fields = b"".join([encode_header_block(block) for block in blocks])
        if self.pending is not None:
            self.pending_trailers = fields  # after the body the windows hold back
            return
        self.conn.send_headers(self.stream_id, fields, True)
        self.conn.stream_ended(self)

    def write_file(self, fd: int, offset: int, count: int, more_body: bool) -> Awaitable[int]:
        return _send_file(self, fd, offset, count, more_body)

    def write_pressure(self) -> Awaitable[None]:
        if self.pending is not None and not self.disconnected:
            waiter = self.send_waiter
            if waiter is None:
                waiter = self.send_waiter = self.conn.loop.create_future()
            return _wait(waiter)
        flow = self.conn.flow
        return flow.drained() if flow.paused else READY

    def body_consumed(self, size: int) -> None:
        conn = self.conn
        if conn.upgrade_stream is self:
            if not conn.closed and self.body_size <= UPGRADE_BODY_HIGH_WATER:
                conn.transport.resume_reading()
            return
        if not self.remote_closed and not self.disconnected:
            self.recv_window += size
            self.conn.send_window_update(self.stream_id, size)

    def response_done(self) -> None:
        self.conn.response_done(self)

    def abort(self) -> None:
        self.conn.reset_stream(self, INTERNAL_ERROR)

    def lose_connection(self) -> None:
        super().lose_connection()
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.lost()

    # -- driven by the connection ----------------------------------------------------------

    def wake_sender(self) -> None:
        waiter = self.send_waiter
        if waiter is not None:
            self.send_waiter = None
            if not waiter.done():
                waiter.set_result(None)


async def _wait(waiter: asyncio.Future[None]) -> None:
    await waiter


async def _send_file(stream: Http2Stream, fd: int, offset: int, count: int, more_body: bool) -> int:
    """File bytes as DATA frames (pathsend, zero-copy send): read in chunks on the default
    executor, each sent under the stream's flow control (HTTP/2 frames every chunk, so the
    kernel cannot send the file straight from the page cache as HTTP/1.1 does)."""
    import os

    loop = stream.conn.loop
    sent = 0
    chunk = 256 * 1024
    while True:
        size = min(chunk, count - sent)
        data = await loop.run_in_executor(None, os.pread, fd, size, offset + sent) if size else b""
        last = len(data) < chunk or sent + len(data) >= count
        if stream.disconnected:
            return sent
        sent += len(data)
        stream.write_body(data, more_body or not last)
        await stream.write_pressure()
        if last:
            return sent


class Http2Protocol(asyncio.Protocol):
    """The state machine of one HTTP/2 connection (see the module docstring).

    Made by the HTTP/1.1 protocol when a connection turns out to speak HTTP/2 (ALPN, the
    client preface, `Upgrade: h2c`), which hands over its transport with `start`.
    """

    __slots__ = (
        "_block",
        "_block_flags",
        "_block_size",
        "_block_started",
        "_block_stream",
        "_blocked",
        "_buffer",
        "_closing",
        "_continuation_limit",
        "_defaults_h1",
        "_defaults_h2",
        "_extensions",
        "_given_addresses",
        "_glitch_at",
        "_glitch_tokens",
        "_goaway",
        "_goaway_at",
        "_goaway_id",
        "_idle_since",
        "_last_stream_id",
        "_linger_end",
        "_linger_read_at",
        "_lingering",
        "_out",
        "_out_size",
        "_paused_at",
        "_preface_left",
        "_proxy",
        "_reading_frames",
        "_recv_window",
        "_reset_at",
        "_reset_ids",
        "_reset_tokens",
        "_send_window",
        "_settings_acked",
        "_settings_received",
        "_settings_sent_at",
        "_starting",
        "_streams",
        "_timer",
        "_timer_at",
        "_upgrade_left",
        "_valid_fields",
        "_zombies",
        "client",
        "closed",
        "decoder",
        "dispatching",
        "flow",
        "initial_window",
        "loop",
        "max_concurrent_streams",
        "max_frame_size",
        "peer_initial_window",
        "peer_max_frame_size",
        "scheme",
        "server",
        "state",
        "transport",
        "upgrade_stream",
    )

    def __init__(self, state: ServerState, addresses: tuple[Any, Any] | None = None) -> None:
        self.state = state
        self.loop = state.loop
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        config = state.config
        # Our settings, announced in the first SETTINGS frame.
        self.max_concurrent_streams: int = config.http2_max_concurrent_streams
        self.initial_window: int = config.http2_initial_window_size
        self.max_frame_size: int = config.http2_max_frame_size
        self.decoder = Decoder(4096, state.limit_request_head)
        # The client's settings (RFC 9113 defaults until its SETTINGS frame).
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame_size = DEFAULT_FRAME_SIZE
        self._send_window = DEFAULT_WINDOW  # the connection's, for our DATA
        self._recv_window = DEFAULT_WINDOW  # the connection's, for the client's DATA
        self._streams: dict[int, Http2Stream] = {}
        self._blocked: list[Http2Stream] = []  # streams with response bytes held back
        self._reset_ids: list[int] = []
        self._last_stream_id = 0
        self._buffer = b""
        self._preface_left = len(PREFACE)
        self._settings_received = False
        # A header block awaiting its CONTINUATION frames.
        self._block: list[bytes] | None = None
        self._block_stream = 0
        self._block_flags = 0
        self._block_size = 0
        self._block_started = 0.0
        self._out: list[bytes] | None = None
        # Streams opened by the read being handled, whose apps start after it (`_start_streams`).
        self._starting: list[Http2Stream] | None = None
        self._out_size = 0
        self.dispatching = False
        self.flow = UNPAUSED
        self.closed = False
        self._closing = False  # the final GOAWAY is out: close once no stream is left
        self._goaway = SERVING  # SERVING, DRAINING, CLOSING or GONE (above)
        self._goaway_at = 0.0
        self._goaway_id = 0  # CLOSING, GONE: the last stream processed, which GOAWAY names
        self._defaults_h1 = b""
        self._defaults_h2 = b""
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self._extensions: dict[str, Any] = state.http_scope_template["extensions"]
        self._proxy: TrustedProxies | None = None
        self._given_addresses = addresses
        self._idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # The body of the request that came with `Upgrade: h2c`, still to be read.
        self.upgrade_stream: Http2Stream | None = None
        self._upgrade_left = 0
        # Closing (`_close`): what the client still sends is read and dropped until then.
        self._lingering = False
        self._linger_read_at = 0.0
        self._linger_end = 0.0
        # Regular request fields already found valid on this connection (`_check_field`).
        self._valid_fields: dict[int, tuple[bytes, ...]] = {}
        # The defences (see RESET_BURST and below): the two token buckets, the streams reset
        # while their apps still run, the acknowledgement of our SETTINGS, when writing paused.
        self._reset_tokens = RESET_BURST
        self._reset_at = 0.0
        self._glitch_tokens = GLITCH_BURST
        self._glitch_at = 0.0
        self._reading_frames = False  # the client's frames are being handled (`_reset_id`)
        self._zombies = 0
        self._settings_acked = False
        self._settings_sent_at = 0.0
        self._paused_at = 0.0
        self._continuation_limit = max(
            MAX_CONTINUATIONS, state.limit_request_head // DEFAULT_FRAME_SIZE + 2
        )

    # -- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.start(transport, b"")

    def start(
        self,
        transport: asyncio.BaseTransport,
        data: bytes,
        preface_read: int = 0,
        upgraded: tuple[Any, ...] | None = None,
    ) -> None:
        """Take the connection: `data` is what was read past what the caller consumed
        (`preface_read` bytes of the client preface among it), `upgraded` the request that
        came with `Upgrade: h2c`, which becomes stream 1."""
        self.transport = transport  # type: ignore[assignment]
        state = self.state
        state.connections.add(self)
        self.server, self.client, self.scheme, self._extensions, self._proxy = connection_parts(
            state, transport, self._given_addresses
        )
        self._preface_left = len(PREFACE) - preface_read
        if state.metrics is not None:
            state.metrics.http2_connection()
        self._idle_since = self.loop.time()
        self._arm(self._idle_since + state.timeout_request_header)
        self._send_settings()
        if upgraded is not None:
            self._open_upgraded(upgraded)
        if len(data) > 0:
            self.data_received(data)
        if state.shutting_down:
            self.shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._lose_streams()
        self.flow.resume()

    def _lose_streams(self) -> None:
        """The connection is over for every stream: each app sees `http.disconnect`."""
        streams = list(self._streams.values())
        self._streams.clear()
        self._blocked.clear()
        for stream in streams:
            stream.lose_connection()
            stream.wake_sender()

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        flow = self.flow
        if flow is UNPAUSED:
            flow = self.flow = WriteFlow(self.loop)
        flow.pause()
        # A client that does not read what we send gets nothing more read from it either:
        # our answers to its frames (PING, SETTINGS, errors) cannot pile up in memory. The
        # streams' DATA waits on them (`send_data`), and a client that reads nothing for
        # --timeout-request-body-idle is dropped (`_on_timer`).
        if not self.closed:
            self.transport.pause_reading()
            self._paused_at = self.loop.time()
            self._arm(self._paused_at + self.state.timeout_request_body_idle)

    def resume_writing(self) -> None:
        self.flow.resume()
        if not self.closed:
            self.transport.resume_reading()
            if len(self._blocked) > 0:
                self._send_blocked()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            if self._lingering:
                self._linger_read_at = self.loop.time()  # still sending: see `_close`
            return
        if len(self._buffer) > 0:
            data = self._buffer + data
            self._buffer = b""
        self.dispatching = True
        try:
            self._reading_frames = True
            self._frames(data)
            self._reading_frames = False
            if self._starting is not None:
                self._start_streams()
            self._goaway_if_drained()
        except H2ConnectionError as exc:
            self._connection_error(exc.code, exc.reason)
        except HpackError as hpack_error:
            self._connection_error(COMPRESSION_ERROR, f"header block: {hpack_error}")
        finally:
            self._reading_frames = False
            self.dispatching = False
            self._flush()

    # -- defences (see RESET_BURST and below) ----------------------------------------------

    def _spend_reset(self, what: str) -> None:
        """A stream reset, the client's or one its frames made us send: a token of the reset
        bucket, or the end of the connection once it is empty."""
        now = self.loop.time()
        tokens = self._reset_tokens + (now - self._reset_at) * RESET_RATE
        self._reset_at = now
        if tokens > RESET_BURST:
            tokens = RESET_BURST
        if tokens < 1.0:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, f"too many stream resets ({what})")
        self._reset_tokens = tokens - 1.0

    def _glitch(self, what: str) -> None:
        """A frame that costs work and carries no request: a token of the glitch bucket, or
        the end of the connection once it is empty."""
        now = self.loop.time()
        tokens = self._glitch_tokens + (now - self._glitch_at) * GLITCH_RATE
        self._glitch_at = now
        if tokens > GLITCH_BURST:
            tokens = GLITCH_BURST
        if tokens < 1.0:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, f"flood of {what}")
        self._glitch_tokens = tokens - 1.0

    def _hold(self, stream: Http2Stream) -> None:
        """A stream closed by a reset, either way, whose app still runs: it counts against
        the concurrency limit until the app's Task ends, so resetting streams does not let a
        client run more apps at once than SETTINGS_MAX_CONCURRENT_STREAMS (rapid reset)."""
        task = stream.app_task
        if task is not None:
            stream.app_task = None
            if not task_done(task):
                self._zombies += 1
                task.add_done_callback(self._zombie_done)

    def _zombie_done(self, task: asyncio.Task[Any]) -> None:
        self._zombies -= 1

    def _ignored(self, stream_id: int) -> bool:
        """Is the stream one the client opened after our GOAWAY? Its frames are dropped
        unanswered: the GOAWAY told the client it is not processed (RFC 9113, 6.8)."""
        return self._goaway >= CLOSING and self._goaway_id < stream_id <= self._last_stream_id

    def _idle(self, stream_id: int) -> bool:
        """Is the stream idle, never opened? Ids above the last the client opened, and every
        even id: those are the server's, and aserve pushes nothing (RFC 9113, 5.1.1)."""
        return stream_id > self._last_stream_id or not stream_id & 1

    # -- reading frames --------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        end = len(data)
        i = 0
        if self._upgrade_left > 0:
            data = self._upgrade_body(data)
            end = len(data)
        if self._preface_left:
            start = len(PREFACE) - self._preface_left
            take = min(self._preface_left, end)
            if data[:take] != PREFACE[start : start + take]:
                raise H2ConnectionError(PROTOCOL_ERROR, "invalid client preface")
            self._preface_left -= take
            i = take
        max_size = self.max_frame_size
        while end - i >= 9:
            length = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2]
            if length > max_size:
                raise H2ConnectionError(
                    FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE"
                )
            start = i + 9
            stop = start + length
            if stop > end:
                break
            kind = data[i + 3]
            flags = data[i + 4]
            stream_id = (
                ((data[i + 5] & 0x7F) << 24)
                | (data[i + 6] << 16)
                | (data[i + 7] << 8)
                | data[i + 8]
            )
            i = stop
            if self._block is not None and (
                kind != CONTINUATION or stream_id != self._block_stream
            ):
                raise H2ConnectionError(PROTOCOL_ERROR, "expected a CONTINUATION frame")
            if not self._settings_received:
                if kind != SETTINGS or flags & ACK:
                    raise H2ConnectionError(PROTOCOL_ERROR, "the preface must end with SETTINGS")
                self._settings_received = True
            if kind == HEADERS:
                self._on_headers(data, start, stop, flags, stream_id)
            elif kind == DATA:
                self._on_data(data, start, stop, flags, stream_id)
            elif kind == WINDOW_UPDATE:
                self._on_window_update(data, start, stop, stream_id)
            elif kind == SETTINGS:
                self._on_settings(data, start, stop, flags, stream_id)
            elif kind == RST_STREAM:
                self._on_rst_stream(data, start, stop, stream_id)
            elif kind == PING:
                self._on_ping(data, start, stop, flags, stream_id)
            elif kind == PRIORITY:
                self._on_priority(data, start, stop, stream_id)
            elif kind == CONTINUATION:
                self._on_continuation(data, start, stop, flags, stream_id)
            elif kind == GOAWAY:
                self._on_goaway(data, start, stop, stream_id)
            elif kind == PUSH_PROMISE:
                raise H2ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            else:
                # Frames of unknown types are ignored (RFC 9113, 5.5), within the glitch bound.
                self._glitch("frames of unknown types")
            if self.closed:
                return
        if i < end:
            self._buffer = data[i:]

    def _payload(self, data: bytes, start: int, stop: int, flags: int) -> tuple[int, int]:
        """The payload of a DATA or HEADERS frame without its padding (and, for HEADERS, its
        priority), as (start, stop)."""
        if flags & PADDED:
            if stop == start:
                raise H2ConnectionError(PROTOCOL_ERROR, "padded frame without a pad length")
            pad = data[start]
            start += 1
            if pad > stop - start:
                raise H2ConnectionError(PROTOCOL_ERROR, "padding longer than the frame")
            stop -= pad
        return start, stop

    def _on_headers(self, data: bytes, start: int, stop: int, flags: int, stream_id: int) -> None:
        if stream_id == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, stop = self._payload(data, start, stop, flags)
        if flags & PRIORITY_FLAG:
            if stop - start < 5:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            depends = (
                ((data[start] & 0x7F) << 24)
                | (data[start + 1] << 16)
                | (data[start + 2] << 8)
                | data[start + 3]
            )
            start += 5
            if depends == stream_id:
                if stream_id not in self._streams and stream_id > self._last_stream_id:
                    self._last_stream_id = stream_id
                self._reset_id(stream_id, PROTOCOL_ERROR)
                # (The block must still be decoded, to keep the HPACK table in step.)
                if flags & END_HEADERS:
                    self.decoder.decode(data[start:stop])
                else:
                    self._begin_block(data[start:stop], -stream_id, flags)
                return
        if flags & END_HEADERS:
            self._on_header_block(stream_id, flags, data[start:stop])
        else:
            if stop == start:
                self._glitch("empty HEADERS frames")
            self._begin_block(data[start:stop], stream_id, flags)

    def _begin_block(self, fragment: bytes, stream_id: int, flags: int) -> None:
        self._block = [fragment]
        self._block_stream = abs(stream_id)
        # A negative id: the block of a stream already refused, decoded only for HPACK.
        self._block_flags = flags if stream_id > 0 else -1
        self._block_size = len(fragment)
        self._block_started = self.loop.time()
        self._arm(self._block_started + self.state.timeout_request_header)

    def _on_continuation(
        self, data: bytes, start: int, stop: int, flags: int, stream_id: int
    ) -> None:
        block = self._block
        if block is None:
            raise H2ConnectionError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        block.append(data[start:stop])
        self._block_size += stop - start
        if self._block_size > self.state.limit_request_head + self.max_frame_size:
            # Decoding it is the only way to keep the HPACK table in step, and we will not.
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
        if len(block) > self._continuation_limit + 1:  # (the HEADERS frame's fragment first)
            # Empty or tiny CONTINUATION frames would never reach the size bound.
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
        if stop == start and not flags & END_HEADERS:
            self._glitch("empty CONTINUATION frames")
        if flags & END_HEADERS:
            self._block = None
            fragment = b"".join(block)
            if self._block_flags < 0:
                self.decoder.decode(fragment)
            else:
                self._on_header_block(stream_id, self._block_flags, fragment)

    def _on_header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        fields = self.decoder.decode(block)
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._on_trailers(stream, flags, fields)
            return
        if stream_id <= self._last_stream_id:
            if self._ignored(stream_id):
                return  # trailers of a stream not processed
            raise H2ConnectionError(STREAM_CLOSED, "HEADERS on a closed stream")
        if not stream_id & 1:
            raise H2ConnectionError(PROTOCOL_ERROR, "even stream id from a client")
        self._last_stream_id = stream_id
        if self._goaway >= CLOSING:
            return  # not processed, as our GOAWAY says or will say (RFC 9113, 6.8)
        if len(self._streams) + self._zombies >= self.max_concurrent_streams:
            self._reset_id(stream_id, REFUSED_STREAM)
            return
        end_stream = bool(flags & END_STREAM)
        if fields is None:
            self._refuse(stream_id, FIELDS_TOO_LARGE, "request head too large", end_stream)
            return
        try:
            stream = self._open_stream(stream_id, fields, end_stream)
        except StreamRejected as exc:
            # At TRACE: a client may repeat these at will, the connection error is the line
            # that stands for a connection (`_connection_error`).
            error_logger.log(TRACE, "Malformed HTTP/2 request: %s", exc)
            self._reset_id(stream_id, PROTOCOL_ERROR)
            return
        except RequestRejected as rejected:
            error_logger.log(TRACE, "Invalid HTTP/2 request (%d): %s", rejected.status, rejected)
            self._refuse(stream_id, rejected.status, str(rejected), end_stream)
            return
        # Its app starts once the read's frames are handled: a body in the same read (a
        # POST's HEADERS and DATA come together) is there for its first `receive`.
        starting = self._starting
        if starting is None:
            self._starting = [stream]
        else:
            starting.append(stream)
        if stream_id == MAX_STREAM_ID:
            # The client has no stream id left: it finishes here and goes on on a new
            # connection (RFC 9113, 5.1.1), which the GOAWAY tells it at once.
            self._final_goaway()

    def _open_stream(
        self, stream_id: int, fields: list[tuple[bytes, ...]], end_stream: bool
    ) -> Http2Stream:
        """The request of a new stream, validated (RFC 9113, 8.2-8.3), as its cycle."""
        state = self.state
        method = b""
        scheme = b""
        path = b""
        authority: bytes | None = None
        protocol: bytes | None = None
        host: bytes | None = None
        headers: list[Any] = []
        pseudo_done = False
        content_length = -1
        cookies: list[bytes] | None = None
        te: bytes | None = None
        forwarded = False
        valid = self._valid_fields
        for field in fields:
            name: bytes = field[0]
            value: bytes = field[1]
            if len(name) > 0 and name[0] == 0x3A:  # ":"
                if pseudo_done:
                    raise StreamRejected("pseudo-header after a regular header")
                if name == b":method":
                    if len(method) > 0:
                        raise StreamRejected("duplicate :method")
                    method = value
                elif name == b":path":
                    if len(path) > 0:
                        raise StreamRejected("duplicate :path")
                    if len(value) == 0:
                        raise StreamRejected("empty :path")
                    path = value
                elif name == b":scheme":
                    if len(scheme) > 0:
                        raise StreamRejected("duplicate :scheme")
                    scheme = value
                elif name == b":authority":
                    if authority is not None:
                        raise StreamRejected("duplicate :authority")
                    authority = value
                elif name == b":protocol" and state.websockets:
                    # Announced with SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441, 4); without
                    # it, an unknown pseudo-header.
                    if protocol is not None:
                        raise StreamRejected("duplicate :protocol")
                    protocol = value
                else:
                    raise StreamRejected(f"pseudo-header {name!r} in a request")
                continue
            pseudo_done = True
            # Most fields repeat from request to request as the same tuple, the HPACK table's:
            # each is checked once per connection, and known again by its identity.
            if valid.get(id(field)) is not field:
                self._check_field(field, name, value)
            size = len(name)
            if size == 2 and name == b"te":
                if value.lower() != b"trailers":
                    raise StreamRejected("TE other than trailers")
                te = value
            elif size == 14 and name == b"content-length":
                if not value.isdigit() or (content_length >= 0 and int(value) != content_length):
                    raise StreamRejected("invalid content-length")
                content_length = int(value)
            elif size == 6 and name == b"cookie":
                # Sent as separate fields in HTTP/2, joined into one for an HTTP/1.1-minded
                # app (RFC 9113, 8.2.3).
                if cookies is None:
                    cookies = [value]
                else:
                    cookies.append(value)
                continue
            elif size == 4 and name == b"host":
                if host is not None:
                    raise RequestRejected(BAD_REQUEST, "more than one Host header")
                host = value
            elif (size > 12 and name[:12] == b"x-forwarded-") or (
                size == 9 and name == b"forwarded"
            ):
                forwarded = True
            headers.append(field)
        if cookies is not None:
            headers.append((b"cookie", b"; ".join(cookies)))
        if len(headers) > state.limit_request_fields:
            raise RequestRejected(FIELDS_TOO_LARGE, "too many header fields")
        if len(method) == 0:
            raise StreamRejected("no :method")
        if protocol is not None:
            # An extended CONNECT (RFC 8441, 4): a request in form, with :scheme and :path
            # (checked below), that opens a tunnel; a WebSocket is the one aserve speaks.
            if method != b"CONNECT":
                raise StreamRejected(":protocol in a request other than CONNECT")
            if _TOKEN.fullmatch(protocol) is None:
                raise StreamRejected("invalid :protocol")
            if protocol.lower() != b"websocket":
                raise RequestRejected(NOT_IMPLEMENTED, "CONNECT :protocol is not websocket")
        elif method == b"CONNECT":
            if len(scheme) > 0 or len(path) > 0 or authority is None:
                raise StreamRejected("CONNECT needs :authority only")
            raise RequestRejected(NOT_IMPLEMENTED, "CONNECT is not supported")
        if len(scheme) == 0 or len(path) == 0:
            raise StreamRejected("no :scheme or :path")
        if method == b"GET":
            method_text = "GET"
        elif method == b"POST":
            method_text = "POST"
        else:
            known = _METHODS.get(method)
            if known is None:
                if _TOKEN.fullmatch(method) is None:
                    raise StreamRejected("invalid :method")
                known = method.decode("ascii")
            method_text = known
        if authority is not None:
            if authority != state.valid_host:  # most requests repeat the last valid one
                if _HOST.fullmatch(authority) is None:
                    raise RequestRejected(BAD_REQUEST, "invalid :authority")
                state.valid_host = authority
            if host is None:
                headers.insert(0, (b"host", authority))
        elif host is not None and host != state.valid_host:
            if _HOST.fullmatch(host) is None:
                raise RequestRejected(BAD_REQUEST, "invalid Host header")
            state.valid_host = host
        if len(path) > state.limit_request_line:
            raise RequestRejected(URI_TOO_LONG, "request target too long")
        if content_length > 0:
            limit = state.limit_request_body
            if limit is not None and content_length > limit:
                raise RequestRejected(CONTENT_TOO_LARGE, "request body too large")
            if end_stream:
                raise StreamRejected("content-length with no body")
        if path[0] == 0x2F:  # "/"
            if 0x23 in path:  # "#"
                raise RequestRejected(BAD_REQUEST, "fragment in the request target")
            if 0x3F in path:  # "?"
                raw_path, _, query = path.partition(b"?")
            else:
                raw_path, query = path, b""
        elif path == b"*" and method == b"OPTIONS":
            raw_path, query = path, b""
        else:
            raise StreamRejected("invalid :path")
        scope = build_scope(
            state,
            "2",
            method_text,
            raw_path,
            query,
            headers,
            self.server,
            self.client,
            self.scheme,
            self._extensions,
            self._proxy if forwarded else None,
        )
        stream = Http2Stream(self, stream_id, scope, method_text == "HEAD")
        if protocol is not None:
            from aserve.protocols.websocket_h2 import open_websocket

            stream.tunnel = open_websocket(self, stream)
        elif state.metrics is not None:
            state.metrics.http2_request()
        stream.expected_length = content_length
        if te is not None:
            stream.ext = accepts_trailers(te)
        if end_stream:
            stream.remote_closed = True
            stream.body_done = True
        else:
            stream.body_read_at = self.loop.time()
            self._arm(stream.body_read_at + state.timeout_request_body_idle)
        self._streams[stream_id] = stream
        return stream

    def _check_field(self, field: tuple[bytes, ...], name: bytes, value: bytes) -> None:
        """A regular field as RFC 9113, 8.2 allows it, within our field size; remembered
        as valid for the rest of the connection (a bounded number of them, each kept alive
        by the memory itself, so that no other object can take its identity)."""
        if len(name) == 0 or _BAD_NAME.search(name) is not None:
            raise StreamRejected(f"invalid header name {name!r}")
        if _BAD_VALUE.search(value) is not None:
            raise StreamRejected(f"invalid value of header {name!r}")
        if len(name) + len(value) + 4 > self.state.limit_request_field_size:
            raise RequestRejected(FIELDS_TOO_LARGE, "header field too large")
        if name in _CONNECTION_SPECIFIC:
            raise StreamRejected(f"connection-specific header {name!r}")
        valid = self._valid_fields
        if len(valid) >= VALID_FIELDS_MEMORY:
            valid.clear()
        valid[id(field)] = field

    def _start_streams(self) -> None:
        """Call the apps of the streams opened by the read just handled, in order."""
        starting = self._starting
        self._starting = None
        if starting is not None:
            for stream in starting:
                if not stream.disconnected and not self.closed:
                    if stream.tunnel is not None:
                        stream.tunnel.start()
                    else:
                        self._run(stream)

    def _run(self, stream: Http2Stream) -> None:
        """Call the stream's app (eagerly: a request that needs no I/O is answered here)."""
        task = stream.run_app()
        if task is not None:
            stream.app_task = task  # (see `_hold`)
            if not stream.complete:
                timeout = self.state.timeout_request
                if timeout is not None and not stream.started:
                    stream.task = task
                    stream.started_at = self.loop.time()
                    self._arm(stream.started_at + timeout)
                if stream.started and not stream.head_written and not stream.disconnected:
                    stream.flush_head()  # the app paused between start and body

    def _on_trailers(
        self, stream: Http2Stream, flags: int, fields: list[tuple[bytes, ...]] | None
    ) -> None:
        if stream.remote_closed:
            self._reset(stream, STREAM_CLOSED)
            return
        if not flags & END_STREAM:
            self._reset(stream, PROTOCOL_ERROR)
            return
        if fields is not None:
            for name, _ in fields:
                if len(name) > 0 and name[0] == 0x3A:
                    self._reset(stream, PROTOCOL_ERROR)
                    return
        # (An ASGI app has no request trailers to receive: they end the body.)
        self._end_of_request(stream)

    def _end_of_request(self, stream: Http2Stream) -> None:
        if 0 <= stream.expected_length != stream.received:
            self._reset(stream, PROTOCOL_ERROR)
            return
        stream.remote_closed = True
        if stream.tunnel is not None:
            stream.tunnel.eof_received()
        else:
            stream.end_body()
        if stream.end_sent and stream.pending is None:
            self._forget(stream)

    def _on_data(self, data: bytes, start: int, stop: int, flags: int, stream_id: int) -> None:
        if stream_id == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        length = stop - start
        # Flow control counts the whole frame, padding included.
        self._recv_window -= length
        if self._recv_window < 0:
            raise H2ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        if self._recv_window < CONNECTION_WINDOW // 2:
            self.send_window_update(0, CONNECTION_WINDOW - self._recv_window)
            self._recv_window = CONNECTION_WINDOW
        start, stop = self._payload(data, start, stop, flags)
        if stop == start and not flags & END_STREAM:
            self._glitch("empty DATA frames")
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._ignored(stream_id):
                return
            if self._idle(stream_id):
                raise H2ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
            if stream_id not in self._reset_ids:
                self._reset_id(stream_id, STREAM_CLOSED)
            return
        if stream.remote_closed:
            self._reset(stream, STREAM_CLOSED)
            return
        stream.recv_window -= length
        if stream.recv_window < 0:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        size = stop - start
        padding = length - size
        if padding > 0:
            stream.recv_window += padding  # never handed to the app: acknowledged now
            self.send_window_update(stream_id, padding)
        if size > 0:
            tunnel = stream.tunnel
            if tunnel is not None:
                # A WebSocket's bytes: its own limits apply (--ws-max-size), and it
                # acknowledges them as it reads them.
                tunnel.data_received(data[start:stop])
                if flags & END_STREAM:
                    self._end_of_request(stream)
                return
            limit = self.state.limit_request_body
            if limit is not None and stream.received + size > limit:
                self._request_error(stream, CONTENT_TOO_LARGE, "request body too large")
                return
            if stream.complete or stream.disconnected:
                # The app is done with it: acknowledged at once, as it will never read it.
                stream.received += size
                stream.recv_window += size
                self.send_window_update(stream_id, size)
            else:
                stream.feed_body(data[start:stop])
            if 0 <= stream.expected_length < stream.received:
                self._reset(stream, PROTOCOL_ERROR)
                return
        if flags & END_STREAM:
            self._end_of_request(stream)
        else:
            stream.body_read_at = self.loop.time()
            self._arm(stream.body_read_at + self.state.timeout_request_body_idle)

    def _on_window_update(self, data: bytes, start: int, stop: int, stream_id: int) -> None:
        if stop - start != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE of a wrong size")
        increment = (
            ((data[start] & 0x7F) << 24)
            | (data[start + 1] << 16)
            | (data[start + 2] << 8)
            | data[start + 3]
        )
        if stream_id == 0:
            if increment == 0:
                raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            if self._send_window >= DEFAULT_WINDOW:
                # Not the return of what we sent: once per connection from most clients (a
                # larger window than the default), at will from a flood.
                self._glitch("WINDOW_UPDATE frames")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise H2ConnectionError(FLOW_CONTROL_ERROR, "connection window above 2**31-1")
            self._send_blocked()
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._ignored(stream_id):
                return
            if self._idle(stream_id):
                raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            self._glitch("WINDOW_UPDATE frames")
            if increment == 0 and stream_id not in self._reset_ids:
                self._reset_id(stream_id, PROTOCOL_ERROR)
            return  # a closed stream: the client may not have known yet
        if increment == 0:
            self._reset(stream, PROTOCOL_ERROR)
            return
        if stream.send_window >= self.peer_initial_window:
            self._glitch("WINDOW_UPDATE frames")
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._reset(stream, FLOW_CONTROL_ERROR)
            return
        if stream.pending is not None:
            self._send_blocked()

    def _on_settings(self, data: bytes, start: int, stop: int, flags: int, stream_id: int) -> None:
        if stream_id != 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        length = stop - start
        if flags & ACK:
            if length != 0:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS acknowledgement with a payload")
            if self._settings_acked:
                self._glitch("SETTINGS frames")  # we sent one SETTINGS frame, acknowledged
            self._settings_acked = True
            return
        if length % 6 != 0:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS of a wrong size")
        if length > MAX_SETTINGS * 6:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "too many entries in one SETTINGS frame")
        self._glitch("SETTINGS frames")
        self._apply_settings(data, start, stop)
        self.write(_SETTINGS_ACK)

    def _apply_settings(self, data: bytes, start: int, stop: int) -> None:
        window_delta = 0
        for i in range(start, stop, 6):
            key = (data[i] << 8) | data[i + 1]
            value = (data[i + 2] << 24) | (data[i + 3] << 16) | (data[i + 4] << 8) | data[i + 5]
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2ConnectionError(
                        FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2**31-1"
                    )
                window_delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += window_delta
                    if stream.send_window > MAX_WINDOW:
                        raise H2ConnectionError(FLOW_CONTROL_ERROR, "stream window above 2**31-1")
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if value < DEFAULT_FRAME_SIZE or value > MAX_FRAME_SIZE_LIMIT:
                    raise H2ConnectionError(PROTOCOL_ERROR, "invalid SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame_size = value
            elif key == SETTINGS_ENABLE_PUSH and value > 1:
                raise H2ConnectionError(PROTOCOL_ERROR, "invalid SETTINGS_ENABLE_PUSH")
            # SETTINGS_HEADER_TABLE_SIZE: our encoder uses no dynamic table, any size suits it.
            # Unknown settings are ignored (RFC 9113, 6.5.2).
        if window_delta > 0:
            self._send_blocked()

    def _on_rst_stream(self, data: bytes, start: int, stop: int, stream_id: int) -> None:
        if stop - start != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM of a wrong size")
        if stream_id == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if self._ignored(stream_id):
            return
        if self._idle(stream_id):
            raise H2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        self._spend_reset("RST_STREAM")
        stream = self._streams.get(stream_id)
        if stream is not None:
            self._forget(stream)
            self._hold(stream)
            stream.lose_connection()
            stream.wake_sender()
        elif stream_id in self._reset_ids:
            # Both sides reset it: the client has seen ours, so from now on its frames on
            # this stream are errors, not stragglers.
            self._reset_ids.remove(stream_id)

    def _on_ping(self, data: bytes, start: int, stop: int, flags: int, stream_id: int) -> None:
        if stop - start != 8:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "PING of a wrong size")
        if stream_id != 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "PING on a stream")
        if flags & ACK:
            self._glitch("PING acknowledgements")  # of a PING we never sent
            return
        self._glitch("PING frames")
        self.write(b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + data[start:stop])

    def _on_priority(self, data: bytes, start: int, stop: int, stream_id: int) -> None:
        if stream_id == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        self._glitch("PRIORITY frames")
        code = 0
        if stop - start != 5:
            code = FRAME_SIZE_ERROR
        elif (
            ((data[start] & 0x7F) << 24)
            | (data[start + 1] << 16)
            | (data[start + 2] << 8)
            | data[start + 3]
        ) == stream_id:
            code = PROTOCOL_ERROR  # a stream depending on itself
        if code != 0:
            stream = self._streams.get(stream_id)
            if stream is not None:
                self._reset(stream, code)  # its app sees the request end
            else:
                self._reset_id(stream_id, code)
        # Priorities are otherwise advice we do not follow (RFC 9113 deprecates them).

    def _on_goaway(self, data: bytes, start: int, stop: int, stream_id: int) -> None:
        if stream_id != 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
        if stop - start < 8:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "GOAWAY too short")
        code = (
            (data[start + 4] << 24)
            | (data[start + 5] << 16)
            | (data[start + 6] << 8)
            | data[start + 7]
        )
        if code != NO_ERROR:
            # The client ends the connection on an error: its requests end with it (each app
            # sees http.disconnect), as on a connection lost.
            error_logger.debug(
                "HTTP/2 client ended the connection (%s)", ERROR_NAMES.get(code, str(code))
            )
            self._send_goaway(NO_ERROR)
            self._close()
            self._lose_streams()
            return
        # The client is leaving: the streams it opened are answered, then we close.
        self.shutdown()

    # -- writing frames --------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Batch what is written: while frames are handled, until the read is done; else (an
        app that resumed after waiting, for its body above all) until the end of the loop
        turn, so that the streams answered in one turn share one `transport.write` (one
        syscall) rather than one each. Past WRITE_BATCH_LIMIT the batch goes at once, so
        flow control still sees it."""
        if self.closed:
            return
        out = self._out
        if out is None:
            self._out = [data]
            self._out_size = len(data)
            if not self.dispatching:
                self.loop.call_soon(self._flush, context=self.state.callback_context)
        else:
            out.append(data)
            self._out_size += len(data)
        if self._out_size >= WRITE_BATCH_LIMIT:
            self._flush()

    def _flush(self) -> None:
        out = self._out
        if out is not None:
            self._out = None
            if not self.closed:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _send_settings(self) -> None:
        settings = [
            (SETTINGS_MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
            (SETTINGS_MAX_HEADER_LIST_SIZE, self.state.limit_request_head),
            (SETTINGS_ENABLE_PUSH, 0),
        ]
        if self.initial_window != DEFAULT_WINDOW:
            settings.append((SETTINGS_INITIAL_WINDOW_SIZE, self.initial_window))
        if self.state.websockets:
            settings.append((SETTINGS_ENABLE_CONNECT_PROTOCOL, 1))
        if self.max_frame_size != DEFAULT_FRAME_SIZE:
            settings.append((SETTINGS_MAX_FRAME_SIZE, self.max_frame_size))
        payload = b"".join(
            [key.to_bytes(2, "big") + value.to_bytes(4, "big") for key, value in settings]
        )
        self.write(frame_header(len(payload), SETTINGS, 0, 0) + payload)
        self.send_window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW)
        self._recv_window = CONNECTION_WINDOW
        # Their acknowledgement is due within --timeout-request-header (`_on_timer`).
        self._settings_sent_at = self.loop.time()
        self._arm(self._settings_sent_at + self.state.timeout_request_header)

    def send_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        flags = END_STREAM if end_stream else 0
        size = len(block)
        max_size = self.peer_max_frame_size
        if size <= max_size:
            self.write(frame_header(size, HEADERS, flags | END_HEADERS, stream_id) + block)
            return
        parts = [frame_header(max_size, HEADERS, flags, stream_id) + block[:max_size]]
        for i in range(max_size, size, max_size):
            piece = block[i : i + max_size]
            last = i + max_size >= size
            parts.append(
                frame_header(len(piece), CONTINUATION, END_HEADERS if last else 0, stream_id)
                + piece
            )
        self.write(b"".join(parts))

    def send_data(self, stream: Http2Stream, data: bytes, end_stream: bool) -> None:
        """DATA frames within the windows; what they cannot take waits in `pending`."""
        if stream.pending is not None:
            stream.pending.append(data)
            stream.pending_end = end_stream
            return
        size = len(data)
        window = min(stream.send_window, self._send_window)
        if size <= window and size <= self.peer_max_frame_size and not self.flow.paused:
            stream.send_window -= size
            self._send_window -= size
            self.write(
                frame_header(size, DATA, END_STREAM if end_stream else 0, stream.stream_id) + data
            )
            if end_stream:
                self.stream_ended(stream)
            return
        sent = self._send_some(stream, data)
        if sent < size:
            stream.pending = [data[sent:]]
            stream.pending_end = end_stream
            self._blocked.append(stream)
        elif end_stream:
            self.write(frame_header(0, DATA, END_STREAM, stream.stream_id))
            self.stream_ended(stream)

    def _send_some(self, stream: Http2Stream, data: bytes) -> int:
        """As much of `data` as the windows allow, in frames of the client's maximum size;
        how many bytes went."""
        size = len(data)
        sent = 0
        if self.flow.paused:
            return sent  # the socket is full: held like data the windows hold
        max_size = self.peer_max_frame_size
        parts: list[bytes] = []
        while sent < size:
            room = min(stream.send_window, self._send_window, max_size, size - sent)
            if room <= 0:
                break
            parts.append(frame_header(room, DATA, 0, stream.stream_id) + data[sent : sent + room])
            sent += room
            stream.send_window -= room
            self._send_window -= room
        if len(parts) > 0:
            self.write(b"".join(parts))
        return sent

    def _send_blocked(self) -> None:
        """The windows grew: send what they held back, stream by stream in the order they
        were held, and wake the senders whose bytes all left."""
        blocked = self._blocked
        index = 0
        while index < len(blocked) and self._send_window > 0 and not self.flow.paused:
            stream = blocked[index]
            pending = stream.pending
            if pending is None or stream.disconnected:
                blocked.pop(index)
                continue
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            sent = self._send_some(stream, data)
            if sent < len(data):
                stream.pending = [data[sent:]]
                index += 1
                continue
            blocked.pop(index)
            stream.pending = None
            if stream.pending_trailers is not None:
                trailers = stream.pending_trailers
                stream.pending_trailers = None
                self.send_headers(stream.stream_id, trailers, True)
                self.stream_ended(stream)
            elif stream.pending_end:
                self.write(frame_header(0, DATA, END_STREAM, stream.stream_id))
                self.stream_ended(stream)
            stream.wake_sender()

    def send_window_update(self, stream_id: int, increment: int) -> None:
        self.write(frame_header(4, WINDOW_UPDATE, 0, stream_id) + increment.to_bytes(4, "big"))

    def default_fields(self) -> bytes:
        """The server's default headers (server, date, --header) as HPACK literals, encoded
        again only when the server's tick changed them."""
        source = self.state.default_headers
        if source is not self._defaults_h1:
            self._defaults_h1 = source
            self._defaults_h2 = encode_lines(source)
        return self._defaults_h2

    # -- streams ending --------------------------------------------------------------------

    def stream_ended(self, stream: Http2Stream) -> None:
        """Our END_STREAM for `stream` has left."""
        if stream.remote_closed or stream.disconnected:
            self._forget(stream)
        # Else the response is complete while the client still sends its body: the stream
        # stays (half closed) and what comes is acknowledged and dropped, until the client
        # ends it or --timeout-request-body-idle passes. (A RST_STREAM with NO_ERROR, which
        # RFC 9113, 8.1 allows here, would make the client's frames already on their way
        # indistinguishable from frames on a closed stream.)

    def response_done(self, stream: Http2Stream) -> None:
        """The cycle's response is complete (its END_STREAM may still wait for a window)."""
        if self.state.shutting_down and self._goaway == SERVING:
            self.shutdown()  # a draining worker: the client goes on elsewhere

    def _forget(self, stream: Http2Stream) -> None:
        streams = self._streams
        if streams.get(stream.stream_id) is stream:
            del streams[stream.stream_id]
            if len(streams) == 0:
                self._idle_since = self.loop.time()
                self._arm(self._idle_since + self.state.timeout_keep_alive)
                if self._closing:
                    self._close()
                elif not self._reading_frames:  # else once they are (`data_received`)
                    self._goaway_if_drained()

    def reset_stream(self, stream: Http2Stream, code: int) -> None:
        """End a stream whose response cannot be completed (the cycle's `abort`)."""
        if stream.stream_id in self._streams:
            self._reset(stream, code)

    def _reset(self, stream: Http2Stream, code: int) -> None:
        """A stream error: RST_STREAM, and the app sees the request end (`http.disconnect`)."""
        self._forget(stream)
        self._hold(stream)
        stream.pending = None
        stream.lose_connection()
        stream.wake_sender()
        self._reset_id(stream.stream_id, code)

    def _reset_id(self, stream_id: int, code: int) -> None:
        if self._reading_frames:
            # Made by the client's frames (not by an app's abort or a deadline): MadeYouReset
            # sends frames that each make the server reset a stream whose app then runs on.
            self._spend_reset("streams its frames made us reset")
        self.write(frame_header(4, RST_STREAM, 0, stream_id) + code.to_bytes(4, "big"))
        reset = self._reset_ids
        reset.append(stream_id)
        if len(reset) > RESET_MEMORY:
            del reset[: RESET_MEMORY // 2]

    def _refuse(self, stream_id: int, status: int, reason: str, end_stream: bool) -> None:
        """Answer a request we refuse (a limit, a bad Host) with an error response of our own;
        the app never sees it."""
        body = reason.encode("ascii", "replace") + b"\n"
        block = (
            encode_status(status)
            + _ERROR_FIELDS
            + encode_field(b"content-length", b"%d" % len(body))
            + self.default_fields()
        )
        self.send_headers(stream_id, block, False)
        self.write(frame_header(len(body), DATA, END_STREAM, stream_id) + body)
        if not end_stream:
            self._reset_id(stream_id, NO_ERROR)  # the request's body is not wanted
        metrics = self.state.metrics
        if metrics is not None:
            metrics.error_response(status)

    def _request_error(self, stream: Http2Stream, status: int, reason: str) -> None:
        """A request found wrong while its app runs (its body too large, too slow): the error
        answers it if no response has started, and the app sees the request end."""
        error_logger.log(TRACE, "Invalid HTTP/2 request (%d): %s", status, reason)
        if not stream.started and not stream.complete:
            self._forget(stream)
            self._hold(stream)
            stream.lose_connection()
            stream.wake_sender()
            self._refuse(stream.stream_id, status, reason, stream.remote_closed)
        else:
            self._reset(stream, CANCEL)

    def _open_upgraded(self, upgraded: tuple[Any, ...]) -> None:
        """The request of an `Upgrade: h2c` becomes stream 1 (RFC 7540, 3.2): its
        HTTP2-Settings are the client's first settings, and its body, if it has one, is the
        bytes that come before the client preface."""
        scope, head_only, settings, te, body_length = upgraded
        scope["http_version"] = "2"
        try:
            self._apply_settings(settings, 0, len(settings))
        except H2ConnectionError as exc:
            self._connection_error(exc.code, exc.reason)
            return
        self._settings_received = False  # the preface still ends with a SETTINGS frame
        stream = Http2Stream(self, 1, scope, head_only)
        if self.state.metrics is not None:
            self.state.metrics.http2_request()
        if te is not None:
            stream.ext = accepts_trailers(te)
        self._last_stream_id = 1
        self._streams[1] = stream
        if body_length > 0:
            self.upgrade_stream = stream
            self._upgrade_left = body_length
            stream.body_read_at = self.loop.time()
            self._arm(stream.body_read_at + self.state.timeout_request_body_idle)
        else:
            stream.remote_closed = True
            stream.body_done = True
        self.dispatching = True
        try:
            self._run(stream)
        finally:
            self.dispatching = False
            self._flush()

    def _upgrade_body(self, data: bytes) -> bytes:
        """The body of the request that asked for `Upgrade: h2c`, framed by its
        Content-Length before HTTP/2 starts: fed to stream 1; what follows it is returned."""
        stream = self.upgrade_stream
        assert stream is not None
        take = min(self._upgrade_left, len(data))
        self._upgrade_left -= take
        if take > 0 and not stream.complete and not stream.disconnected:
            stream.feed_body(data[:take])
            if stream.body_size > UPGRADE_BODY_HIGH_WATER and not self.closed:
                self.transport.pause_reading()  # until the app reads (`body_consumed`)
        stream.body_read_at = self.loop.time()
        if self._upgrade_left == 0:
            self.upgrade_stream = None
            stream.remote_closed = True
            stream.end_body()
            if stream.end_sent and stream.pending is None:
                self._forget(stream)
        return data[take:]

    # -- closing ---------------------------------------------------------------------------

    def _connection_error(self, code: int, reason: str) -> None:
        """The one way a connection ends on an error: GOAWAY with `code`, one log line, close.
        Every stream's app sees its request end."""
        if self.closed:
            return
        error_logger.debug(
            "HTTP/2 connection error (%s) from %s: %s",
            ERROR_NAMES.get(code, str(code)),
            self._peer(),
            reason,
        )
        self._send_goaway(code, reason.encode("ascii", "replace"))
        self._close()
        self._lose_streams()

    def _drop(self, reason: str) -> None:
        """End a connection that does not read what we send: at once, what waits unsent
        discarded (a GOAWAY would never be read, and a close would wait for it), one log
        line. Every stream's app sees its request end."""
        if self.closed:
            return
        error_logger.debug("HTTP/2 connection dropped from %s: %s", self._peer(), reason)
        self.closed = True
        self._out = None
        self.transport.abort()
        self._lose_streams()

    def _peer(self) -> str:
        client = self.client
        return f"{client[0]}:{client[1]}" if client else "a Unix socket"

    def _send_goaway(self, code: int, debug: bytes = b"") -> None:
        """Our GOAWAY, naming the last stream processed; a later one (an error after a
        graceful one) names the same: the streams opened after the first are ignored."""
        if self._goaway < CLOSING:
            self._goaway_id = self._last_stream_id
        self._goaway = GONE
        payload = self._goaway_id.to_bytes(4, "big") + code.to_bytes(4, "big") + debug
        self.write(frame_header(len(payload), GOAWAY, 0, 0) + payload)

    def _final_goaway(self) -> None:
        """The GOAWAY of a graceful close: the streams up to the last one processed are
        answered, then the connection closes; those after it were not processed, which
        tells the client it may send them again, on a new connection."""
        if self._goaway == GONE or self.closed:
            return
        self._send_goaway(NO_ERROR)
        self._closing = True
        if len(self._streams) == 0:
            self._close()
        elif not self.dispatching:
            self._flush()

    def _close(self) -> None:
        """Close once what was written has left, lingering as HTTP/1.1 does (see
        protocols/http.py, `_close_lingering`): our side is shut down for writing and what
        the client still sends is read and dropped until it closes, stays quiet for
        LINGER_TIMEOUT, or LINGER_TIME passes. Closing at once with its bytes unread would
        make the kernel reset the connection, and the client could lose our GOAWAY."""
        self._closing = True
        if self.closed:
            return
        self._flush()
        self.closed = True
        transport = self.transport
        if transport.is_closing() or not transport.can_write_eof() or self._lingering:
            transport.close()
            return
        self._lingering = True
        transport.write_eof()
        transport.resume_reading()
        now = self._linger_read_at = self.loop.time()
        self._linger_end = now + LINGER_TIME
        self._arm(now + LINGER_TIMEOUT)

    def abort(self) -> None:
        """Close at once (the server's drain ran out of time)."""
        if not self.closed:
            self._flush()
            self.closed = True
        self.transport.close()

    def shutdown(self) -> None:
        """Graceful shutdown: one GOAWAY, sent when no stream is in flight, then close.

        A connection with no stream open gets its GOAWAY at once, naming the last stream
        processed: a request that crosses it on the wire has a higher id, which tells the
        client it was not processed and may be sent again (on a new connection).

        A connection with streams open gets nothing yet (DRAINING): its streams are
        answered, and so is every stream the client opens meanwhile, and the GOAWAY goes at
        the first moment no stream is in flight (`_forget`, `data_received`). If that moment
        has not come after GOAWAY_GRACE (CLOSING), the streams opened from then on are left
        unprocessed, so that those in flight run out and the GOAWAY names the last stream
        processed. A GOAWAY sent while a response is still on its way is one RFC 9113, 6.8
        has the client go on after, but python-hyper's h2 (httpx) refuses every frame after
        a GOAWAY, and that response would fail; the RFC's two-step GOAWAY (2**31-1, a PING,
        the real last id) fails the same way there. A GOAWAY after the last frame of the last
        response fails no client: each request either was answered or is named as not
        processed, which every client sends again on a new connection.

        A connection lingering after its GOAWAY (`_close`) closes now, as HTTP/1.1's does.
        An app streaming a response is told the connection ends (`RequestCycle.shutdown`).
        """
        if self._lingering:
            transport = self.transport
            if transport.get_write_buffer_size() > 0:
                transport.abort()  # a client that does not read: close() would wait for it
            else:
                transport.close()
            return
        for stream in list(self._streams.values()):
            stream.shutdown()
        if self._goaway == SERVING:
            if len(self._streams) == 0 and self._block is None:
                self._final_goaway()
            else:
                self._goaway = DRAINING
                self._goaway_at = self.loop.time()
                self._arm(self._goaway_at + self._goaway_grace())
        elif self._goaway == GONE and len(self._streams) == 0:
            self._close()

    def _goaway_if_drained(self) -> None:
        """A graceful close waits for the first moment no stream is in flight: now?"""
        if DRAINING <= self._goaway <= CLOSING and len(self._streams) == 0 and self._block is None:
            self._final_goaway()

    def _goaway_grace(self) -> float:
        timeout = self.state.config.timeout_graceful_shutdown
        return GOAWAY_GRACE if timeout is None else min(GOAWAY_GRACE, timeout / 2)

    # -- the connection's one timer --------------------------------------------------------

    def _arm(self, deadline: float) -> None:
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self, context=self.state.callback_context)

    def __call__(self) -> None:
        self._on_timer()

    def _on_timer(self) -> None:
        """Every deadline of the connection, decided from its state and timestamps:

        idle      no stream for the keep-alive timeout: GOAWAY, close (before the first
                  request, --timeout-request-header counts from the connection)
        block     a header block not complete within --timeout-request-header: GOAWAY
        body      a stream's body with no DATA for --timeout-request-body-idle while its
                  window was open: 408, or RST_STREAM once a response started
        request   --timeout-request since a stream's app was called, without a response
        goaway    a graceful close's GOAWAY, if no moment without a stream in flight came
                  within GOAWAY_GRACE
        settings  our SETTINGS not acknowledged within --timeout-request-header: GOAWAY
                  SETTINGS_TIMEOUT
        stalled   the socket took none of our bytes (writing stayed paused) for
                  --timeout-request-body-idle: the connection is dropped, what it holds
                  unsent discarded
        """
        self._timer = None
        if self.closed:
            if self._lingering:
                now = self.loop.time()
                deadline = min(self._linger_read_at + LINGER_TIMEOUT, self._linger_end)
                if now >= deadline:
                    transport = self.transport
                    if transport.get_write_buffer_size() > 0:
                        transport.abort()  # a client that does not read: close() would wait
                    else:
                        transport.close()
                else:
                    self._arm(deadline)
            return
        state = self.state
        now = self.loop.time()
        deadline = now + state.timeout_keep_alive
        if self._goaway == DRAINING:
            at = self._goaway_at + self._goaway_grace()
            if now >= at:
                # No moment without a stream in flight came: the streams opened from now on
                # are not processed, so that those in flight run out; the GOAWAY will name
                # the last one processed.
                self._goaway = CLOSING
                self._goaway_id = self._last_stream_id
            else:
                deadline = min(deadline, at)
        if self._block is not None:
            at = self._block_started + state.timeout_request_header
            if now >= at:
                self._connection_error(PROTOCOL_ERROR, "the header block did not arrive in time")
                self._flush()
                return
            deadline = min(deadline, at)
        if self.flow.paused:
            at = self._paused_at + state.timeout_request_body_idle
            if now >= at:
                self._drop(f"it read nothing of ours for {state.timeout_request_body_idle}s")
                return
            deadline = min(deadline, at)
        if not self._settings_acked:
            at = self._settings_sent_at + state.timeout_request_header
            if now >= at:
                self._connection_error(SETTINGS_TIMEOUT, "our SETTINGS were not acknowledged")
                self._flush()
                return
            deadline = min(deadline, at)
        streams = self._streams
        if len(streams) == 0 and self._block is None:
            timeout = (
                state.timeout_keep_alive if self._last_stream_id else state.timeout_request_header
            )
            at = self._idle_since + timeout
            if now >= at:
                self._final_goaway()
                return
            deadline = min(deadline, at)
        self.dispatching = True
        try:
            for stream in list(streams.values()):
                if not stream.remote_closed and stream.recv_window > 0 and stream.tunnel is None:
                    at = stream.body_read_at + state.timeout_request_body_idle
                    if now >= at:
                        self._request_error(
                            stream, REQUEST_TIMEOUT, "the request body stopped arriving"
                        )
                        continue
                    deadline = min(deadline, at)
                task = stream.task
                request_timeout = state.timeout_request
                if task is not None and request_timeout is not None:
                    if stream.started or task_done(task):
                        stream.task = None
                    else:
                        at = stream.started_at + request_timeout
                        if now >= at:
                            stream.task = None
                            stream.request_timed_out(task, request_timeout)
                        else:
                            deadline = min(deadline, at)
        finally:
            self.dispatching = False
            self._flush()
        if not self.closed:
            self._arm(deadline)
