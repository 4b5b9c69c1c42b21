"""WebSockets over HTTP/2 (RFC 8441) over real sockets: SETTINGS_ENABLE_CONNECT_PROTOCOL, the
extended CONNECT and what is refused, the same `websocket` scope (`http_version` "2") and
framing as on HTTP/1.1, subprotocols, permessage-deflate, pings, close codes both ways, the
denial response, the limits, the end of the stream and of the connection, and the stream's
flow control both ways.

The client: python-hyper's `h2` for the HTTP/2 connection (it speaks RFC 8441) and websockets'
sans-I/O `ClientProtocol` for the WebSocket frames on the stream (the `websockets` client
itself does not speak RFC 8441).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import h2.errors
import h2.settings
import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from conftest import serve
from test_http2 import Client, Response

# -- the client --------------------------------------------------------------------------------

_OPEN: list[Client] = []


@contextlib.contextmanager
def serving(app: Any, **options: Any) -> Iterator[Any]:
    """`serve`, the clients' sockets closed before the server stops: it need not wait for
    their WebSockets' close handshakes."""
    with serve(app, **options) as server:
        try:
            yield server
        finally:
            while _OPEN:
                _OPEN.pop().close()


def h2_client(port: int, settings: dict[int, int] | None = None, **options: Any) -> Client:
    client = Client(port, settings, **options)
    _OPEN.append(client)
    return client


def connect_fields(path: str = "/", protocol: bytes = b"websocket") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"CONNECT"),
        (b":protocol", protocol),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", b"example.com"),
        (b"sec-websocket-version", b"13"),
    ]


def refused(port: int, fields: list[tuple[bytes, bytes]]) -> Response:
    """Send one request as it is (h2's own checks off) and wait for its answer or reset."""
    client = h2_client(port, validate=False)
    client.wait(lambda: client.conn.remote_settings.max_concurrent_streams == 128)
    stream_id = client.conn.get_next_available_stream_id()
    client.responses[stream_id] = Response()
    client.conn.send_headers(stream_id, fields)
    client.flush()
    response = client.response(stream_id)
    assert client.get("/").status == 200  # the connection goes on
    return response


