"""One WebSocket connection: RFC 6455 through `websockets`' sans-I/O `ServerProtocol`.

`HttpProtocol` parses the upgrade request and hands over the transport; from there this class
moves bytes in and out of the sans-I/O object (`receive_data` -> `events_received` ->
`data_to_send`) and translates its events to and from ASGI messages. The handshake checks,
control frames, fragmentation, close codes and per-message-deflate are all `websockets`' work.
The one exception is the common message, a whole uncompressed text or binary frame:
`protocols/wsframes.py` (compiled) reads and builds those while the connection is open, and
hands every other frame to websockets at a frame boundary, so that its state stays what it
would have been had it read them all.

Connection states (`_phase`), seen from the app and the transport:
  connecting  handshake validated, waiting for the app's accept, close or denial response
  open        101 sent: messages flow both ways
  closing     a Close frame or an HTTP rejection is out; waiting (bounded) for the peer
  closed      the transport is gone

The hot path (one message in, one out) costs no Task, no closure, no call into websockets
and one `transport.write`.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
from collections import deque
from typing import TYPE_CHECKING, Any

from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from aserve.asgi import ASGI_VERSION, WEBSOCKET_SPEC_VERSION, ClientDisconnected
from aserve.flow_control import READY, UNPAUSED, WriteFlow
from aserve.logging import (
    TRACE,
    AccessRecord,
    access_fields,
    error_logger,
    escape,
    escape_bytes,
)
from aserve.protocols.headers import encode_headers, status_line
from aserve.protocols.wsframes import FrameReader, binary_frame, text_frame
from aserve.status import reason_phrase
from aserve.tasks import start_app, task_done, task_exception

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aserve.asgi import Message
    from aserve.state import ServerState

CONNECTING = "connecting"
OPEN = "open"
CLOSING = "closing"
CLOSED = "closed"

_PAUSED_EARLY = 1  # frames sent before our 101: kept, not parsed, until the app accepts
_PAUSED_QUEUE = 2  # ws_max_queue messages wait for the app

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_PONG = Opcode.PONG
_CLOSE = Opcode.CLOSE
_WS_OPEN = State.OPEN

# websockets' own server defaults: a 4 KiB window each way keeps memory per connection small.
_DEFLATE = (
    ServerPerMessageDeflateFactory(
        server_max_window_bits=12,
        client_max_window_bits=12,
        compress_settings={"memLevel": 5},
    ),
)

_utf8_decoder = codecs.getincrementaldecoder("utf-8")
_access_logger = logging.getLogger("aserve.access")

# The Sec-WebSocket-Key an HTTP/2 handshake goes through websockets' checks with (it has none).
_NO_KEY = "AAAAAAAAAAAAAAAAAAAAAA=="


class _WebSocketsLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """What websockets logs per connection, routed to `aserve.websockets`, quieter.

    Left to itself, `ServerProtocol` logs "connection open", "connection closed" and
    "connection rejected" at INFO on `websockets.server`, so an app that turns on INFO for the
    root logger prints them for every WebSocket (the access log already says as much). Here its
    INFO and DEBUG lines go out at TRACE (`--log-level trace` shows them, with websockets' frame
    dumps), and its warnings and errors stay what they are, under aserve's handlers.
    """

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(TRACE if level < logging.WARNING else level, msg, *args, **kwargs)

    def isEnabledFor(self, level: int) -> bool:
        return self.logger.isEnabledFor(TRACE if level < logging.WARNING else level)


_websockets_logger = _WebSocketsLogger(logging.getLogger("aserve.websockets"))


_recv_frame = ServerProtocol.recv_frame


class _ServerProtocol(ServerProtocol):
    """websockets' server side, except that a Close may interrupt a fragmented message.

    RFC 6455 5.4 lets control frames arrive between fragments, and a Close there ends the
    connection normally (Autobahn case 7.1.5 expects 1000); websockets answers 1002.
    """

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is _CLOSE:
            self.current_size = None
        _recv_frame(self, frame)  # (not super(): that builds a proxy object for every frame)


class WebSocketProtocol(asyncio.Protocol):
    """The state machine of one WebSocket connection (see the module docstring).

    Its transport is the connection's, or on HTTP/2 one stream of it, opened by an extended
    CONNECT (RFC 8441): protocols/websocket_h2.py, which also sends the handshake response.
    """

    __slots__ = (
        "_accepted",
        "_decoder",
        "_denial",
        "_denial_body",
        "_disconnect",
        "_early",
        "_fast_send",
        "_fragments",
        "_low_water",
        "_max_queue",
        "_paused",
        "_phase",
        "_ping_interval",
        "_ping_payload",
        "_ping_timeout",
        "_queue",
        "_reader",
        "_respond",
        "_response",
        "_timer",
        "_waiter",
        "flow",
        "loop",
        "protocol",
        "scope",
        "state",
        "task",
        "transport",
    )

    def __init__(
        self, state: ServerState, http_scope: dict[str, Any], transport: asyncio.Transport
    ) -> None:
        self.state = state
        self.loop = state.loop
        self.transport = transport
        config = state.config
        # httptools has already parsed the request, so the sans-I/O parser starts at the frame
        # stage (state OPEN); putting the state back to CONNECTING lets accept() and
        # send_response() run the handshake exactly as they would after parsing it themselves.
        self.protocol = _ServerProtocol(
            extensions=_DEFLATE if config.ws_per_message_deflate else None,
            max_size=config.ws_max_size,
            state=State.OPEN,
            logger=_websockets_logger,
        )
        self.protocol.state = State.CONNECTING
        self.scope = http_scope  # replaced by the websocket scope once the handshake is valid
        self.task: asyncio.Task[None] | None = None
        self._phase = CONNECTING
        self._accepted = False  # the app accepted: counted open in metrics until lost
        # Messages the app has not received yet; None while there are none (an idle
        # connection keeps no deque).
        self._queue: deque[Message] | None = deque(({"type": "websocket.connect"},))
        self._max_queue = config.ws_max_queue
        self._low_water = config.ws_max_queue // 2
        self._waiter: asyncio.Future[Message] | None = None
        self._disconnect: Message | None = None
        self._early: list[bytes] | None = None
        self._response: Response | None = None
        # A transport that frames the handshake response itself (an HTTP/2 stream: HEADERS),
        # or None to write it as HTTP/1.1 bytes.
        self._respond: Callable[[Response], None] | None = getattr(transport, "send_response", None)
        self._denial: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self._denial_body: list[bytes] | None = None
        self._fragments: list[Any] | None = None
        self._decoder: codecs.IncrementalDecoder | None = None
        self._paused = 0
        # The fast path for common frames (protocols/wsframes.py), set up on accept: the reader
        # for incoming ones while the connection is open, and whether outgoing messages may be
        # framed here (not when permessage-deflate compresses them).
        self._reader: FrameReader | None = None
        self._fast_send = False
        self.flow = UNPAUSED  # a WriteFlow of its own once the transport pauses us
        self._timer: asyncio.TimerHandle | None = None
        self._ping_interval = config.ws_ping_interval
        self._ping_timeout = config.ws_ping_timeout
        self._ping_payload: bytes | None = None

    # -- start: validate the handshake, then call the app ----------------------------------

    def start(self, trailing: bytes) -> None:
        """Take over the connection; `trailing` is what the client sent after the request."""
        state = self.state
        state.connections.add(self)
        if trailing:
            self._early = [trailing]
            self._pause_reading(_PAUSED_EARLY)
        try:
            response, headers = self._handshake_response()
        except Exception as exc:  # a request websockets cannot even represent: refuse it
            error_logger.debug("Invalid WebSocket handshake: %r", exc)
            response, headers = self._rejection(400, "Invalid WebSocket handshake.\n"), Headers()
        if response.status_code != 101:
            # A malformed handshake is answered at once; the app never sees it.
            self._reject(response)
            return
        limit = state.limit_concurrency
        if state.shutting_down or (
            limit is not None and (len(state.connections) > limit or len(state.tasks) >= limit)
        ):
            self._reject(self._rejection(503, "Service Unavailable\n"))
            return
        self._response = response
        self.scope = _websocket_scope(self.scope, headers)
        # The app's own coroutine is the Task's (no wrapper frame kept for the connection's
        # life); its outcome is read from the Task, in the server's context (no copy).
        task = start_app(
            self.loop, state.app, self.scope, self.receive, self.send, state.base_context
        )
        if task_done(task):
            self._app_done(task)
        else:
            self.task = task
            state.tasks.add(task)
            task.add_done_callback(self._app_done, context=state.callback_context)

    def _handshake_response(self) -> tuple[Response, Headers]:
        """websockets' verdict on the request: a 101 to send on accept, or an HTTP error."""
        scope = self.scope
        protocol = self.protocol
        headers = Headers(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
        )
        if headers.get_all("Transfer-Encoding") or any(
            value.strip() != "0" for value in headers.get_all("Content-Length")
        ):
            text = "Failed to open a WebSocket connection: the request has a body.\n"
            return self._rejection(400, text), headers
        query = scope["query_string"]
        path = scope["raw_path"].decode("latin-1")
        target = path + "?" + query.decode("latin-1") if query else path
        if scope["http_version"] == "2":
            # RFC 8441, 5: the extended CONNECT is the upgrade, with no Upgrade, Connection
            # or Sec-WebSocket-Key (nor Sec-WebSocket-Accept in the answer); websockets checks
            # the rest (version, extensions, subprotocols, origin) as for an HTTP/1.1 GET.
            checked = Headers(
                (name, value)
                for name, value in headers.raw_items()
                if name.lower() != "sec-websocket-key"
            )
            checked["Upgrade"] = "websocket"
            checked["Connection"] = "Upgrade"
            checked["Sec-WebSocket-Key"] = _NO_KEY
            request = Request(target, checked)
        else:
            request = Request(
                target, headers, method=scope["method"], protocol="HTTP/" + scope["http_version"]
            )
        response = protocol.accept(request)
        exc = protocol.handshake_exc
        if (
            isinstance(exc, InvalidHeader)
            and exc.name == "Sec-WebSocket-Version"
            and "Sec-WebSocket-Version" in headers
        ):
            # RFC 6455 4.4: an unsupported version gets 426 and the versions we speak.
            text = "Failed to open a WebSocket connection: unsupported version.\n"
            response = protocol.reject(426, text)
            response.headers["Sec-WebSocket-Version"] = "13"
        del response.headers["Date"]  # ours come from the server's default headers
        return response, headers

    # -- the app call ----------------------------------------------------------------------

    def _app_done(self, task: asyncio.Task[Any]) -> None:
        """The app call is over: returned, raised or cancelled."""
        self.task = None
        self.state.tasks.discard(task)
        try:
            exc = task_exception(task)
        except asyncio.CancelledError:
            self.abort()
            return
        if exc is not None:
            self._app_failed(exc)
            return
        result = task.result()
        if result is not None:
            error_logger.error("ASGI callable returned a value instead of None: %r", result)
        self._app_returned()

    def _app_failed(self, exc: BaseException) -> None:
        if self._disconnect is not None:
            # The connection is closing or gone: what the app raised on the way out is not
            # worth a traceback (it is often the ClientDisconnected we raised).
            error_logger.debug("ASGI app raised after the WebSocket closed: %r", exc)
            return
        error_logger.error("Exception in ASGI application", exc_info=exc)
        if self._phase is CONNECTING:
            self._reject(self._rejection(500, "Internal Server Error\n"))
        elif self._phase is OPEN:
            self._close(1011, "")

    def _app_returned(self) -> None:
        phase = self._phase
        if phase is CONNECTING:
            if self._denial is not None:
                error_logger.error("ASGI callable returned without completing the response.")
                self.abort()
            else:
                error_logger.error("ASGI callable returned without accepting the WebSocket.")
                self._deny()
        elif phase is OPEN:
            self._close(1000, "")

    # -- the app's receive -----------------------------------------------------------------

    async def receive(self) -> Message:
        queue = self._queue
        if queue:
            message = queue.popleft()
            if not queue:
                self._queue = None
            if self._paused & _PAUSED_QUEUE and len(queue) <= self._low_water:
                self._resume_reading(_PAUSED_QUEUE)
            return message
        if self._disconnect is not None:
            return self._disconnect
        waiter = self._waiter = self.loop.create_future()
        try:
            return await waiter
        except asyncio.CancelledError:
            # Cancelled (a timeout, say) just as a message arrived: keep it for the next call.
            if self._waiter is waiter:
                self._waiter = None
            elif waiter.done() and not waiter.cancelled():
                message = waiter.result()
                if message is not self._disconnect:
                    if self._queue is None:
                        self._queue = deque()
                    self._queue.appendleft(message)
            raise

    def _deliver(self, message: Message) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(message)
                return
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        queue.append(message)
        if len(queue) >= self._max_queue:
            self._pause_reading(_PAUSED_QUEUE)

    def _set_disconnect(self, code: int, reason: str = "") -> None:
        """Tell the app the WebSocket is over; `receive` returns this after queued messages."""
        if self._disconnect is not None:
            return
        message = self._disconnect = {
            "type": "websocket.disconnect",
            "code": code,
            "reason": reason,
        }
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(message)

    # -- the app's send --------------------------------------------------------------------

    def send(self, message: Message) -> Awaitable[None]:
        """Returns an awaitable: already resolved unless the transport asked us to wait."""
        phase = self._phase
        kind = message["type"]
        if phase is OPEN:
            if kind == "websocket.send":
                text = message.get("text")
                if text is not None:
                    data = text.encode()
                    if self._fast_send:
                        self.transport.write(text_frame(data))
                    else:
                        self.protocol.send_text(data)
                        self._write(self.protocol.data_to_send())
                else:
                    data = message.get("bytes")
                    if data is None:
                        raise RuntimeError("'websocket.send' needs 'text' or 'bytes'")
                    if self._fast_send and type(data) is bytes:
                        self.transport.write(binary_frame(data))
                    else:
                        self.protocol.send_binary(data)
                        self._write(self.protocol.data_to_send())
                metrics = self.state.metrics
                if metrics is not None:
                    metrics.websocket_sent(len(data))
                if not self.flow.paused:
                    return READY
            elif kind == "websocket.close":
                self._close(message.get("code") or 1000, message.get("reason") or "")
            else:
                raise RuntimeError(
                    f"expected ASGI message 'websocket.send' or 'websocket.close', got {kind!r}"
                )
        elif phase is CONNECTING:
            if self._denial is not None:
                self._denial_message(kind, message)
            elif kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._deny()
            elif kind == "websocket.http.response.start":
                status = message["status"]
                status_line(status)  # raises on a status that cannot go on the wire
                headers = list(message.get("headers") or ())
                encode_headers(headers)  # raises on headers that cannot go on the wire
                self._denial = (status, headers)
            else:
                raise RuntimeError(
                    "expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start', got {kind!r}"
                )
        elif phase is CLOSING and kind == "websocket.close":
            pass  # closing already; a second close changes nothing
        else:
            raise ClientDisconnected("the WebSocket is closed")
        return self._drained()

    def _accept(self, message: Message) -> None:
        response = self._response
        assert response is not None
        self._response = None
        extra: list[tuple[bytes, bytes]] = list(message.get("headers") or ())
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            extra.append((b"Sec-WebSocket-Protocol", subprotocol.encode("latin-1")))
            self.protocol.subprotocol = subprotocol
        if extra:
            encode_headers(extra)  # raises on headers that cannot go on the wire
            headers = response.headers
            for name, value in extra:
                headers[name.decode("latin-1")] = value.decode("latin-1")
        self._send_response(response)
        self._phase = OPEN
        self._accepted = True
        protocol = self.protocol
        if not protocol.debug:  # (with websockets' frame dumps on, every frame goes through it)
            self._reader = FrameReader(self.state.config.ws_max_size, self.state.metrics)
            self._fast_send = not protocol.extensions
            _drop_parser(protocol)  # nothing fed to it yet: it stands between frames
        if self.state.metrics is not None:
            self.state.metrics.websocket_accepted()
        self._log_access("[accepted]")
        if self._ping_interval is not None:
            self._arm(self._ping_interval)
        if self._early is not None:
            data = b"".join(self._early)
            self._early = None
            self._resume_reading(_PAUSED_EARLY)
            self.data_received(data)

    def _deny(self) -> None:
        """Close before accept: the handshake is refused with 403, as uvicorn does."""
        self._log_access("403")
        self._reject(self._rejection(403, ""))

    def _denial_message(self, kind: str, message: Message) -> None:
        """The denial response extension: an HTTP response of the app's choosing instead."""
        if kind != "websocket.http.response.body":
            raise RuntimeError(
                f"expected ASGI message 'websocket.http.response.body', got {kind!r}"
            )
        if self._denial_body is None:
            self._denial_body = []
        self._denial_body.append(bytes(message.get("body", b"")))
        if message.get("more_body", False):
            return
        assert self._denial is not None
        status, raw_headers = self._denial
        body = b"".join(self._denial_body)
        self._denial_body = None
        headers = Headers()
        for name, value in raw_headers:
            if name.lower() not in (b"content-length", b"transfer-encoding", b"connection"):
                headers[name.decode("latin-1")] = value.decode("latin-1")
        headers["Content-Length"] = str(len(body))
        headers["Connection"] = "close"
        self._log_access(str(status))
        self._reject(Response(status, _phrase(status), headers, body))

    def _reject(self, response: Response) -> None:
        """Answer the handshake with an HTTP response and close: no WebSocket was opened."""
        self._set_disconnect(1006)
        self._early = None
        self._send_response(response)

    def _rejection(self, status: int, text: str) -> Response:
        response = self.protocol.reject(status, text)
        del response.headers["Date"]  # ours come from the server's default headers
        return response

    def _send_response(self, response: Response) -> None:
        """Send the handshake response, adding the server's default headers."""
        headers = response.headers
        has_server, has_date = "Server" in headers, "Date" in headers
        state = self.state
        defaults = (
            state.default_headers_without(has_server, has_date)
            if has_server or has_date
            else state.default_headers
        )
        for line in defaults.split(b"\r\n"):
            name, _, value = line.partition(b": ")
            if name:
                headers[name.decode("latin-1")] = value.decode("latin-1")
        protocol = self.protocol
        protocol.send_response(response)
        respond = self._respond
        if respond is None:
            self._flush()
            return
        # The transport sends it (RFC 8441: HEADERS); what websockets wrote after its HTTP/1.1
        # bytes, the end-of-stream marker of a rejection, is acted on as usual.
        writes = protocol.data_to_send()
        respond(response)
        if len(writes) > 1:
            self._write(writes[1:])

    # -- asyncio callbacks -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        if reader is not None:  # open, and the common frames read here
            for message in reader.feed(data):
                self._deliver(message)
            rest = reader.rest
            if rest is None:
                return
            reader.rest = None
            data = rest
        elif self._phase is CONNECTING:
            if self._early is None:
                self._early = []
            self._early.append(data)
            self._pause_reading(_PAUSED_EARLY)
            return
        protocol = self.protocol
        if protocol.parser is None:
            _restore_parser(protocol)
        protocol.receive_data(data)
        events = protocol.events_received()
        metrics = self.state.metrics
        for frame in events:
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY or opcode is _CONT:
                if self._phase is OPEN:
                    if metrics is not None:
                        metrics.websocket_frame_received(len(frame.data), frame.fin)
                    self._on_data(frame.data, opcode, frame.fin)
            elif opcode is _PONG and frame.data == self._ping_payload:
                self._on_pong()
        if self._phase is OPEN and protocol.state is not _WS_OPEN:
            # The peer's Close arrived (websockets echoed it), or websockets failed the
            # connection for a protocol error, a message too big or bad UTF-8 in a Close.
            close = protocol.close_rcvd or protocol.close_sent
            if close is None:
                self._closing(1006, "")
            else:
                self._closing(close.code, close.reason)
        writes = protocol.data_to_send()  # pongs, Close replies: usually nothing
        if writes:
            self._write(writes)
        reader = self._reader
        if reader is not None and not reader.owed and not reader.head:
            _drop_parser(protocol)  # between frames again (a ping's, say), until the next

    def eof_received(self) -> bool | None:
        self._reader = None
        if self._phase is not CLOSING:
            self._phase = CLOSING
            self._cancel_timer()
        self._set_disconnect(1006)  # an EOF before a Close frame is an abnormal closure
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = CLOSED
        self._reader = None
        self.state.connections.discard(self)
        if self._accepted and self.state.metrics is not None:
            self._accepted = False
            self.state.metrics.websocket_closed()
        self._cancel_timer()
        self._early = None
        self._set_disconnect(1006)
        self.flow.resume()  # a waiting sender wakes and its next send raises

    def pause_writing(self) -> None:
        flow = self.flow
        if flow is UNPAUSED:
            flow = self.flow = WriteFlow(self.loop)
        flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    # -- incoming messages -----------------------------------------------------------------

    def _on_data(self, data: bytes, opcode: Opcode, fin: bool) -> None:
        """One data frame: a whole message (the common case) or a fragment of one."""
        if opcode is _CONT:
            fragments = self._fragments
            assert fragments is not None  # websockets rejects a stray continuation frame
            decoder = self._decoder
            if decoder is None:
                fragments.append(data)
            elif not self._decode_into(fragments, decoder, data, fin):
                return
            if not fin:
                return
            self._fragments = self._decoder = None
            if decoder is None:
                self._deliver({"type": "websocket.receive", "bytes": b"".join(fragments)})
            else:
                self._deliver({"type": "websocket.receive", "text": "".join(fragments)})
        elif not fin:
            self._fragments = []
            if opcode is _TEXT:
                # Decode as the fragments come, so bad UTF-8 fails the connection at once.
                self._decoder = _utf8_decoder()
                self._decode_into(self._fragments, self._decoder, data, False)
            else:
                self._fragments.append(data)
        elif opcode is _TEXT:
            try:
                text = data.decode()
            except UnicodeDecodeError as exc:
                self._fail_utf8(exc)
                return
            self._deliver({"type": "websocket.receive", "text": text})
        else:
            if type(data) is not bytes:
                data = bytes(data)
            self._deliver({"type": "websocket.receive", "bytes": data})

    def _decode_into(
        self, parts: list[Any], decoder: codecs.IncrementalDecoder, data: bytes, fin: bool
    ) -> bool:
        try:
            parts.append(decoder.decode(data, fin))
        except UnicodeDecodeError as exc:
            self._fail_utf8(exc)
            return False
        return True

    def _fail_utf8(self, exc: UnicodeDecodeError) -> None:
        self._fragments = self._decoder = None
        self.protocol.fail(1007, f"{exc.reason} at position {exc.start}")
        self._closing(1007, "invalid UTF-8")

    # -- closing ---------------------------------------------------------------------------

    def _close(self, code: int, reason: str) -> None:
        """Start the closing handshake from our side (app close, app done, shutdown)."""
        self.protocol.send_close(code, reason)
        self._closing(code, reason)
        self._flush()

    def _closing(self, code: int, reason: str) -> None:
        """Leave the open state: queued messages still reach the app, then the disconnect."""
        # Reading goes on (data frames are dropped now) so the peer's Close reply or EOF is
        # seen; the timer bounds the wait.
        self._phase = CLOSING
        self._stop_reader()
        self._fragments = self._decoder = None
        self._set_disconnect(code, reason)
        self._resume_reading(_PAUSED_QUEUE | _PAUSED_EARLY)  # the peer's Close must be read
        self._cancel_timer()
        self._ping_payload = None
        self._arm(self.state.config.ws_close_timeout)

    def _stop_reader(self) -> None:
        """Leaving the open state: from now on websockets reads every byte, beginning with the
        start of a frame the reader kept (websockets needs all of that frame's bytes)."""
        reader = self._reader
        if reader is not None:
            self._reader = None
            self._fast_send = False
            protocol = self.protocol
            if protocol.parser is None:
                _restore_parser(protocol)
            if reader.pending is not None:
                protocol.receive_data(reader.pending)

    def _flush(self) -> None:
        writes = self.protocol.data_to_send()
        if writes:
            self._write(writes)

    def _write(self, writes: list[bytes]) -> None:
        """Write what websockets produced, in one write; act on its end-of-stream marker."""
        if self._phase is CLOSED:
            return
        transport = self.transport
        transport.write(writes[0] if len(writes) == 1 else b"".join(writes))
        if not writes[-1]:
            # websockets is done with the TCP connection: half-close and let the peer close
            # its side (so unread bytes do not turn our FIN into a reset), within a bound.
            # A server shutting down does not wait for the peer.
            if self._phase is not CLOSING:
                self._phase = CLOSING
                self._stop_reader()
                self._cancel_timer()
                self._arm(self.state.config.ws_close_timeout)
            self._resume_reading(_PAUSED_QUEUE | _PAUSED_EARLY)
            if transport.can_write_eof() and not self.state.shutting_down:
                try:
                    transport.write_eof()
                except (OSError, RuntimeError):  # uvloop raises RuntimeError when closing
                    transport.close()
            else:
                transport.close()

    def shutdown(self) -> None:
        """Graceful shutdown: close open WebSockets with 1001 (going away), or 1012 (service
        restart) when this process is being replaced; refuse pending handshakes."""
        phase = self._phase
        if phase is OPEN:
            if self.state.restarting:
                self._close(1012, "service restart")
            else:
                self._close(1001, "going away")
        elif phase is CONNECTING and self._denial is None:
            self._reject(self._rejection(503, "Service Unavailable\n"))
        elif phase is CLOSING and self.protocol.eof_sent:
            self.transport.close()  # only the peer's FIN was missing: do not wait for it

    def abort(self) -> None:
        """Close the transport now, unsent data and all."""
        self._cancel_timer()
        if self._phase is not CLOSED:
            self.transport.abort()

    # -- keepalive -------------------------------------------------------------------------

    def _on_keepalive(self) -> None:
        """The one keepalive timer: send a ping, or drop a peer that did not answer one."""
        self._timer = None
        if self._phase is not OPEN:
            return
        if self._ping_payload is not None:
            error_logger.debug("WebSocket keepalive ping timeout: dropping the peer")
            self.protocol.fail(1011, "keepalive ping timeout")
            self._closing(1011, "keepalive ping timeout")
            self._flush()
            self.transport.close()  # `_closing` armed the abort if even this cannot drain
            return
        payload = os.urandom(4)
        self.protocol.send_ping(payload)
        self._flush()
        if self._ping_timeout is not None:
            self._ping_payload = payload
            self._arm(self._ping_timeout)
        else:
            assert self._ping_interval is not None
            self._arm(self._ping_interval)

    def _arm(self, delay: float) -> None:
        """Arm the connection's one timer. The protocol itself is the callback (`__call__`),
        run in the server's callback context: no bound method and no context copy kept per
        connection while it idles."""
        self._timer = self.loop.call_later(delay, self, context=self.state.callback_context)

    def __call__(self) -> None:
        """The timer fires: time for a keepalive ping (or its pong is overdue) while open;
        the bounded wait for the peer to close is over otherwise."""
        if self._phase is OPEN:
            self._on_keepalive()
        else:
            self.abort()

    def _on_pong(self) -> None:
        self._ping_payload = None
        self._cancel_timer()
        assert self._ping_interval is not None
        self._arm(self._ping_interval)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- flow control ----------------------------------------------------------------------

    def _pause_reading(self, reason: int) -> None:
        if not self._paused and self._phase is not CLOSED:
            self.transport.pause_reading()
        self._paused |= reason

    def _resume_reading(self, reasons: int) -> None:
        if self._paused & reasons:
            self._paused &= ~reasons
            if not self._paused and self._phase is not CLOSED:
                self.transport.resume_reading()

    def _drained(self) -> Awaitable[None]:
        """An awaitable that resolves once the transport accepts more data."""
        if self._phase is CLOSED:
            return READY
        return self.flow.drained()

    # -- access log ------------------------------------------------------------------------

    def _log_access(self, outcome: str) -> None:
        """uvicorn's handshake line: `client - "WebSocket /path" [accepted]` (or a status)."""
        if self.state.access_log is None:
            return
        scope = self.scope
        client = scope.get("client")
        path = escape(scope["path"])
        query = scope["query_string"]
        extra = None
        if self.state.access_log.structured:  # --log-format json: the fields as values
            status = 101 if outcome == "[accepted]" else int(outcome)
            fields = access_fields(AccessRecord(scope, status, 0, 0.0))
            del fields["duration"], fields["duration_ms"]  # (not known at the handshake)
            extra = {"access": {**fields, "websocket": outcome.strip("[]")}}
        _access_logger.info(
            '%s - "WebSocket %s" %s',
            f"{client[0]}:{client[1]}" if client else "-",
            f"{path}?{escape_bytes(query)}" if query else path,
            outcome,
            extra=extra,
        )


