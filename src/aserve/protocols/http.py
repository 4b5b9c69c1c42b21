"""One HTTP/1.1 connection: httptools parsing, framing, pipelining, keep-alive, flow control.

The request cycle itself (the app's `receive` and `send`, errors, the access log) is
version-free (protocols/cycle.py); `Http11Cycle` adds the HTTP/1.1 bytes to it: the status line
and headers, Content-Length or chunks, `Connection`, HTTP/1.0 and `100 Continue`.

A connection owns a queue of parsed requests (`Http11Cycle`) and answers them strictly in
order; at most one app call is answering at a time. The app call for a request starts once its
head is parsed and the previous response is complete, as an eager Task (see `tasks.start_app`),
so a request that needs no I/O is answered inside `data_received`.

Connection states, derived from the fields rather than stored twice:
  idle    no request in progress; the keep-alive timer may close the connection
  busy    a request is being answered (`_active`) or waits its turn (`_next`, `_later`)
  closed  the transport is gone (`_closed`), or is lingering (`_linger_end` set too): the last
          answer is out, and what the client still sends is read and dropped before we close
"""

from __future__ import annotations

import asyncio
import base64
import re
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Final, final

import httptools

from aserve.flow_control import READY, UNPAUSED, WriteFlow
from aserve.logging import error_logger
from aserve.protocols.cycle import RequestCycle, build_scope, connection_parts
from aserve.protocols.extensions import accepts_trailers
from aserve.protocols.headers import STATUS_LINES, status_line
from aserve.protocols.rejection import (
    BAD_REQUEST,
    CONTENT_TOO_LARGE,
    FIELDS_TOO_LARGE,
    NOT_IMPLEMENTED,
    REQUEST_TIMEOUT,
    URI_TOO_LONG,
    VERSION_NOT_SUPPORTED,
    EndOfRequests,
    RequestRejected,
    classify,
    error_response,
)
from aserve.protocols.sendfile import copy_file
from aserve.tasks import task_done

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from aserve.protocols.headers import HeaderBlock
    from aserve.proxy import TrustedProxies
    from aserve.state import ServerState

# True when this module runs compiled by mypyc (setup.py), False when it runs as Python source.
COMPILED: Final = not __file__.endswith((".py", ".pyc"))

# Unread request body kept per request before we stop reading from the socket.
BODY_HIGH_WATER: Final = 64 * 1024
# Bytes batched during an eager app start before they are written anyway.
WRITE_BATCH_LIMIT: Final = 64 * 1024
# Parsed requests waiting behind the one being answered before we stop reading.
PIPELINE_HIGH_WATER: Final = 16

# Lingering close (see `HttpProtocol._close_lingering`): after an answer that ends the
# connection while the client may still be sending, what it sends is read and dropped until it
# closes, stays quiet for LINGER_TIMEOUT seconds, or LINGER_TIME seconds have passed. nginx:
# lingering_timeout 5 s, lingering_time 30 s; shorter here, as a client that has stopped
# sending has its answer, and LINGER_TIME bounds what a trickling client may hold.
LINGER_TIMEOUT: Final = 2.0
LINGER_TIME: Final = 10.0

# What httptools raises (as its args) when llhttp stops on the HTTP/2 client preface.
_PRI: Final = ("Pause on PRI/Upgrade",)

_SWITCHING_TO_H2C: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
)

# Where the message being parsed begins in the read being parsed (`HttpProtocol._msg_at`),
# when that is not an offset: see `HttpProtocol._message_start`.
_AT_EARLIER: Final = -1  # in an earlier read (its request line so far: `_line_part`)
_AT_AFTER_PREV: Final = -2  # where the previous message, which ended in this read, ended
_AT_LOST: Final = -3  # not known (a framing aserve could not follow; never expected)

# The states of a chunked body as `ChunkedBody` follows it.
_CK_SIZE: Final = 0  # in a chunk-size line (size, extensions, CRLF)
_CK_DATA: Final = 1  # in chunk data
_CK_DATA_END: Final = 2  # in the CRLF after chunk data
_CK_TRAILERS: Final = 3  # after the last chunk: trailer lines, then an empty line
_CK_DONE: Final = 4  # past the end of the body

_PAUSED_FOR_BODY: Final = 1
_PAUSED_FOR_PIPELINE: Final = 2
_PAUSED_FOR_SHUTDOWN: Final = 4

_METHODS: Final[dict[bytes, str]] = {
    m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
}

_SLASH: Final = ord("/")
_SPACE: Final = ord(" ")
_G: Final = ord("G")
_E: Final = ord("E")
_T: Final = ord("T")
_HASH: Final = ord("#")
_AUTHORITY: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[\w.~!$&'()*+,;=%-]+):[0-9]+", re.ASCII)
_QUESTION_MARK: Final = ord("?")

# `name.translate(_LOWERCASE)` is `name.lower()`; compiled, it is a loop in C instead of a
# method call, and a name already in lowercase comes back as the same object.
_LOWERCASE: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNKED: Final = b"transfer-encoding: chunked\r\n"
_CLOSE: Final = b"connection: close\r\n"
_KEEP_ALIVE: Final = b"connection: keep-alive\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"

# What a Host header may hold (RFC 9110, 7.2: uri-host [":" port]); checked once per distinct
# value, see `ServerState.valid_host`.
_HOST: Final = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[\w.~!$&'()*+,;=:-]+\]|[\w.~!$&'()*+,;=%-]*)"
    rb"(?::[0-9]*)?",
    re.ASCII,
)