class WebSocketOverH2:
    """One WebSocket on a stream of an HTTP/2 connection (RFC 8441)."""

    def __init__(
        self,
        port: int,
        path: str = "/",
        *,
        extra: list[tuple[bytes, bytes]] | None = None,
        deflate: bool = False,
        settings: dict[int, int] | None = None,
        auto_window: bool = True,
        early: str | None = None,
    ) -> None:
        """`early`: a text message sent with the CONNECT, before the server's answer."""
        self.client = h2_client(port, settings, auto_window=auto_window)
        conn = self.client.conn
        self.client.wait(lambda: conn.remote_settings.enable_connect_protocol == 1)
        self.stream_id = conn.get_next_available_stream_id()
        fields = connect_fields(path) + (extra or [])
        if deflate:
            fields.append((b"sec-websocket-extensions", b"permessage-deflate"))
        self.response = self.client.responses[self.stream_id] = Response()
        self.ws = ClientProtocol(parse_uri("ws://example.com" + path), state=State.OPEN)
        conn.send_headers(self.stream_id, fields)
        if early is not None:
            self.ws.send_text(early.encode())
            conn.send_data(self.stream_id, b"".join(self.ws.data_to_send()))
        self.client.flush()  # (one write: the server reads them together)
        self.client.wait(lambda: self.response.status or self.response.reset is not None)
        self.status = self.response.status
        offered = self.response.header(b"sec-websocket-extensions")
        if offered:
            params = []
            for part in offered.decode().split(";")[1:]:
                key, _, value = part.strip().partition("=")
                params.append((key, value or None))
            factory = ClientPerMessageDeflateFactory()
            self.ws.extensions = [factory.process_response_params(params, [])]
        self.wire_bytes = 0  # the stream's DATA read so far
        self.events: list[Any] = []
        self.ended = False  # the server's END_STREAM was read
        self.end_sent = False

    def send(self, text: str | None = None, data: bytes | None = None) -> None:
        if text is not None:
            self.ws.send_text(text.encode())
        else:
            assert data is not None
            self.ws.send_binary(data)
        self.flush()

    def flush(self, end: bool = False) -> None:
        """What websockets has to send, as DATA on the stream; its end-of-stream marker (or
        `end`) as END_STREAM."""
        writes = self.ws.data_to_send()
        end = (end or (bool(writes) and writes[-1] == b"")) and not self.end_sent
        payload = b"".join(writes)
        if not payload and not end:
            return
        self.end_sent = self.end_sent or end
        if self.client.goaway is not None:
            # h2 takes a GOAWAY as the end of the connection and sends nothing more, where
            # RFC 9113, 6.8 has the streams it admitted go on: a raw DATA frame then.
            header = len(payload).to_bytes(3, "big") + bytes((0, int(end)))
            self.client.sock.sendall(header + self.stream_id.to_bytes(4, "big") + payload)
        elif payload:
            self.client.send_body(self.stream_id, payload, end=end)
        else:
            self.client.conn.end_stream(self.stream_id)
            self.client.flush()

    def _pump(self) -> None:
        body = self.response.body
        if body:
            self.response.body = b""  # (taken, so that it does not grow for every read)
            self.ws.receive_data(body)
            self.wire_bytes += len(body)
        if self.response.ended and not self.ended:
            self.ended = True
            self.ws.receive_eof()
        self.events.extend(self.ws.events_received())

    def frame(self, timeout: float = 5.0) -> Any:
        """The next frame from the server (websockets' pongs and Close reply are sent)."""
        deadline = time.monotonic() + timeout
        while True:
            self._pump()
            self.flush()
            if self.events:
                return self.events.pop(0)
            left = deadline - time.monotonic()
            if left <= 0 or self.response.reset is not None:
                raise TimeoutError("no frame from the server")
            if not self.client.receive(left):
                self._pump()
                if self.events:
                    return self.events.pop(0)
                raise ConnectionError("the connection closed")

    def message(self, timeout: float = 5.0) -> Any:
        """The next text (str) or binary (bytes) message, or a Close frame."""
        while True:
            frame = self.frame(timeout)
            if frame.opcode is Opcode.TEXT:
                return frame.data.decode()
            if frame.opcode is Opcode.BINARY:
                return frame.data
            if frame.opcode is Opcode.CLOSE:
                return frame

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.ws.send_close(code, reason)
        self.flush()

    def wait_ended(self) -> None:
        """Until the server ended the stream (END_STREAM or RST_STREAM)."""
        self.client.wait(lambda: self.response.ended or self.response.reset is not None)


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition was not met in time"
        time.sleep(0.01)


# -- apps --------------------------------------------------------------------------------------


class App:
    """An echo WebSocket app; /scope sends its scope, /deny refuses with a response of its own,
    /close closes at once, /big sends large messages, /still does not receive until released."""

    def __init__(self) -> None:
        self.disconnects: list[tuple[int, str]] = []
        self.sent_at: list[float] = []
        self.release = threading.Event()
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"plain http"})
            return
        self.scopes.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        path = scope["path"]
        if path == "/deny":
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 403,
                    "headers": [(b"content-type", b"text/plain"), (b"x-why", b"no")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": b"not for you"})
            return
        subprotocols = scope["subprotocols"]
        await send(
            {"type": "websocket.accept", "subprotocol": subprotocols[-1] if subprotocols else None}
        )
        if path == "/close":
            await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
            return
        if path == "/scope":
            info = {key: scope[key] for key in ("type", "http_version", "scheme", "path")}
            info["query_string"] = scope["query_string"].decode()
            info["headers"] = [[n.decode(), v.decode()] for n, v in scope["headers"]]
            info["extensions"] = sorted(scope["extensions"])
            info["subprotocols"] = scope["subprotocols"]
            await send({"type": "websocket.send", "text": json.dumps(info)})
        if path == "/big":
            for _ in range(2):
                await send({"type": "websocket.send", "bytes": b"b" * 50_000})
                self.sent_at.append(time.monotonic())
        if path == "/flood":
            for _ in range(40):
                await send({"type": "websocket.send", "bytes": b"f" * 1_000_000})
                self.sent_at.append(time.monotonic())
        if path == "/still":
            while not self.release.is_set():
                await asyncio.sleep(0.02)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.disconnects.append((message["code"], message.get("reason", "")))
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})


