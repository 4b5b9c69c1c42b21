"""WebSockets over HTTP/2 (RFC 8441): one HTTP/2 stream as the transport of a WebSocket.

An extended CONNECT (`:method CONNECT`, `:protocol websocket`) opens a stream that carries a
WebSocket instead of a request (protocols/http2.py validates it). `StreamTransport` is what
protocols/websocket.py's `WebSocketProtocol`, the one owner of a WebSocket session, sees in
place of a TCP transport: its frames go out as DATA within the stream's and the connection's
windows (a full window or socket pauses its writing, as a full socket does), what the client
sends comes from the stream's DATA and is acknowledged (WINDOW_UPDATE) as the WebSocket takes
it (pausing its reading stops the acknowledgements, so the client's window closes), the end of
the stream either way is its EOF (END_STREAM for FIN, RST_STREAM CANCEL for a reset, RFC 8441,
5.2), and its handshake response is the stream's HEADERS: `200` for an accepted WebSocket, or
the rejection or denial response with its body. Framing, limits, pings, permessage-deflate and
the ASGI side are the WebSocket protocol's, as on HTTP/1.1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from aserve.protocols.hpack import encode_field, encode_status
from aserve.protocols.websocket import WebSocketProtocol

if TYPE_CHECKING:
    import asyncio

    from websockets.http11 import Response

    from aserve.protocols.http2 import Http2Protocol, Http2Stream

# RST_STREAM codes (RFC 9113, 7).
_NO_ERROR: Final = 0x0
_CANCEL: Final = 0x8

# Fields of an HTTP/1.1 handshake response that HTTP/2 does not carry (RFC 8441, 5; RFC 9113,
# 8.2.2): the stream itself is the upgrade, and no Sec-WebSocket-Key was sent to answer.
_LEFT_OUT: Final = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "sec-websocket-accept",
    )
)


def open_websocket(conn: Http2Protocol, stream: Http2Stream) -> StreamTransport:
    """The transport of the WebSocket an extended CONNECT opened on `stream`.

    The stream is not a request: the cycle it was made as never runs (no app call of its own,
    no response through it), so it is marked complete. Nor is it counted as a request in the
    metrics (`Http2Protocol._open_stream` counts the others), as an HTTP/1.1 WebSocket
    handshake is not: the WebSocket metrics count it.
    """
    stream.complete = True
    return StreamTransport(conn, stream)


class StreamTransport:
    """The transport a `WebSocketProtocol` sees on HTTP/2: one stream of a connection.

    The WebSocket side calls what it calls on an asyncio transport (`write`, `write_eof`,
    `close`, `abort`, `pause_reading`, `resume_reading`, `get_extra_info`) and, for its
    handshake response, `send_response`; the connection calls `start`, `data_received`,
    `eof_received` and `lost`.
    """

    __slots__ = (
        "_closed",
        "_eof_held",
        "_held",
        "_paused",
        "_unacknowledged",
        "_waiting",
        "conn",
        "protocol",
        "stream",
    )

    def __init__(self, conn: Http2Protocol, stream: Http2Stream) -> None:
        self.conn = conn
        self.stream = stream
        self._closed = False
        self._paused = False
        self._held: list[bytes] = []  # read while paused: bounded by the stream's window
        self._eof_held = False
        self._waiting = False  # the WebSocket's writing is paused until a window or socket opens
        # Bytes handed to the WebSocket and not yet acknowledged (WINDOW_UPDATE in batches).
        self._unacknowledged = 0
        # Made now: DATA in the same read as the HEADERS is kept by it until its handshake.
        self.protocol = WebSocketProtocol(conn.state, stream.scope, self)  # type: ignore[arg-type]

    def start(self) -> None:
        """Validate the handshake and call the app, as for a WebSocket on HTTP/1.1."""
        protocol = self.protocol
        protocol.start(b"")
        # A stream reset while its app runs on counts against the concurrency limit, as a
        # request's does (`Http2Protocol._hold`).
        self.stream.app_task = protocol.task
        if self.stream.remote_closed:
            self.eof_received()  # END_STREAM came with the HEADERS

    # -- the transport, as the WebSocket sees it -------------------------------------------

    def send_response(self, response: Response) -> None:
        """The handshake's answer as the stream's HEADERS: an accepted WebSocket (websockets'
        101) is a 200 and the stream goes on; any other response ends it, with its body."""
        if self._closed:
            return
        stream = self.stream
        accepted = response.status_code == 101
        fields = [encode_status(200 if accepted else response.status_code)]
        for name, value in response.headers.raw_items():
            lowered = name.lower()
            if lowered in _LEFT_OUT:
                continue
            fields.append(encode_field(lowered.encode("latin-1"), value.encode("latin-1")))
        block = b"".join(fields)
        conn = self.conn
        if accepted:
            conn.send_headers(stream.stream_id, block, False)
            return
        body = bytes(response.body)
        stream.end_sent = True
        if body:
            conn.send_headers(stream.stream_id, block, False)
            conn.send_data(stream, body, True)
        else:
            conn.send_headers(stream.stream_id, block, True)
            conn.stream_ended(stream)
        self.close()

    def write(self, data: Any) -> None:
        stream = self.stream
        if self._closed or stream.end_sent or len(data) == 0:
            return
        conn = self.conn
        conn.send_data(stream, bytes(data), False)
        if self._waiting:
            return
        if stream.pending is not None:
            # A window or the connection's socket is full (the connection holds DATA back for
            # either): the WebSocket waits, as a WebSocket on TCP waits for a full socket.
            waiter = stream.send_waiter
            if waiter is None:
                waiter = stream.send_waiter = conn.loop.create_future()
            self._wait(waiter)

    def _wait(self, waiter: asyncio.Future[None]) -> None:
        self._waiting = True
        self.protocol.pause_writing()
        waiter.add_done_callback(self._writable)

    def _writable(self, waiter: asyncio.Future[None]) -> None:
        self._waiting = False
        if not self._closed:
            self.protocol.resume_writing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """The end of our side: END_STREAM (after what the windows still hold)."""
        stream = self.stream
        if self._closed or stream.end_sent:
            return
        stream.end_sent = True
        self.conn.send_data(stream, b"", True)

    def close(self) -> None:
        """Our side ends (END_STREAM if not sent yet); if the client has not ended its side,
        it is asked to stop with RST_STREAM NO_ERROR (RFC 9113, 8.1), which frees the stream."""
        if self._closed:
            return
        stream = self.stream
        if not stream.end_sent:
            self.write_eof()
        if not stream.remote_closed and stream.pending is None:
            self.conn.reset_stream(stream, _NO_ERROR)
        self.lost()

    def abort(self) -> None:
        """The stream ends at once, what it holds unsent discarded: RST_STREAM CANCEL, HTTP/2's
        TCP reset (RFC 8441, 5.2)."""
        if self._closed:
            return
        self.conn.reset_stream(self.stream, _CANCEL)
        self.lost()

    def is_closing(self) -> bool:
        return self._closed

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if not self._paused:
            return
        self._paused = False
        held = self._held
        if held:
            self._held = []
            self._deliver(b"".join(held))
        if self._eof_held and not self._paused:
            self._eof_held = False
            self.eof_received()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.conn.transport.get_extra_info(name, default)

    # -- the stream, as the connection drives it -------------------------------------------

    def data_received(self, data: bytes) -> None:
        """DATA from the client (the windows already charged for it)."""
        if self._closed:
            self.stream.body_consumed(len(data))  # nobody will read it: acknowledged now
        elif self._paused:
            self._held.append(data)  # not acknowledged: the window closes on the client
        else:
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        self.protocol.data_received(data)
        self._unacknowledged += len(data)
        if self._unacknowledged >= self.conn.initial_window // 2 or self._closed:
            size = self._unacknowledged
            self._unacknowledged = 0
            self.stream.body_consumed(size)

    def eof_received(self) -> None:
        """END_STREAM from the client: the WebSocket's EOF."""
        if self._closed:
            return
        if self._paused:
            self._eof_held = True
            return
        if not self.protocol.eof_received():
            self.close()

    def lost(self) -> None:
        """The WebSocket is over (closed, the stream reset either way, the connection lost).

        The stream, if the client has not ended it, goes on as a finished request's does: what
        it still sends is acknowledged and dropped, within --timeout-request-body-idle."""
        if self._closed:
            return
        self._closed = True
        self._held = []
        stream = self.stream
        stream.tunnel = None
        conn = self.conn
        stream.body_read_at = conn.loop.time()
        conn.loop.call_soon(self.protocol.connection_lost, None)