@final
class Http11Cycle(RequestCycle):
    """A request cycle framed as HTTP/1.1: the status line and header bytes, Content-Length
    or chunks, `Connection`, HTTP/1.0, `100 Continue` (see protocols/cycle.py for the
    contract it implements)."""

    __slots__ = ("_line", "chunked", "conn", "expect_100", "http10", "keep_alive")

    def __init__(
        self,
        conn: HttpProtocol,
        scope: dict[str, Any],
        http10: bool,
        head_request: bool,
        keep_alive: bool,
        expect_100: bool,
    ) -> None:
        super().__init__(conn.state, scope, head_request)
        self.conn = conn
        # Kept from the request itself, not read back from the scope the app may change.
        self.http10 = http10
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.chunked = False
        self._line = b""

    def write_start(self) -> None:
        code = self.status
        self._line = STATUS_LINES.get(code) or status_line(code)
        block = self.block
        assert block is not None
        if block.close or code < 200:
            self.keep_alive = False
        conn = self.conn
        if not conn.dispatching:
            # The app runs outside the eager start; make sure the head goes out this loop turn
            # even if the body comes much later (server-sent events, long polls).
            loop = conn.loop
            loop.call_soon(
                self._flush_head_soon,
                asyncio.current_task(loop),
                context=conn.state.callback_context,
            )

    def _flush_head_soon(self, task: Any) -> None:
        """The head, a loop turn after the start, if the app is still running: an app that
        finished in the same step (its Task's done callback runs after this) is answered by
        `app_finished`, and a head written for an app that failed would reach the client."""
        if task is None or not task.done():
            self.flush_head()

    def _head(self, size: int, more_body: object) -> bytes:
        """Status line and headers, with framing decided from the first body message (`size`
        bytes, the last one unless `more_body`)."""
        block = self.block
        assert block is not None
        conn = self.conn
        self.head_written = True
        state = conn.state
        defaults = (
            state.default_headers
            if not (block.has_server or block.has_date)
            else state.default_headers_without(block.has_server, block.has_date)
        )
        framing = b""
        status = self.status
        if block.content_length >= 0 or status < 200 or status == 204 or status == 304:
            pass  # the length is declared, or the response has no body
        elif not more_body and not block.chunked:
            framing = b"content-length: %d\r\n" % size
        elif not self.http10:
            framing = _CHUNKED
            self.chunked = True
        else:
            self.keep_alive = False  # HTTP/1.0 has no chunks: the body ends when we close
        if state.shutting_down or (self.expect_100 and not self.body_done):
            # (We never asked for the body, so the client may never send it: there is no way
            # to read past it to a next request.)
            self.keep_alive = False
        if not self.keep_alive:
            connection = _CLOSE
        elif self.http10:
            connection = _KEEP_ALIVE
        else:
            connection = b""
        # Compiled, %-formatting of bytes is one allocation and a copy per part (no tuple,
        # no buffer protocol): about 500 instructions less than b"".join here.
        return b"%s%s%s%s%s\r\n" % (self._line, block.data, defaults, framing, connection)

    def write_body(self, body: bytes, more_body: object) -> None:
        size = len(body)
        head = b"" if self.head_written else self._head(size, more_body)
        if self.head_only:
            payload = b""
        elif self.chunked:
            payload = b"%x\r\n%s\r\n" % (size, body) if size else b""  # empty chunk = end
            if not more_body:
                payload += _LAST_CHUNK
        else:
            payload = body
        # len(), not truthiness: compiled, a bytes object's truth is a generic C-API call.
        data = head + payload if len(head) > 0 else payload
        if len(data) > 0:
            self.conn.write(data)

    def write_informational(self, status: int, block: HeaderBlock) -> None:
        if self.http10:
            return  # RFC 9110, 15.2: an HTTP/1.0 client does not expect 1xx answers
        line = STATUS_LINES.get(status) or status_line(status)
        self.conn.write(b"%s%s\r\n" % (line, block.data))

    def trailers_possible(self) -> bool:
        # Trailers need a chunked body: not with a Content-Length, not in HTTP/1.0.
        block = self.block
        return not self.http10 and block is not None and block.content_length < 0

    def write_trailers(self, blocks: list[HeaderBlock]) -> None:
        self.conn.write(b"0\r\n%s\r\n" % b"".join([block.data for block in blocks]))

    def write_file(self, fd: int, offset: int, count: int, more_body: bool) -> Awaitable[int]:
        head = b"" if self.head_written else self._head(count, more_body)
        if self.head_only:
            count = 0
        chunked = self.chunked and count > 0
        prefix = head + (b"%x\r\n" % count if chunked else b"")
        tail = b"\r\n" if chunked else b""
        if self.chunked and not more_body:
            tail += _LAST_CHUNK
        return copy_file(self.conn, self, prefix, fd, offset, count, tail)

    def write_pressure(self) -> Awaitable[None]:
        flow = self.conn.flow
        return flow.drained() if flow.paused else READY

    def body_consumed(self, size: int) -> None:
        if size > BODY_HIGH_WATER:
            self.conn.resume_reading(_PAUSED_FOR_BODY)

    def ask_for_body(self) -> None:
        """The app waits for a body it was promised on `Expect: 100-continue`: ask for it."""
        if self.expect_100:
            self.expect_100 = False
            self.conn.write(_CONTINUE)
            self.conn._body_read_at = self.conn.loop.time()  # the client starts its body now

    def response_done(self) -> None:
        if self.length_left > 0 and not self.head_only:
            self.keep_alive = False  # the body is short of its Content-Length: close
        self.conn.response_complete(self)

    def abort(self) -> None:
        self.conn.abort()

    def respond_error(self, status: int, body: bytes) -> None:
        if status != 500:
            self.keep_alive = False  # the app may still be running: this connection is done
        super().respond_error(status, body)


@final
class ChunkedBody:
    """Where a chunked request body is in its framing, followed ahead of llhttp.

    httptools does not say where in a read its callbacks fall, so the bytes between two
    pieces of chunk data (a CRLF, the next chunk-size line with its extensions; after the last
    chunk, the trailer section) cannot be counted from them: a 200 KiB extension inside one read
    would pass unseen. This follows the framing byte for byte over each read before llhttp
    parses it, so the bound is the same whether the bytes arrive in one read or one at a time.
    It checks nothing llhttp checks (malformed lines are llhttp's to refuse), only counts, and
    notes where the body ends in the read (`end`), where the next request begins.
    """

    __slots__ = ("digits", "end", "gap", "left", "line", "size", "state")

    def __init__(self) -> None:
        self.state = _CK_SIZE
        self.size = 0  # of the chunk whose size line is being read
        self.digits = 0  # hex digits of that size so far; -1 once past them
        self.left = 0  # bytes of chunk data, or of the CRLF after it, still to come
        self.line = 0  # bytes of the trailer line being read
        self.gap = 0  # bytes since the last byte of chunk data (or the head)
        self.end = -1  # where the body ended in the last read scanned, if it did

    def scan(self, data: bytes, pos: int, limit: int) -> bool:
        """Follow `data[pos:]`; False when the bytes between two pieces of data pass `limit`."""
        n = len(data)
        while pos < n:
            state = self.state
            if state == _CK_DATA:
                take = min(self.left, n - pos)
                pos += take
                self.gap = 0
                self.left -= take
                if self.left == 0:
                    self.state = _CK_DATA_END
                    self.left = 2
            elif state == _CK_DATA_END:
                take = min(self.left, n - pos)
                pos += take
                self.gap += take
                self.left -= take
                if self.left == 0:
                    self.state = _CK_SIZE
                    self.size = self.digits = 0
            elif state != _CK_DONE:  # a chunk-size line or a trailer line
                lf = data.find(b"\n", pos)
                stop = n if lf < 0 else lf + 1
                if state == _CK_SIZE and self.digits >= 0:
                    self._size_digits(data, pos, stop)
                else:
                    self.line += stop - pos
                self.gap += stop - pos
                pos = stop
                if self.gap > limit:
                    return False
                if lf < 0:
                    break
                if state == _CK_TRAILERS:
                    if self.line <= 2:  # an empty line: the end of the body
                        self.state = _CK_DONE
                        self.end = pos
                        break
                    self.line = 0
                elif self.size == 0:
                    self.state = _CK_TRAILERS
                    self.line = 0
                else:
                    self.state = _CK_DATA
                    self.left = self.size
            else:
                break
        return True

    def _size_digits(self, data: bytes, pos: int, stop: int) -> None:
        """Add the hex digits at `data[pos:stop]` to the size (at most 17: llhttp refuses a
        size that overflows 64 bits, so more would never be data)."""
        size = self.size
        digits = self.digits
        while pos < stop and digits <= 16:
            c = data[pos]
            if 48 <= c <= 57:
                size = size * 16 + c - 48
            elif 97 <= c <= 102:
                size = size * 16 + c - 87
            elif 65 <= c <= 70:
                size = size * 16 + c - 55
            else:
                digits = -1
                break
            digits += 1
            pos += 1
        self.size = size
        self.digits = digits


@final
class ParserCallbacks:
    """httptools' callbacks, one object for all the connections of a server.

    httptools keeps a bound method for each callback it finds on the object it parses for:
    five objects per connection, each tracked by the cyclic garbage collector, whose full
    passes visit every one (docs/performance.md). Every parser of a server gets this one
    object instead, and `data_received` points it at its connection for the length of
    `feed_data`: the callbacks only run inside that call, synchronously, and none of them runs
    the app or anything else that could feed another connection's parser meanwhile. (One per
    server, as a server's connections share one event loop and thread.)
    """

    __slots__ = ("conn", "for_parser")

    def __init__(self) -> None:
        self.conn: HttpProtocol | None = None
        # What the parsers are given: httptools takes each callback with `getattr`, and a
        # method looked up on this object would be bound anew, per parser.
        self.for_parser = SimpleNamespace(
            on_url=self.on_url,
            on_header=self.on_header,
            on_headers_complete=self.on_headers_complete,
            on_body=self.on_body,
            on_message_complete=self.on_message_complete,
        )

    def on_url(self, url: bytes) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_header(name, value)

    def on_headers_complete(self) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_body(body)

    def on_message_complete(self) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_message_complete()