@pytest.fixture
def app() -> Iterator[App]:
    app = App()
    yield app
    app.release.set()


# -- the handshake -----------------------------------------------------------------------------


def test_settings_enable_connect_protocol(app):
    with serving(app) as server:
        client = h2_client(server.port)
        client.wait(lambda: client.conn.remote_settings.enable_connect_protocol == 1)
    with serving(app, ws="none") as server:
        client = h2_client(server.port)
        client.wait(lambda: client.conn.remote_settings.max_concurrent_streams == 128)
        assert client.conn.remote_settings.enable_connect_protocol in (None, 0)


def test_echo_text_and_bytes_and_the_clients_close_code(app, loop_name):
    with serving(app, loop=loop_name) as server:
        ws = WebSocketOverH2(server.port, "/echo")
        assert ws.status == 200
        ws.send("hello")
        assert ws.message() == "hello"
        ws.send(data=b"\x00\x01" * 1000)
        assert ws.message() == b"\x00\x01" * 1000
        ws.close(4321, "done here")
        close = ws.message()
        assert close.opcode is Opcode.CLOSE
        assert ws.ws.close_rcvd is not None and ws.ws.close_rcvd.code == 4321
        wait_for(lambda: app.disconnects == [(4321, "done here")])
        # Our END_STREAM follows the close handshake, as a server's FIN does on TCP.
        ws.wait_ended()
        assert ws.response.ended and ws.response.reset is None
        ws.flush(end=True)  # (websockets has ended our side already, as a client's FIN)
        assert ws.end_sent
        # The connection goes on: a request on another stream.
        assert ws.client.get("/").body == b"plain http"


def test_frames_sent_with_the_connect_wait_for_the_accept(app):
    with serving(app) as server:
        ws = WebSocketOverH2(server.port, "/echo", early="sent before the 200")
        assert ws.status == 200
        assert ws.message() == "sent before the 200"


def test_scope_is_the_websocket_scope_with_http_version_2(app):
    with serving(app) as server:
        ws = WebSocketOverH2(
            server.port, "/scope?x=1", extra=[(b"sec-websocket-protocol", b"chat, superchat")]
        )
        assert ws.response.header(b"sec-websocket-protocol") == b"superchat"
        info = json.loads(ws.message())
        assert info["type"] == "websocket"
        assert info["http_version"] == "2"
        assert info["scheme"] == "ws"
        assert info["path"] == "/scope"
        assert info["query_string"] == "x=1"
        assert info["subprotocols"] == ["chat", "superchat"]
        assert info["extensions"] == ["websocket.http.response"]
        assert info["headers"][0] == ["host", "example.com"]  # from :authority
        assert not any(name.startswith(":") for name, _ in info["headers"])
        # No HTTP/1.1 handshake fields in the answer, and 200, not 101.
        assert ws.status == 200
        for name in (b"upgrade", b"connection", b"sec-websocket-accept"):
            assert ws.response.header(name) is None
        assert ws.response.header(b"server") is not None  # the server's default headers


def test_invalid_handshake_is_refused(app):
    """No sec-websocket-version: answered 400 by the handshake, the app never called."""
    with serving(app) as server:
        fields = [f for f in connect_fields() if f[0] != b"sec-websocket-version"]
        assert refused(server.port, fields).status == 400
        unsupported = [*fields, (b"sec-websocket-version", b"8")]
        response = refused(server.port, unsupported)
        assert response.status == 426
        assert response.header(b"sec-websocket-version") == b"13"
    assert app.scopes == []


def test_extended_connect_refusals(app):
    with serving(app) as server:
        port = server.port
        # A tunnel protocol other than WebSocket: not implemented, as plain CONNECT.
        assert refused(port, connect_fields(protocol=b"webtransport")).status == 501
        protocol_error = h2.errors.ErrorCodes.PROTOCOL_ERROR
        # Malformed (RFC 9113, 8.1.1; RFC 8441, 4): the stream is reset.
        for name in (b":path", b":scheme"):
            fields = [f for f in connect_fields() if f[0] != name]
            assert refused(port, fields).reset == protocol_error, name
        bad_token = connect_fields(protocol=b"web socket")
        assert refused(port, bad_token).reset == protocol_error
        twice = [*connect_fields()[:2], (b":protocol", b"websocket"), *connect_fields()[2:]]
        assert refused(port, twice).reset == protocol_error
        on_get = [(b":method", b"GET"), *connect_fields()[1:]]
        assert refused(port, on_get).reset == protocol_error
    assert app.scopes == []