def _drop_parser(protocol: ServerProtocol) -> None:
    """Free websockets' parser (a stack of three suspended generators, some 700 bytes) while
    protocols/wsframes.py reads the frames, on a connection where websockets stands between
    frames with nothing buffered: an idle WebSocket is then smaller. Not on a compressed
    connection (most of its frames go through websockets) nor once closing."""
    if protocol.state is _WS_OPEN and not protocol.extensions and not protocol.reader.buffer:
        protocol.parser = None


def _restore_parser(protocol: ServerProtocol) -> None:
    """A fresh parser for websockets, before it reads again. The one dropped was suspended
    at the top of its loop, between frames, and kept nothing there that the protocol object
    does not (the size of a fragmented message so far, the state): a new one started stands
    exactly where it stood."""
    parser = protocol.parser = protocol.parse()
    next(parser)


def _websocket_scope(http_scope: dict[str, Any], headers: Headers) -> dict[str, Any]:
    """The ASGI websocket scope, from the http scope the HTTP protocol built (proxy-adjusted)."""
    subprotocols: list[str] = []
    for value in headers.get_all("Sec-WebSocket-Protocol"):
        subprotocols.extend(parse_subprotocol(value))  # valid: accept() has parsed it already
    scheme = http_scope["scheme"]
    extensions: dict[str, Any] = {"websocket.http.response": {}}
    tls = (http_scope.get("extensions") or {}).get("tls")
    if tls is not None:
        extensions["tls"] = tls
    return {
        "type": "websocket",
        "asgi": {"version": ASGI_VERSION, "spec_version": WEBSOCKET_SPEC_VERSION},
        "http_version": http_scope["http_version"],
        "scheme": "wss" if scheme in ("https", "wss") else "ws",
        "server": http_scope["server"],
        "client": http_scope["client"],
        "root_path": http_scope["root_path"],
        "path": http_scope["path"],
        "raw_path": http_scope["raw_path"],
        "query_string": http_scope["query_string"],
        "headers": http_scope["headers"],
        "subprotocols": subprotocols,
        "state": http_scope["state"],
        "extensions": extensions,
    }


def _phrase(status: int) -> str:
    return reason_phrase(status)