class HttpProtocol(asyncio.Protocol):
    """The state machine of one HTTP/1.1 connection (see the module docstring).

    An idle connection holds few objects the cyclic garbage collector tracks (its full passes
    visit them all, with every connection held: docs/performance.md): the parser's callbacks
    are shared (`ParserCallbacks`), its timer calls the protocol itself (`__call__`) in the
    server's `callback_context`, the write batch and the header list exist only while in use,
    and `flow` is the shared `UNPAUSED` until the transport first pauses us.
    """

    __slots__ = (
        "_active",
        "_batch",
        "_batch_first",
        "_batch_size",
        "_body_at_read",
        "_body_read_at",
        "_body_received",
        "_callbacks",
        "_chunks",
        "_closed",
        "_connection_field",
        "_content_length",
        "_data",
        "_ending",
        "_expect_100",
        "_extensions",
        "_fields",
        "_forwarded",
        "_given_addresses",
        "_h2c",
        "_h2c_trailing",
        "_head_in_read",
        "_head_size",
        "_head_started",
        "_head_tail",
        "_headers",
        "_host",
        "_idle_since",
        "_later",
        "_line_chunk",
        "_line_part",
        "_linger_end",
        "_linger_for",
        "_msg_at",
        "_next",
        "_parsing",
        "_paused",
        "_pending_error",
        "_prev_at",
        "_prev_body",
        "_prev_end",
        "_proxy",
        "_raw",
        "_rejected",
        "_request_started",
        "_request_task",
        "_te",
        "_timer",
        "_timer_at",
        "_transfer_encoding",
        "_upgrade",
        "_upgrade_offer",
        "_url",
        "_websocket_scope",
        "_websocket_trailing",
        "client",
        "dispatching",
        "flow",
        "loop",
        "parser",
        "scheme",
        "server",
        "state",
        "transport",
    )

    def __init__(self, state: ServerState, addresses: tuple[Any, Any] | None = None) -> None:
        self.state = state
        self.loop = state.loop
        # (client, server) from a PROXY protocol header; None: the socket's own addresses.
        self._given_addresses = addresses
        callbacks = state.parser_callbacks
        if callbacks is None:
            callbacks = state.parser_callbacks = ParserCallbacks()
        self._callbacks: ParserCallbacks = callbacks
        self.parser = httptools.HttpRequestParser(callbacks.for_parser)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        # A Unix socket listener is (its path, None), as the ASGI spec has it.
        self.server: tuple[str, int | None] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        # The requests waiting their turn, in order: the next one in a slot, the ones after
        # it (pipelining only) in a list made when first needed, so that a connection that
        # never pipelines has no list for the garbage collector to visit. A list, not a
        # deque: the queue rarely holds more than one request. A pipelined burst parsed from
        # one read can queue thousands; pop(0) then costs about 16 ms for the 14k requests a
        # 256 KiB read holds, beside some 300 ms to answer them.
        self._next: Http11Cycle | None = None
        self._later: list[Http11Cycle] | None = None
        self._active: Http11Cycle | None = None
        # What `write` holds back while dispatching: the first piece alone (most often the
        # only one: no list per request), then all of them in a list.
        self._batch_first: bytes | None = None
        self._batch: list[bytes] | None = None
        self._batch_size = 0
        self._parsing: Http11Cycle | None = None
        self._headers: list[tuple[bytes, bytes]] | None = None  # from the head's first field
        self._url = b""
        self._line_chunk: bytes | None = None
        self._expect_100 = False
        self._forwarded = False
        # The head has a Connection (or Proxy-Connection, which llhttp reads the same) field:
        # only then is llhttp asked whether an HTTP/1.1 request keeps the connection.
        self._connection_field = False
        # The head being parsed, as far as the rules of RFC 9112 and our limits need it.
        self._host: bytes | None = None
        self._transfer_encoding: bytes | None = None
        self._content_length = -1
        self._head_size = 0  # its fields so far, each counted as `name: value CRLF`
        self._fields = 0
        # Bytes received since the parser last gave us something (a head, a piece of body):
        # what httptools holds unseen, a header line in progress above all (see `_check_raw`).
        self._raw = 0
        self._body_received = 0  # of the request being read, for --limit-request-body
        # Where each request is in the read being parsed (httptools does not say): the read
        # (`_data`, b"" between reads), where the message being parsed begins in it
        # (`_msg_at`, see `_message_start`), what locates a message after the previous one
        # (`_prev_at`, `_prev_body`, `_prev_end`), and what is kept of a head across reads (its
        # request line so far, its last 3 bytes). Used only off the common path: for a request
        # line that does not begin a read, and to follow a chunked body (`_chunks`).
        self._data = b""
        self._msg_at = 0
        self._prev_at = 0
        self._prev_body = 0
        self._prev_end = -1
        self._head_in_read = False
        self._body_at_read = 0
        self._line_part = b""
        self._head_tail = b""
        self._chunks: ChunkedBody | None = None
        self._rejected = False  # after an error response nothing more is parsed
        # Shutdown came while a request's body was arriving: read it to its end, then stop.
        self._ending = False
        self._upgrade: bytes | None = None
        self._upgrade_offer: bytes | None = None  # the request's Upgrade header, lowercased
        self._te: bytes | None = None  # the request's TE header (does it accept trailers?)
        self._websocket_scope: dict[str, Any] | None = None
        self._websocket_trailing: bytes | None = None
        # A request with `Upgrade: h2c` we switch for: (scope, HEAD?, HTTP2-Settings payload,
        # TE, body length); and the bytes read after its head.
        self._h2c: tuple[Any, ...] | None = None
        self._h2c_trailing: bytes | None = None
        self._pending_error: bytes | None = None
        # The scope's "extensions": the server's, or on a TLS connection its own with "tls".
        # Each request gets a copy (see `on_headers_complete`).
        self._extensions: dict[str, Any] = state.http_scope_template["extensions"]
        self._proxy: TrustedProxies | None = None
        self._paused = 0
        self.flow = UNPAUSED  # a WriteFlow of its own once the transport pauses us
        self._closed = False
        # Deadlines, all kept by one timer per connection, re-armed from these timestamps (see
        # `_on_timer`): no timer object per request.
        self._idle_since = 0.0
        self._head_started = 0.0  # 0.0: no head in progress
        self._linger_end = 0.0  # lingering close: when it ends at the latest (0.0: not lingering)
        # How long a lingering close may last: LINGER_TIME, less after an answer a deadline
        # forced (`_reject`, `_on_timer`), none after a late head.
        self._linger_for = LINGER_TIME
        self._body_read_at = 0.0
        self._request_started = 0.0
        self._request_task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.dispatching = False

    # -- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.state.http2 and transport.get_extra_info("sslcontext") is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self._switch_to_http2(b"", 0, alpn=True)
                return
        self.state.connections.add(self)
        # The scope's parts every request of the connection shares (protocols/cycle.py); a
        # proxy only when the peer is one we believe: then its forwarding headers are read.
        self.server, self.client, self.scheme, self._extensions, self._proxy = connection_parts(
            self.state, transport, self._given_addresses
        )
        # The first request head must arrive in time, counted from the connection itself.
        self._idle_since = self._head_started = self.loop.time()
        self._arm(self._head_started + self.state.timeout_request_header)
        if self.state.shutting_down:
            self.shutdown()  # accepted just before the listener closed

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.state.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        later = self._later or []
        for cycle in (self._active, self._parsing, self._next, *later):
            if cycle is not None:
                cycle.lose_connection()
        self._next = None
        self._later = None
        self.flow.resume()  # a waiting sender wakes and finds its cycle disconnected

    def data_received(self, data: bytes) -> None:
        if self._upgrade is not None or self._rejected:
            # After an Upgrade we do not speak: the bytes are not HTTP requests. After an
            # error we never look for where a next request might begin.
            if self._linger_end:
                self._body_read_at = self.loop.time()  # still sending: see `_close_lingering`
            return
        self._head_in_read = False
        if self._parsing is not None:  # the read begins inside a body
            self._body_at_read = self._body_received
            chunks = self._chunks
            if chunks is not None and not chunks.scan(data, 0, self._raw_limit()):
                self._reject(BAD_REQUEST, "chunk extensions or trailers too large")
                self._run_queue()
                return
            self._line_chunk = None
        elif self._raw == 0:
            # Between messages, the read begins with the next request line or with the blank
            # lines allowed before one (see `_http_version`).
            self._line_chunk = data
            self._msg_at = 0
        else:
            self._line_chunk = None  # inside a head: it began in an earlier read
        self._data = data
        self._raw += len(data)
        callbacks = self._callbacks
        callbacks.conn = self  # the parser's callbacks are ours until feed_data returns
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            callbacks.conn = None
            self._handle_upgrade(data[upgrade.args[0] :] if upgrade.args else b"")
        except httptools.HttpParserError as exc:
            callbacks.conn = None
            if exc.args == _PRI and self._may_switch_to_http2():
                # The HTTP/2 client preface (h2c by prior knowledge): llhttp stops on its
                # request line, so HTTP/1.1 heads never pay for this check.
                self._data = b""
                self._switch_to_http2(data, self._raw - len(data))
                return
            if not isinstance(exc.__context__, EndOfRequests):
                status, reason = classify(exc)
                self._reject(status, reason)
        else:
            callbacks.conn = None
            if self._raw:  # the read ended inside a head, or between two pieces of a body
                self._check_raw()
                if self._parsing is not None:
                    self._body_pending()
                elif not self._rejected:
                    self._keep_head_part(data)
            elif self._parsing is not None:  # the read ended inside a body
                self._body_pending()
            elif len(self._url) > 0 or (len(data) > 0 and data[-1] != 0x0A and self._more(data)):
                # The read ended in the next request's head, begun after the last complete
                # request (pipelined, or its first bytes in the same segment): on_url has seen
                # part of its target, or bytes follow the last request. Its deadline counts
                # from this read.
                self._head_began()
                if not self._rejected:
                    self._keep_head_part(data)
        self._line_chunk = None
        self._data = b""
        self._run_queue()

    def eof_received(self) -> bool | None:
        return None  # close our side too; an in-flight response's cycle sees the disconnect

    def pause_writing(self) -> None:
        flow = self.flow
        if flow is UNPAUSED:
            flow = self.flow = WriteFlow(self.loop)
        flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        # Most targets come whole, in one call: kept as they are, not joined to b"".
        target = url if len(self._url) == 0 else self._url + url
        self._url = target
        if len(target) > self.state.limit_request_line:
            raise RequestRejected(URI_TOO_LONG, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.translate(_LOWERCASE)
        size = len(name)  # compared first: most names are none of these, and that is cheap
        # Sizes as if each field were written `name: value CRLF`, whatever the whitespace and
        # however the bytes were split into reads; trailers count afresh, like a second head.
        line = size + len(value) + 4
        self._head_size += line
        self._fields += 1
        state = self.state
        if (
            line > state.limit_request_field_size
            or self._head_size > state.limit_request_head
            or self._fields > state.limit_request_fields
        ):
            self._fields_too_large(line)
        if self._parsing is not None:
            return  # a trailer field of a chunked body: counted, never a header of the next request
        if size == 4 and name == b"host":
            self._on_host(value)
        elif size == 6 and name == b"expect" and value.lower() == b"100-continue":
            self._expect_100 = True
        elif (size > 12 and name[:12] == b"x-forwarded-") or (size == 9 and name == b"forwarded"):
            self._forwarded = True
        elif size == 7 and name == b"upgrade" and self._upgrade_offer is None:
            self._upgrade_offer = value.lower()
        elif (size == 10 and name == b"connection") or (size == 16 and name == b"proxy-connection"):
            self._connection_field = True
        elif size == 14 and name == b"content-length":
            self._content_length = int(value)  # llhttp has checked it: digits, only one
        elif size == 17 and name == b"transfer-encoding":
            # Several fields are one list (RFC 9110, 5.3): `gzip` then `chunked` is
            # `gzip, chunked` (llhttp lets that pair through; `chunked` then anything it refuses).
            te = self._transfer_encoding
            self._transfer_encoding = value if te is None else te + b"," + value
        elif size == 2 and name == b"te":
            self._te = value if self._te is None else self._te + b"," + value
        headers = self._headers
        if headers is None:
            # (Not `[(name, value)]`: a list made empty allocates its items on the first
            # append only, where a list display allocates for one item and grows at once.)
            headers = self._headers = []
        headers.append((name, value))

    def _fields_too_large(self, line: int) -> None:
        state = self.state
        if line > state.limit_request_field_size:
            reason = "header field too large"
        elif self._fields > state.limit_request_fields:
            reason = "too many header fields"
        else:
            reason = "request head too large"
        if self._parsing is not None:
            reason = reason.replace("header field", "trailer field").replace("head", "trailers")
        raise RequestRejected(FIELDS_TOO_LARGE, reason)

    def _on_host(self, value: bytes) -> None:
        if self._host is not None:
            raise RequestRejected(BAD_REQUEST, "more than one Host header")
        state = self.state
        if value != state.valid_host:  # most requests repeat the last valid one
            if _HOST.fullmatch(value) is None:
                raise RequestRejected(BAD_REQUEST, "invalid Host header")
            state.valid_host = value
        self._host = value

    def on_headers_complete(self) -> None:
        parser = self.parser
        state = self.state
        chunk = self._line_chunk
        if (
            chunk is not None
            and len(chunk) > 3
            and chunk[3] == _SPACE
            and chunk[0] == _G
            and chunk[1] == _E
            and chunk[2] == _T
        ):
            # The read began with this request line (see `_http_version`), and llhttp took
            # `GET ` in it as the method: no `get_method()` call, nor the bytes it makes.
            method = "GET"
            method_size = 3
        else:
            raw_method = parser.get_method()
            # The common methods by comparison (compiled, a memcmp each), the rest via the
            # table: a new bytes object hashes its key on every dict lookup.
            if raw_method == b"GET":
                method = "GET"
            elif raw_method == b"POST":
                method = "POST"
            else:
                method = _METHODS.get(raw_method) or raw_method.decode("ascii")
            method_size = len(raw_method)
        target = self._url
        version_at = method_size + len(target) + 2
        self._head_in_read = True
        http_version = self._http_version(version_at)
        headers = self._headers
        if headers is None:
            headers = []
        expect_100 = self._expect_100
        forwarded = self._forwarded
        connection_field = self._connection_field
        upgrade_offer = self._upgrade_offer
        host = self._host
        content_length = self._content_length
        head_size = self._head_size
        # Ready for the next request head (no on_message_begin: one Python call less each).
        self._url = b""
        self._headers = None
        self._expect_100 = self._forwarded = self._connection_field = False
        self._upgrade_offer = None
        self._host = None
        self._content_length = -1
        self._head_size = self._fields = self._raw = self._body_received = 0
        self._head_started = 0.0
        # The request line is `method SP target SP HTTP/1.1 CRLF`, the head ends with CRLF.
        if version_at + 10 > state.limit_request_line:
            raise RequestRejected(URI_TOO_LONG, "request line too long")
        if head_size + version_at + 12 > state.limit_request_head:
            raise RequestRejected(FIELDS_TOO_LARGE, "request head too large")
        chunked = self._transfer_encoding is not None  # (else refused by `_check_framing`)
        if http_version != "1.1" or host is None or chunked:
            self._check_framing(http_version, host)
        if content_length > 0:
            limit = state.limit_request_body
            if limit is not None and content_length > limit:
                raise RequestRejected(CONTENT_TOO_LARGE, "request body too large")
        elif chunked:
            self._follow_chunks()
        # Origin form, "/path?query". (An int needle: `b"#" in target` first tries the bytes
        # as an int and formats a TypeError, about 3k instructions per request.)
        if target[0] == _SLASH and _HASH not in target and method != "CONNECT":
            if _QUESTION_MARK in target:
                raw_path, _, query = target.partition(b"?")
            else:
                raw_path, query = target, b""
        else:
            raw_path, query = _split_target(target, method)
        scope = build_scope(
            state,
            http_version,
            method,
            raw_path,
            query,
            headers,
            self.server,
            self.client,
            self.scheme,
            self._extensions,
            self._proxy if forwarded else None,
        )
        # llhttp keeps an HTTP/1.1 request's connection unless a Connection field says
        # `close`: without one, the answer is known (a call and ~250 instructions less).
        if connection_field or http_version != "1.1":
            keep_alive = parser.should_keep_alive() and not state.shutting_down
        else:
            keep_alive = not state.shutting_down
        # llhttp only upgrades on an Upgrade header or CONNECT: skip the call otherwise.
        if (upgrade_offer is not None or method == "CONNECT") and parser.should_upgrade():
            self._upgrade = upgrade_offer or b""
            if self._upgrade == b"websocket" and state.websockets:
                self._websocket_scope = scope  # the handshake is the WebSocket protocol's job
                return
            if (
                self._upgrade == b"h2c"
                and state.http2
                and self._offer_h2c(scope, method, content_length, expect_100)
            ):
                return  # answered as stream 1 of HTTP/2, once the switch is made
            keep_alive = False  # any other upgrade is answered as HTTP, then we close
        http10 = http_version == "1.0"
        cycle = Http11Cycle(
            self, scope, http10, method == "HEAD", keep_alive, expect_100 and not http10
        )
        if state.metrics is not None:
            state.metrics.request_received()
        if self._te is not None:
            # Trailers only for a client that says it takes them (and chunks: not HTTP/1.0).
            if not http10:
                cycle.ext = accepts_trailers(self._te)
            self._te = None
        self._parsing = cycle
        if self._next is None:
            self._next = cycle
        else:
            later = self._later
            if later is None:
                later = self._later = []
            later.append(cycle)
            if len(later) >= PIPELINE_HIGH_WATER:  # and `_next`: more than the high water
                self.pause_reading(_PAUSED_FOR_PIPELINE)

    def _check_framing(self, http_version: str, host: bytes | None) -> None:
        """The rules for a head that is not HTTP/1.1 with a Host and without
        Transfer-Encoding (RFC 9112, 2.3, 3.2 and 6.1)."""
        transfer_encoding = self._transfer_encoding
        self._transfer_encoding = None
        if http_version != "1.1" and http_version != "1.0":
            # llhttp lets through HTTP/0.9 (`GET /` alone) and HTTP/2.0 request lines.
            raise RequestRejected(VERSION_NOT_SUPPORTED, "HTTP version not supported")
        if host is None and http_version == "1.1":
            raise RequestRejected(BAD_REQUEST, "missing Host header")
        if transfer_encoding is not None:
            if http_version == "1.0":
                raise RequestRejected(BAD_REQUEST, "Transfer-Encoding in an HTTP/1.0 request")
            codings = transfer_encoding.lower().split(b",")
            if codings[-1].strip() != b"chunked":  # the body's length would be unknown
                raise RequestRejected(BAD_REQUEST, "the final transfer coding is not chunked")
            if len(codings) > 1:  # we decode no other coding
                raise RequestRejected(NOT_IMPLEMENTED, "unsupported transfer coding")

    def _http_version(self, version_at: int) -> str:
        """ "1.1" or "1.0" (llhttp refuses other versions), for the head just parsed; and the
        request line has single spaces between method, target and version (RFC 9112, 3),
        which llhttp does not check.

        Read from the request line itself: `method SP target SP HTTP/1.x CR` puts the version at
        `version_at`, and only there, as the target holds no CR (extra spaces would move it
        right). httptools' `get_http_version()` formats its answer with `str.format`, about 2k
        instructions a request. Most often the read began with this request line (`_line_chunk`);
        else the line is found where it is (`_line_at`): after blank lines, behind the requests
        before it in the same read (pipelining), or split across reads.
        """
        chunk = self._line_chunk
        if chunk is not None:
            self._line_chunk = None
            # The version as llhttp accepts it (strict: only 1.0 and 1.1), with its CR.
            version = chunk[version_at : version_at + 9]
            if version == b"HTTP/1.1\r":
                return "1.1"
            if version == b"HTTP/1.0\r":
                return "1.0"
        return self._version_in_line(version_at)

    def _version_in_line(self, version_at: int) -> str:
        at = self._message_start()
        line = self._data
        if at == _AT_EARLIER:
            line = self._line_part + line[: version_at + 10]
            at = 0
        if at >= 0:
            version = line[at + version_at : at + version_at + 9]
            if version == b"HTTP/1.1\r":
                return "1.1"
            if version == b"HTTP/1.0\r":
                return "1.0"
        version_text: str = self.parser.get_http_version()
        if at >= 0 and (version_text == "1.1" or version_text == "1.0"):
            raise RequestRejected(BAD_REQUEST, "more than one space in the request line")
        return version_text  # (HTTP/0.9 or 2.0: refused by `_check_framing`)

    def _message_start(self) -> int:
        """Where the message being parsed begins in the read being parsed (`_data`), past any
        blank lines before it; or `_AT_EARLIER` if it began in an earlier read.

        The read's first message begins at 0. A later one begins where the previous one ended:
        its head ends at the first CRLF CRLF (a head holds no other: llhttp refuses bare CR and
        LF in it), then its Content-Length body; a chunked body's end is noted by `ChunkedBody`.
        Worked out only when asked, so a read with one request costs nothing for it.
        """
        at = self._msg_at
        if at == _AT_AFTER_PREV:
            at = self._prev_end
            if at == -1:  # the previous head ended in this read: its body follows it
                prev = self._prev_at
                if prev >= 0:
                    head_end = _head_end(self._data, prev)
                elif prev == _AT_EARLIER:
                    head_end = self._head_end_after_earlier()
                else:
                    head_end = -1
                at = head_end + self._prev_body if head_end >= 0 else _AT_LOST
        if at >= 0:
            data = self._data
            n = len(data)
            while at < n and (data[at] == 13 or data[at] == 10):  # CR, LF
                at += 1
        self._msg_at = at
        return at

    def _head_end_after_earlier(self) -> int:
        """Where a head that began in an earlier read ends in this one (its CRLF CRLF may
        straddle the two: `_head_tail` holds its last bytes before this read)."""
        data = self._data
        tail = self._head_tail
        if len(tail) > 0:
            found = (tail + data[:3]).find(b"\r\n\r\n")
            if found >= 0:
                return found + 4 - len(tail)
        found = data.find(b"\r\n\r\n")
        return found + 4 if found >= 0 else -1

    def _more(self, data: bytes) -> bool:
        """Whether bytes follow the last request in a read that ends in a byte other than LF
        (a request without a body ends with CRLF, so these are the next head's; after a body,
        which may end in any byte, its end is worked out)."""
        if self._body_received == 0:
            return True
        start = self._message_start()
        return start == _AT_LOST or 0 <= start < len(data)

    def _keep_head_part(self, data: bytes) -> None:
        """The read ended inside a head: keep what later reads need to place it (its request
        line so far, for `_version_in_line`; its last 3 bytes, for `_head_end_after_earlier`)."""
        start = self._message_start()
        limit = self.state.limit_request_line + 16  # past it the line is refused anyway
        if start >= 0:
            if start == len(data):  # blank lines only: the request begins in a later read
                self._msg_at = 0
                self._line_part = self._head_tail = b""
                return
            end = data.find(b"\n", start)
            self._line_part = data[start : end + 1 if end >= 0 else start + limit]
            self._head_tail = data[max(start, len(data) - 3) :]
        elif start == _AT_EARLIER:
            line = self._line_part
            if line.find(b"\n") < 0 and len(line) < limit:  # the line goes on in this read
                end = data.find(b"\n")
                self._line_part = line + data[: end + 1 if end >= 0 else limit - len(line)]
            tail = self._head_tail + data[-3:] if len(data) < 3 else data[-3:]
            self._head_tail = tail[-3:]
        else:
            return
        self._msg_at = _AT_EARLIER

    def _follow_chunks(self) -> None:
        """A chunked body begins: follow its framing over the rest of the read (`ChunkedBody`),
        before llhttp parses it."""
        data = self._data
        start = self._message_start()
        if start >= 0:
            head_end = _head_end(data, start)
        elif start == _AT_EARLIER:
            head_end = self._head_end_after_earlier()
        else:
            head_end = -1
        if head_end < 0:
            return  # not expected: the head just ended in this read
        chunks = self._chunks = ChunkedBody()
        if not chunks.scan(data, head_end, self._raw_limit()):
            raise RequestRejected(BAD_REQUEST, "chunk extensions or trailers too large")

    def _raw_limit(self) -> int:
        """What a head in progress, or the bytes between two pieces of chunk data, may hold."""
        state = self.state
        return state.limit_request_head + state.limit_request_field_size

    def on_body(self, body: bytes) -> None:
        self._raw = 0
        received = self._body_received = self._body_received + len(body)
        limit = self.state.limit_request_body
        if limit is not None and received > limit:
            raise RequestRejected(CONTENT_TOO_LARGE, "request body too large")
        cycle = self._parsing
        if cycle is not None:
            cycle.feed_body(body)
            if cycle.body_size > BODY_HIGH_WATER:
                self.pause_reading(_PAUSED_FOR_BODY)  # until the app takes it (`body_consumed`)

    def on_message_complete(self) -> None:
        self._raw = 0
        # Where the next message in this read begins, if one does (`_message_start`).
        chunks = self._chunks
        if chunks is not None:
            self._chunks = None
            self._prev_end = chunks.end if chunks.end >= 0 else _AT_LOST
        elif self._head_in_read:
            self._prev_end = -1
            self._prev_at = self._msg_at
            self._prev_body = self._body_received
        else:  # the read began inside this body
            self._prev_end = self._body_received - self._body_at_read
        self._msg_at = _AT_AFTER_PREV
        cycle = self._parsing
        if cycle is not None:
            self._parsing = None
            cycle.end_body()
        if self._ending:
            self._end_of_requests()

    # -- answering requests in order -------------------------------------------------------

    def _run_queue(self) -> None:
        """Start queued requests while nothing is being answered.

        A loop rather than recursion: an app that completes during its eager start calls
        `response_complete`, which comes back here and returns at once; the loop then takes
        the next request. Pipelined requests therefore never nest.
        """
        if self.dispatching:
            return
        self.dispatching = True
        try:
            state = self.state
            while self._active is None and self._next is not None:
                cycle = self._next
                later = self._later
                self._next = later.pop(0) if later else None
                self._active = cycle
                task = cycle.run_app()
                if task is not None and state.timeout_request is not None:
                    self._request_task = task
                    self._request_started = self.loop.time()
                    self._arm(self._request_started + state.timeout_request)
                if cycle.started and not cycle.head_written and not cycle.disconnected:
                    cycle.flush_head()  # the app paused between start and body
            if self._paused & _PAUSED_FOR_PIPELINE and self._queued() <= PIPELINE_HIGH_WATER // 2:
                self.resume_reading(_PAUSED_FOR_PIPELINE)
            if self._active is None and self._next is None:
                if self._pending_error is not None:
                    self._send_error_and_close(self._pending_error)
                elif self._websocket_trailing is not None and not self._closed:
                    self._flush()
                    self._switch_to_websocket()
                elif self._h2c is not None and self._h2c_trailing is not None:
                    self._flush()
                    self._switch_to_h2c()
        finally:
            self.dispatching = False
            if self._batch_first is not None:
                self._flush_later()

    def response_complete(self, cycle: Http11Cycle) -> None:
        if self._active is cycle:
            self._active = None
        if self._closed:
            return
        if not cycle.keep_alive or (self.state.shutting_down and self._next is None):
            if self._parsing is not None or self._next is not None or self._paused:
                self._close_lingering()  # the client may still be sending: a body, requests
            else:
                self._close()
            return
        if cycle.body_size > BODY_HIGH_WATER:
            cycle.chunks = None
            self.resume_reading(_PAUSED_FOR_BODY)
        self._idle_since = self.state.clock()
        # Rarely moves the timer: only when the keep-alive timeout is the shorter deadline.
        self._arm(self._idle_since + self.state.timeout_keep_alive)
        if not self.dispatching:  # else the dispatch loop below us takes the next request
            self._run_queue()

    def _queued(self) -> int:
        """How many requests wait their turn."""
        if self._next is None:
            return 0
        later = self._later
        return 1 + len(later) if later is not None else 1

    def _unqueue(self, cycle: Http11Cycle) -> bool:
        """Take `cycle` out of the requests waiting their turn; False if it is not there."""
        if self._next is cycle:
            later = self._later
            self._next = later.pop(0) if later else None
            return True
        later = self._later
        if later is not None and cycle in later:
            later.remove(cycle)
            return True
        return False

    # -- flow control ----------------------------------------------------------------------

    def pause_reading(self, reason: int) -> None:
        if not self._paused and not self._closed:
            self.transport.pause_reading()
        self._paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self._closed:
                self.transport.resume_reading()
                # The client was held back by us: its body's idle time starts again now, and
                # so does the deadline of a head it had begun.
                now = self._body_read_at = self.loop.time()
                if self._head_started:
                    self._head_started = now
                    self._arm(now + self.state.timeout_request_header)

    def write(self, data: bytes) -> None:
        """Write at the end of this loop iteration, or now.

        What is written while an eager app start runs (`dispatching`) is batched: everything an
        app writes before it first suspends, and every answer to a pipelined batch, then
        leaves in one `transport.write` (one syscall). The batch is not written when the
        dispatch ends but once the loop has run every callback of this iteration
        (`_flush_later`), and what is written meanwhile joins it, so that order holds.
        Past `WRITE_BATCH_LIMIT` the batch goes out at once, so flow control still sees it.
        """
        if self._closed:
            return
        if self.dispatching or self._batch_first is not None:
            first = self._batch_first
            if first is None:
                self._batch_first = data
            else:
                batch = self._batch
                if batch is None:
                    self._batch = [first, data]
                else:
                    batch.append(data)
            self._batch_size += len(data)
            if self._batch_size >= WRITE_BATCH_LIMIT:
                self._flush()
        else:
            self.transport.write(data)

    def _flush_later(self) -> None:
        """Write the batch once the loop has run this iteration's callbacks (`flush_batches`).

        With many connections, one loop iteration reads a request from each of dozens of them.
        Writing each answer as soon as it is made wakes the client (on another core) once per
        answer; written back to back at the end of the iteration, the answers wake it once,
        and it finds the rest of them there. On a VM, where waking a task on another CPU is
        an interrupt through the hypervisor, that halves the system time per request
        (docs/performance.md). The latency it adds is the rest of the iteration, which the
        client would spend waiting for its next request to be read anyway.
        """
        state = self.state
        pending = state.pending_writes
        if pending is None:
            state.pending_writes = [self]
            self.loop.call_soon(flush_batches, state, context=state.callback_context)
        else:
            pending.append(self)

    def _flush(self) -> None:
        data = self._batch_first
        if data is not None:
            self._batch_first = None
            batch = self._batch
            if batch is not None:
                data = b"".join(batch)
                self._batch = None
            self._batch_size = 0
            if not self._closed:
                self.transport.write(data)

    def _close(self) -> None:
        if not self._closed:
            self._flush()
            self.transport.close()
        elif self._linger_end:
            self.transport.close()  # lingering (see `_close_lingering`) ends now

    def _close_lingering(self) -> None:
        """Close after an answer that ends the connection while the client may still be
        sending (a body we refused or the app did not read, pipelined requests).

        Closing a socket with unread bytes makes the kernel reset the connection and drop what
        it has not sent yet: the client loses the end of the answers, or reads ECONNRESET in
        their place. So, as nginx's lingering close: our side is shut down for writing (a FIN
        after the answer; not on TLS, which cannot half-close), and what the client sends is
        read and dropped, not parsed nor buffered, until it closes, stays quiet for
        LINGER_TIMEOUT, or LINGER_TIME passes. The connection's one timer keeps both
        deadlines; nothing is written, parsed or handed to an app any more. Not while shutting
        down: that closes at once, as does `shutdown()` for a connection already lingering.

        A deadline is a deadline: after an answer a deadline forced, lingering lasts no longer
        than that deadline's own length (`_linger_for`), and after a late head (408) not at all,
        as the client is then sending no body we owe it time to finish: the connection closes
        once the answer is written, however the client keeps dripping bytes.
        """
        if self._closed:
            return
        transport = self.transport
        if self.state.shutting_down or transport.is_closing() or self._linger_for <= 0:
            self._close()
            return
        self._flush()
        self._closed = True  # no more writes; `_close` still ends the lingering
        self._rejected = True  # reads are dropped (`data_received`)
        # For the apps, the connection is over: a body still arriving is not theirs any more.
        parsing = self._parsing
        if parsing is not None:
            self._parsing = None
            parsing.lose_connection()
        later = self._later or []
        for cycle in (self._next, *later):
            if cycle is not None:
                cycle.lose_connection()  # parsed, never answered
        self._next = None
        self._later = None
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        now = self._body_read_at = self.loop.time()
        linger = self._linger_for
        self._linger_end = now + linger
        self._arm(now + min(LINGER_TIMEOUT, linger))

    def _linger_timer(self) -> None:
        now = self.loop.time()
        deadline = min(self._body_read_at + LINGER_TIMEOUT, self._linger_end)
        if now >= deadline:
            self.transport.close()
        else:
            self._arm(deadline)

    # -- closing ---------------------------------------------------------------------------

    def abort(self) -> None:
        """Close at once: a response that cannot be completed must not look complete."""
        self._close()

    def shutdown(self) -> None:
        """Graceful shutdown: close if idle, else close after the requests already read (an
        app streaming its response is told the connection ends: `RequestCycle.shutdown`).

        A request whose body is still arriving (an upload) is read to its end, or its app
        would wait for the rest until --timeout-graceful-shutdown: reading goes on until its
        last byte (`on_message_complete`), and nothing after it is parsed or served."""
        if self._parsing is None:
            self.pause_reading(_PAUSED_FOR_SHUTDOWN)
        else:
            self._ending = True
        active = self._active
        if active is not None:
            active.shutdown()
        if self._active is None and self._next is None:
            self._close()

    def _end_of_requests(self) -> None:
        """The last request a closing connection reads is whole: later reads are dropped
        (`data_received`), and the parser stops here, so a request pipelined after it in the
        same read is never queued. Its answer says `Connection: close` and ends the
        connection (`response_complete`)."""
        self._ending = False
        self._rejected = True
        raise EndOfRequests()

    def _arm(self, deadline: float) -> None:
        """Make the connection's one timer fire by `deadline` (it re-arms itself after)."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._timer_at = deadline
        # The protocol itself as the callback, in the server's context: no bound method and no
        # context copy per connection (see the class docstring).
        self._timer = self.loop.call_at(deadline, self, context=self.state.callback_context)

    def __call__(self) -> None:
        """The connection's timer fires (`_arm`)."""
        self._on_timer()

    def _on_timer(self) -> None:
        """Every deadline of the connection, decided from its state and timestamps:

        idle      the keep-alive timeout since the last response: close
        head      --timeout-request-header since the head's first byte (or since the connection
                  opened, for its first request): 408 if bytes came, else close
        body      --timeout-request-body-idle since body bytes last came: 408 if no response
                  has started, else close
        request   --timeout-request since the app was called without it starting a response:
                  503, the app cancelled
        linger    after the last answer (see `_close_lingering`): LINGER_TIMEOUT since the
                  client last sent, or LINGER_TIME in all: close
        """
        self._timer = None
        if self._closed:
            if self._linger_end:
                self._linger_timer()
            return
        state = self.state
        now = self.loop.time()
        active = self._active
        if active is None and self._next is None and self._parsing is None:
            started = self._head_started
            if started:
                deadline = started + state.timeout_request_header
                if now >= deadline:
                    if self._raw or self._url:
                        self._late_head()
                    else:
                        self._close()  # never a byte of a request: nothing to answer
                    return
            else:
                deadline = self._idle_since + state.timeout_keep_alive
                if now >= deadline:
                    self._close()
                    return
        else:
            deadline = now + state.timeout_keep_alive
            parsing = self._parsing
            if (
                parsing is not None
                and not parsing.expect_100  # the client waits for our 100 Continue
                and not self._paused & _PAUSED_FOR_BODY  # we hold the client back
            ):
                body_deadline = self._body_read_at + state.timeout_request_body_idle
                if now >= body_deadline:
                    # The client may still send the rest: linger, but not past this deadline.
                    self._linger_for = min(LINGER_TIME, state.timeout_request_body_idle)
                    self._reject(REQUEST_TIMEOUT, "the request body stopped arriving")
                    return
                deadline = min(deadline, body_deadline)
            timeout = state.timeout_request
            task = self._request_task
            if timeout is not None and task is not None and active is not None:
                if active.started or task_done(task):
                    self._request_task = None
                else:
                    request_deadline = self._request_started + timeout
                    if now >= request_deadline:
                        self._request_task = None
                        self._linger_for = min(LINGER_TIME, timeout)
                        active.request_timed_out(task, timeout)
                        return
                    deadline = min(deadline, request_deadline)
            started = self._head_started
            if started and not self._paused:
                # A head begun behind requests still being answered (pipelined): it is late
                # from its first byte too; its 408 comes after the answers owed before it.
                head_deadline = started + state.timeout_request_header
                if now >= head_deadline:
                    self._head_started = 0.0
                    self._late_head()
                    if self._closed:
                        return
                else:
                    deadline = min(deadline, head_deadline)
        self._arm(deadline)

    def _check_raw(self) -> None:
        """After a read that left bytes the parser holds unseen: a head in progress (a header
        line above all: httptools hands us a field only once it is complete), or chunk-size
        lines, extensions and trailers between two pieces of body. Whatever the split, it
        may not outgrow the limits of a whole head."""
        if self._raw > self._raw_limit():
            if self._parsing is None:
                self._reject(FIELDS_TOO_LARGE, "request head too large")
            else:
                self._reject(BAD_REQUEST, "chunk extensions or trailers too large")
        elif self._parsing is None and not self._head_started:
            # A head began: it must be complete within --timeout-request-header of now.
            self._head_started = self.loop.time()
            self._arm(self._head_started + self.state.timeout_request_header)

    def _head_began(self) -> None:
        """A head began after the end of the last request in the same read: httptools holds
        its first bytes (at least one; `_raw` counts those of later reads), and its deadline
        runs from now, not from the next read."""
        self._raw = 1
        self._check_raw()

    def _body_pending(self) -> None:
        """A body is still arriving: the client may not go quiet for longer than
        --timeout-request-body-idle (one clock read per read of body, none per request)."""
        now = self._body_read_at = self.loop.time()
        self._arm(now + self.state.timeout_request_body_idle)

    def _late_head(self) -> None:
        """--timeout-request-header passed with a head begun: 408, then close at once (after
        the answers owed before it): no lingering (see `_close_lingering`)."""
        self._linger_for = 0.0
        self._reject(REQUEST_TIMEOUT, "the request head did not arrive in time")

    def _reject(self, status: int, reason: str) -> None:
        """Answer a request we refuse with one error response, after the responses owed to
        the requests before it, then close: nothing after it is ever parsed or served."""
        error_logger.debug("Invalid HTTP request (%d): %s", status, reason)
        self._rejected = True
        self.pause_reading(_PAUSED_FOR_SHUTDOWN)
        response = error_response(status, reason, self.state.default_headers)
        parsing = self._parsing
        if parsing is not None:
            # The error is inside this request's body: for its app, the client went away.
            self._parsing = None
            parsing.lose_connection()
            # Still waiting its turn, it is taken out: not started, the error is its answer.
            if not self._unqueue(parsing):
                if parsing.started or parsing.complete:
                    self.abort()  # it has (part of) an answer already: a second one would lie
                    return
                if parsing is self._active:
                    self._active = None
        if self._active is None and self._next is None:
            self._send_error_and_close(response)
        else:
            self._pending_error = response  # answered after the responses already owed

    def _send_error_and_close(self, response: bytes) -> None:
        self._pending_error = None
        if self._closed or self.transport.is_closing():
            return  # the last response said the connection ends there (HTTP/1.0, close)
        if self.state.metrics is not None:
            self.state.metrics.error_response(int(response[9:12]))
        self.write(response)
        self._close_lingering()

    def _handle_upgrade(self, trailing: bytes) -> None:
        # Only a WebSocket handshake switches protocols; any other Upgrade is answered as plain
        # HTTP and we stop reading, so its payload is never parsed as a request.
        self.pause_reading(_PAUSED_FOR_SHUTDOWN)
        if self._websocket_scope is not None:
            self._websocket_trailing = trailing
        elif self._h2c is not None:
            self._h2c_trailing = trailing

    def _offer_h2c(
        self, scope: dict[str, Any], method: str, content_length: int, expect_100: bool
    ) -> bool:
        """Whether a request with `Upgrade: h2c` switches to HTTP/2 (RFC 7540, 3.2): on
        cleartext, with exactly one valid HTTP2-Settings header, and a body of a known length
        (llhttp hands the body over as bytes after the upgrade, so HTTP/2 reads it)."""
        if self.scheme != "http" or self._transfer_encoding is not None or expect_100:
            return False
        settings = [value for name, value in scope["headers"] if name == b"http2-settings"]
        if len(settings) != 1:
            return False
        try:
            payload = base64.urlsafe_b64decode(settings[0] + b"=" * (-len(settings[0]) % 4))
        except ValueError:
            return False
        if len(payload) % 6 != 0:
            return False
        self._h2c = (scope, method == "HEAD", payload, self._te, max(content_length, 0))
        self._te = None
        return True

    def _switch_to_h2c(self) -> None:
        """Answer `101 Switching Protocols` and hand the transport to HTTP/2, with the
        request that asked as its stream 1 (and the bytes read after its head)."""
        self.transport.write(_SWITCHING_TO_H2C)
        trailing = self._h2c_trailing or b""
        self._h2c_trailing = None
        self._switch_to_http2(trailing, 0, upgraded=self._h2c)
        self._h2c = None
        self.transport.resume_reading()

    def _may_switch_to_http2(self) -> bool:
        """Whether the client preface that stopped the parser may start HTTP/2 here: it must
        be the connection's first request (nothing answered or waiting)."""
        return (
            self.state.http2
            and self._active is None
            and self._next is None
            and self._parsing is None
            and not self._rejected
        )

    def _switch_to_http2(
        self,
        data: bytes,
        preface_read: int,
        alpn: bool = False,
        upgraded: Any = None,
    ) -> None:
        """Hand the transport to an HTTP/2 protocol: after ALPN chose "h2", on the client
        preface (`data` holds what was read of it and after it, `preface_read` bytes of it came
        in earlier reads), or after `101 Switching Protocols` for `Upgrade: h2c` (`upgraded`,
        the request that asked, becomes stream 1)."""
        from aserve.protocols.http2 import Http2Protocol

        if not alpn:
            self.state.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closed = True  # this protocol no longer touches the transport
        protocol = Http2Protocol(self.state, self._given_addresses)
        self.transport.set_protocol(protocol)
        protocol.start(self.transport, data, preface_read, upgraded)

    def _switch_to_websocket(self) -> None:
        """Hand the transport to a WebSocket protocol once every earlier response is out."""
        from aserve.protocols.websocket import WebSocketProtocol

        scope = self._websocket_scope
        assert scope is not None
        trailing = self._websocket_trailing or b""
        self._websocket_scope = self._websocket_trailing = None
        self.state.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closed = True  # this protocol no longer touches the transport
        websocket = WebSocketProtocol(self.state, scope, self.transport)
        self.transport.set_protocol(websocket)
        self.transport.resume_reading()
        websocket.start(trailing)


def flush_batches(state: ServerState) -> None:
    """The end of a loop iteration: every batch `_flush_later` held back goes out."""
    pending: list[HttpProtocol] | None = state.pending_writes
    state.pending_writes = None
    if pending is not None:
        for conn in pending:
            conn._flush()


def _head_end(data: bytes, start: int) -> int:
    """Where the head that begins at `data[start]` (or after blank lines there) ends, or -1."""
    n = len(data)
    while start < n and (data[start] == 13 or data[start] == 10):  # CR, LF
        start += 1
    found = data.find(b"\r\n\r\n", start)
    return found + 4 if found >= 0 else -1


def _split_target(target: bytes, method: str) -> tuple[bytes, bytes]:
    """The path and query of a request target that is not a plain origin form: absolute form,
    asterisk form (OPTIONS only), authority form (CONNECT only, which we do not serve), or a
    target with a fragment, which no form allows (RFC 9112, 3.2)."""
    if method == "CONNECT":
        if _AUTHORITY.fullmatch(target) is None:
            raise RequestRejected(BAD_REQUEST, "CONNECT needs a host:port target")
        raise RequestRejected(NOT_IMPLEMENTED, "CONNECT is not supported")
    if target == b"*":
        if method != "OPTIONS":
            raise RequestRejected(BAD_REQUEST, "'*' is a target for OPTIONS only")
        return b"*", b""
    if _HASH in target:
        raise RequestRejected(BAD_REQUEST, "fragment in the request target")
    if target[0] == _SLASH:  # an origin form reaches here only from CONNECT (refused above)
        raw_path, _, query = target.partition(b"?")
        return raw_path, query
    try:
        # Any, not httptools' URL: its stubs say bytes where an absent part is None, and the
        # compiled module would check the stubs' type on every read.
        url: Any = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        raise RequestRejected(BAD_REQUEST, "invalid request target") from None
    if url.schema is None or url.schema.lower() not in (b"http", b"https") or not url.host:
        raise RequestRejected(BAD_REQUEST, "invalid request target")
    return url.path or b"/", url.query or b""