def test_plain_connect_is_refused(app):
    """RFC 9113, 8.5: aserve is no proxy. A well-formed CONNECT gets 501; one with :scheme
    or :path, or without :authority, is malformed."""
    with serving(app) as server:
        plain = [(b":method", b"CONNECT"), (b":authority", b"example.com:443")]
        assert refused(server.port, plain).status == 501
        with_path = [*plain, (b":path", b"/")]
        assert refused(server.port, with_path).reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
        bare = [(b":method", b"CONNECT")]
        assert refused(server.port, bare).reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert app.scopes == []


def test_without_websockets_protocol_is_an_unknown_pseudo_header(app):
    with serving(app, ws="none") as server:
        response = refused(server.port, connect_fields())
        assert response.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert app.scopes == []


def test_denial_response(app):
    with serving(app) as server:
        ws = WebSocketOverH2(server.port, "/deny")
        assert ws.status == 403
        ws.client.wait(lambda: ws.response.ended)
        assert ws.response.body == b"not for you"
        assert ws.response.header(b"x-why") == b"no"
        assert ws.response.header(b"content-length") == b"11"
        assert ws.response.header(b"connection") is None
        assert ws.client.get("/").status == 200  # the connection goes on


def test_metrics_count_websockets_not_requests(app):
    """An extended CONNECT is counted as a WebSocket, as an HTTP/1.1 handshake is, and not as
    an HTTP request that never completes."""
    from test_metrics import scrape

    with serving(app, metrics_port=0) as server:
        ws = WebSocketOverH2(server.port, "/echo")
        ws.send("x")
        assert ws.message() == "x"
        assert ws.client.get("/").status == 200
        metrics = scrape(server.server.metrics_port)
    assert metrics["aserve_websockets_total"] == 1
    assert metrics["aserve_websockets_open"] == 1
    assert metrics["aserve_http_requests_total"] == 1
    assert metrics["aserve_http2_requests_total"] == 1
    assert metrics["aserve_http_requests_in_flight"] == 0


# -- messages ----------------------------------------------------------------------------------


def test_permessage_deflate(app):
    with serving(app) as server:
        ws = WebSocketOverH2(server.port, "/echo", deflate=True)
        assert ws.response.header(b"sec-websocket-extensions").startswith(b"permessage-deflate")
        text = "compress me " * 1000
        ws.send(text)
        assert ws.message() == text
        # It was compressed on the wire: far fewer bytes than the text.
        assert ws.wire_bytes < len(text) // 4


def test_permessage_deflate_off(app):
    with serving(app, ws_per_message_deflate=False) as server:
        ws = WebSocketOverH2(server.port, "/echo", deflate=True)
        assert ws.response.header(b"sec-websocket-extensions") is None
        ws.send("plain")
        assert ws.message() == "plain"


def test_server_pings_are_answered_and_client_pings_get_pongs(app):
    with serving(app, ws_ping_interval=0.2, ws_ping_timeout=2.0) as server:
        ws = WebSocketOverH2(server.port, "/echo")
        assert ws.frame().opcode is Opcode.PING  # our pong goes back by itself
        ws.ws.send_ping(b"hi")
        ws.flush()
        while (frame := ws.frame()).opcode is not Opcode.PONG:
            pass
        assert frame.data == b"hi"
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:  # answered pings keep it open
            with contextlib.suppress(TimeoutError):
                ws.frame(timeout=0.1)
        ws.send("still here")
        assert ws.message() == "still here"


def test_unanswered_pings_close_1011(app):
    with serving(app, ws_ping_interval=0.1, ws_ping_timeout=0.3) as server:
        ws = WebSocketOverH2(server.port, "/echo")
        # Read without answering: the pings stay unanswered.
        ws.client.wait(lambda: app.disconnects != [])
        assert app.disconnects == [(1011, "keepalive ping timeout")]
        ws.wait_ended()


def test_app_close(app):
    with serving(app) as server:
        ws = WebSocketOverH2(server.port, "/close")
        close = ws.message()
        assert close.opcode is Opcode.CLOSE
        assert ws.ws.close_rcvd.code == 4000 and ws.ws.close_rcvd.reason == "bye"
        # Our Close reply went back (`message`); the server then ends the stream.
        ws.wait_ended()
        assert ws.response.ended and ws.response.reset is None


def test_message_over_max_size_closes_1009(app):
    with serving(app, ws_max_size=1000) as server:
        ws = WebSocketOverH2(server.port, "/echo")
        ws.send(data=b"x" * 999)
        assert ws.message() == b"x" * 999
        ws.send(data=b"x" * 2000)
        close = ws.message()
        assert close.opcode is Opcode.CLOSE
        assert ws.ws.close_rcvd.code == 1009
        wait_for(lambda: app.disconnects != [])
        assert app.disconnects[0][0] == 1009


# -- the end of the stream and of the connection -----------------------------------------------


def test_reset_stream_is_a_disconnect(app):
    with serving(app) as server:
        ws = WebSocketOverH2(server.port, "/echo")
        ws.send("x")
        assert ws.message() == "x"
        ws.client.conn.reset_stream(ws.stream_id, h2.errors.ErrorCodes.CANCEL)
        ws.client.flush()
        wait_for(lambda: app.disconnects != [])
        assert app.disconnects == [(1006, "")]
        assert ws.client.get("/").status == 200


def test_a_reset_websocket_whose_app_runs_on_keeps_its_stream_counted(app):
    """Rapid reset through WebSockets: a WebSocket reset while its app still runs counts
    against --http2-max-concurrent-streams until the app ends, as a request's stream does."""
    with serving(app, http2_max_concurrent_streams=1) as server:
        ws = WebSocketOverH2(server.port, "/still")
        client = ws.client
        client.conn.reset_stream(ws.stream_id, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        refused = client.request("/")
        assert client.response(refused).reset == h2.errors.ErrorCodes.REFUSED_STREAM
        app.release.set()  # the app ends: the place is free again
        wait_for(lambda: app.disconnects != [])
        assert client.get("/").status == 200


def test_goaway_with_an_error_and_connection_loss_are_disconnects(app):
    with serving(app) as server:
        ws = WebSocketOverH2(server.port, "/echo")
        ws.send("x")
        assert ws.message() == "x"
        ws.client.conn.close_connection(h2.errors.ErrorCodes.INTERNAL_ERROR)
        ws.client.flush()
        wait_for(lambda: len(app.disconnects) == 1)
        ws = WebSocketOverH2(server.port, "/echo")
        ws.send("y")
        assert ws.message() == "y"
        ws.client.close()
        wait_for(lambda: len(app.disconnects) == 2)
        assert app.disconnects == [(1006, "")] * 2


def test_graceful_shutdown_closes_1001(app):
    server = serve(app)
    live = server.__enter__()
    try:
        ws = WebSocketOverH2(live.port, "/echo")
        ws.send("x")
        assert ws.message() == "x"
        stopper = threading.Thread(target=live.stop)
        stopper.start()
        close = ws.message(timeout=10)  # (after the GOAWAY that admits the open streams)
        assert close.opcode is Opcode.CLOSE
        assert ws.ws.close_rcvd.code == 1001  # (1012 when the process is replaced)
        ws.flush(end=True)  # the client's close reply and the end of its side
        ws.wait_ended()
        ws.client.close()
        stopper.join(15)
        assert not stopper.is_alive()
        assert app.disconnects == [(1001, "going away")]
    finally:
        server.__exit__(None, None, None)


# -- flow control ------------------------------------------------------------------------------


def test_sending_is_flow_controlled_by_the_clients_window(app):
    """The WebSocket's stream is flow-controlled like any other: with a small window that the
    client does not reopen, the app's sending waits; once the client reads, it goes on."""
    small = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}
    with serving(app) as server:
        ws = WebSocketOverH2(server.port, "/big", settings=small, auto_window=False)
        ws.client.wait(lambda: len(ws.response.body) >= 1000)
        time.sleep(0.3)  # what would come if the window were not honoured
        with contextlib.suppress(TimeoutError):
            ws.client.receive(0.2)
        assert len(ws.response.body) == 1000
        assert app.sent_at == []  # the first send waits for the window
        # Open the windows: both messages arrive, the app goes on.
        ws.client.auto_window = True
        conn = ws.client.conn
        conn.increment_flow_control_window(10_000_000)
        conn.increment_flow_control_window(10_000_000, stream_id=ws.stream_id)
        ws.client.flush()
        assert ws.message(timeout=10) == b"b" * 50_000
        assert ws.message(timeout=10) == b"b" * 50_000
        wait_for(lambda: len(app.sent_at) == 2)


def test_sending_waits_for_a_full_socket(app):
    """Windows wide open, a client that does not read its socket: the app's sending waits
    once the connection's socket is full, as on HTTP/1.1, instead of queueing 40 MB."""
    huge = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1}
    with serving(app, ws_ping_interval=None) as server:
        ws = WebSocketOverH2(server.port, "/flood", settings=huge)
        ws.client.conn.increment_flow_control_window(2**31 - 1 - 65535)
        ws.client.flush()
        time.sleep(1.0)  # not reading
        held = len(app.sent_at)
        assert held < 20, held  # socket buffers hold a few MB, not 40
        for _ in range(40):
            assert ws.message(timeout=20) == b"f" * 1_000_000
        wait_for(lambda: len(app.sent_at) == 40)


def test_receiving_is_flow_controlled_by_the_app(app):
    """An app that does not receive: past its queue (--ws-max-queue), the WebSocket stops
    reading and the stream's window is no longer reopened, so the client is held back; once
    the app reads, every message arrives."""
    with serving(app, ws_max_queue=4) as server:
        ws = WebSocketOverH2(server.port, "/still")
        conn = ws.client.conn
        sent = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if conn.local_flow_control_window(ws.stream_id) < 20_000:
                # Wait a little for a WINDOW_UPDATE; none comes once the server stops reading.
                with contextlib.suppress(TimeoutError):
                    ws.client.receive(0.3)
                if conn.local_flow_control_window(ws.stream_id) < 20_000:
                    break
                continue
            ws.send(data=b"m" * 16_000)
            sent += 16_000
        # Held back: 4 queued messages and no more than about one window of 256 KiB unread.
        assert 16_000 * 4 <= sent <= 16_000 * 4 + 262_144 + 16_000 * 2, sent
        app.release.set()
        ws.send("after")
        for _ in range(sent // 16_000):
            assert ws.message(timeout=10) == b"m" * 16_000
        assert ws.message(timeout=10) == "after"


def test_the_body_idle_timeout_never_cuts_a_websocket_or_its_connection(app):
    """--timeout-request-body-idle (1 s here) bounds a request body that stops arriving and a
    socket that takes none of aserve's bytes; neither cuts a WebSocket. One quiet for longer
    (no DATA either way) goes on, and one whose client stops reading its socket for a while
    (the app's 40 MB then wait on the full socket) gets every message once the client reads
    again; a request on the same connection is answered after both."""
    huge = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1}
    with serving(app, timeout_request_body_idle=1.0, ws_ping_interval=None) as server:
        quiet = WebSocketOverH2(server.port)
        quiet.send("before")
        assert quiet.message() == "before"
        time.sleep(1.5)  # quiet past the timeout: nothing to poll for
        quiet.send("after the quiet")
        assert quiet.message() == "after the quiet"
        assert quiet.client.get("/").status == 200

        flood = WebSocketOverH2(server.port, "/flood", settings=huge)
        flood.client.conn.increment_flow_control_window(2**31 - 1 - 65535)
        flood.client.flush()
        time.sleep(0.5)  # not reading, for less than the timeout
        assert len(app.sent_at) < 40
        for _ in range(40):
            assert flood.message(timeout=20) == b"f" * 1_000_000
        flood.send("still here")
        assert flood.message() == "still here"
        assert flood.client.get("/").status == 200
