"""HTTP/2 over real sockets: the python-hyper `h2` client as the reference peer, raw frames
where a client would refuse to send them, and real clients (httpx, curl, nghttp, h2load).

How a connection turns into HTTP/2 (prior knowledge, `Upgrade: h2c`, ALPN), a stream's scope,
bodies both ways under flow control, concurrency, errors per stream and per connection, limits
and deadlines per stream, the extensions, and a graceful close with GOAWAY.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import pytest
import trustme

from conftest import serve

# -- the client ------------------------------------------------------------------------------


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.informational: list[list[tuple[bytes, bytes]]] = []
        self.body = b""
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.ended = False
        self.reset: int | None = None  # the RST_STREAM error code, if reset

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


class Client:
    """An HTTP/2 client on one socket, driven by python-hyper's h2 (a reference peer)."""

    def __init__(
        self,
        port: int,
        settings: dict[int, int] | None = None,
        *,
        sock: socket.socket | None = None,
        validate: bool = True,
        upgrade: bool = False,
        auto_window: bool = True,
    ) -> None:
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.settimeout(5)
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
            validate_inbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.auto_window = auto_window
        self.responses: dict[int, Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.settings_acked = False
        self._rest = b""
        if not upgrade:
            self.conn.initiate_connection()
            if settings:
                self.conn.update_settings(settings)
            self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        path: str = "/",
        method: str = "GET",
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes | None = None,
        end: bool = True,
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"http"),
            (b":authority", b"example.com"),
            *(headers or []),
        ]
        self.conn.send_headers(stream_id, fields, end_stream=end and body is None)
        self.responses[stream_id] = Response()
        if body is not None:
            self.send_body(stream_id, body, end)
        self.flush()
        return stream_id

    def send_body(self, stream_id: int, body: bytes, end: bool = True) -> None:
        """As the windows allow: what they do not take waits for the server's WINDOW_UPDATE."""
        while True:
            room = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            piece, body = body[:room], body[room:]
            self.conn.send_data(stream_id, piece, end_stream=end and not body)
            self.flush()
            if not body:
                return
            self.wait(lambda: self.conn.local_flow_control_window(stream_id) > 0)

    def receive(self, timeout: float = 5.0) -> bool:
        """Read once and handle the events; False once the connection is closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return False
        if self.goaway is None:
            # Frames up to a GOAWAY go to h2; h2 takes a GOAWAY as the end of the connection
            # and refuses all that follows, where RFC 9113, 6.8 has the streams up to its last
            # stream id go on: those are read raw (`after_goaway`).
            data = self._rest + data
            i = 0
            while len(data) - i >= 9 and self.goaway is None:
                length = int.from_bytes(data[i : i + 3], "big")
                if len(data) - i - 9 < length:
                    break
                self.handle(self.conn.receive_data(data[i : i + 9 + length]))
                i += 9 + length
            self._rest = b""
            data = data[i:]
        if self.goaway is None:
            self._rest = data
        else:
            self.after_goaway(data)
        self.flush()
        return True

    def after_goaway(self, data: bytes) -> None:
        """Frames after a GOAWAY, read without h2's state machine (see `receive`)."""
        data = self._rest + data
        i = 0
        while len(data) - i >= 9:
            length = int.from_bytes(data[i : i + 3], "big")
            if len(data) - i - 9 < length:
                break
            kind, flags = data[i + 3], data[i + 4]
            stream_id = int.from_bytes(data[i + 5 : i + 9], "big") & 0x7FFFFFFF
            payload = data[i + 9 : i + 9 + length]
            i += 9 + length
            response = self.responses.get(stream_id)
            if kind == 7:  # GOAWAY
                self.goaway = h2.events.ConnectionTerminated()
                self.goaway.last_stream_id = int.from_bytes(payload[:4], "big")
                self.goaway.error_code = int.from_bytes(payload[4:8], "big")
            elif response is None:
                continue
            elif kind == 1:
                fields = [
                    (bytes(n), bytes(v)) for n, v in self.conn.decoder.decode(payload, raw=True)
                ]
                if response.status == 0:
                    response.headers = fields
                    response.status = int(dict(fields)[b":status"])
                else:
                    response.trailers = fields
                response.ended = response.ended or bool(flags & 1)
            elif kind == 0:
                response.body += payload
                response.ended = response.ended or bool(flags & 1)
            elif kind == 3:
                response.reset = int.from_bytes(payload, "big")
        self._rest = data[i:]

    def handle(self, events: list[Any]) -> None:
        for event in events:
            stream_id = getattr(event, "stream_id", None)
            response = self.responses.setdefault(stream_id, Response()) if stream_id else None
            if isinstance(event, h2.events.ResponseReceived):
                assert response is not None
                response.headers = [(bytes(n), bytes(v)) for n, v in event.headers]
                response.status = int(dict(response.headers)[b":status"])
            elif isinstance(event, h2.events.InformationalResponseReceived):
                assert response is not None
                response.informational.append([(bytes(n), bytes(v)) for n, v in event.headers])
            elif isinstance(event, h2.events.DataReceived):
                assert response is not None
                response.body += event.data
                if self.auto_window and event.flow_controlled_length:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                assert response is not None
                response.trailers = [(bytes(n), bytes(v)) for n, v in event.headers]
            elif isinstance(event, h2.events.StreamEnded):
                assert response is not None
                response.ended = True
            elif isinstance(event, h2.events.StreamReset):
                assert response is not None
                response.reset = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
            elif isinstance(event, h2.events.SettingsAcknowledged):
                self.settings_acked = True

    def wait(self, condition: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the condition was not met in time")
            if not self.receive(left):
                if condition():
                    return
                raise ConnectionError("the server closed the connection")

    def response(self, stream_id: int, timeout: float = 5.0) -> Response:
        response = self.responses[stream_id]
        self.wait(lambda: response.ended or response.reset is not None, timeout)
        return response

    def get(self, path: str = "/", **options: Any) -> Response:
        return self.response(self.request(path, **options))

    def close(self) -> None:
        self.sock.close()


# -- apps --------------------------------------------------------------------------------------


async def hello(scope, receive, send):
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"Hello, world!"})


async def echo(scope, receive, send):
    """The request body back, and what the scope said."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    info = {
        key: scope[key]
        for key in (
            "http_version",
            "method",
            "path",
            "raw_path",
            "query_string",
            "scheme",
            "root_path",
        )
    }
    info["raw_path"] = info["raw_path"].decode()
    info["query_string"] = info["query_string"].decode()
    info["headers"] = [[n.decode(), v.decode()] for n, v in scope["headers"]]
    info["client"] = list(scope["client"])
    info["server"] = list(scope["server"])
    info["size"] = len(body)
    info["body_head"] = body[:16].decode("latin-1")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(info).encode()})


def connect(server, **options: Any) -> Client:
    return Client(server.port, **options)


# -- selection ---------------------------------------------------------------------------------


def test_prior_knowledge_request_and_response(loop_name):
    with serve(hello, loop=loop_name) as server:
        client = connect(server)
        response = client.get("/")
        assert response.status == 200
        assert response.body == b"Hello, world!"
        assert response.header(b"content-type") == b"text/plain"
        assert response.header(b"content-length") == b"13"
        assert response.header(b"server") == b"aserve"
        assert response.header(b"date") is not None
        # More requests on the same connection, and the HPACK tables kept in step.
        for _ in range(3):
            assert client.get("/again").body == b"Hello, world!"
        client.close()


def test_scope_of_a_stream():
    with serve(echo, root_path="/api") as server:
        client = connect(server)
        response = client.get(
            "/a%20b/c?x=1&y=%20",
            headers=[(b"cookie", b"a=1"), (b"x-custom", b"v"), (b"cookie", b"b=2")],
        )
        info = json.loads(response.body)
        assert info["http_version"] == "2"
        assert info["method"] == "GET"
        assert info["path"] == "/api/a b/c"
        assert info["raw_path"] == "/api/a%20b/c"
        assert info["query_string"] == "x=1&y=%20"
        assert info["scheme"] == "http"
        assert info["root_path"] == "/api"
        assert info["client"][0] == "127.0.0.1"
        assert info["server"] == ["127.0.0.1", server.port]
        # No pseudo-headers; :authority as host; cookies joined into one field.
        assert info["headers"] == [
            ["host", "example.com"],
            ["x-custom", "v"],
            ["cookie", "a=1; b=2"],
        ]


def _upgrade_request(port: int, body: bytes = b"") -> tuple[socket.socket, Client, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    client = Client(port, sock=sock, upgrade=True)
    settings = client.conn.initiate_upgrade_connection()
    head = (
        b"POST /up HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n"
    )
    if body:
        head += b"content-length: %d\r\n" % len(body)
    sock.sendall(head + b"\r\n" + body)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    return sock, client, answer


@pytest.mark.parametrize("body", [b"", b"x" * 100_000], ids=["no body", "with a body"])
def test_upgrade_h2c(body):
    with serve(echo) as server:
        _, client, answer = _upgrade_request(server.port, body)
        assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"upgrade: h2c" in answer.lower()
        client.responses[1] = Response()
        client.flush()  # the client preface, after the 101
        info = json.loads(client.response(1).body)
        assert info["http_version"] == "2"
        assert info["size"] == len(body)
        # The connection goes on as HTTP/2.
        assert json.loads(client.get("/next").body)["path"] == "/next"
        client.close()


def test_upgrade_without_http2_settings_stays_http_1_1():
    with serve(echo) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")


def test_no_http2_answers_the_preface_as_http_1_1():
    with (
        serve(hello, http2=False) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock,
    ):
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 505 ")


def test_bytes_of_neither_protocol_get_an_http_1_1_400():
    """A bad HTTP/2 preface is also a malformed HTTP/1.1 request on a port that speaks both:
    answered as one (h2spec's http2/3.5/2 wants silence there: docs/http2.md)."""
    with serve(hello) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"INVALID CONNECTION PREFACE\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("h2certs")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(path / "server.pem")
    cert.private_key_pem.write_to_path(path / "server.key")
    ca.cert_pem.write_to_path(path / "ca.pem")
    return {
        "ssl_certfile": str(path / "server.pem"),
        "ssl_keyfile": str(path / "server.key"),
        "ca": str(path / "ca.pem"),
    }


def _tls_options(certs: dict[str, str], **options: Any) -> dict[str, Any]:
    return {"ssl_certfile": certs["ssl_certfile"], "ssl_keyfile": certs["ssl_keyfile"], **options}


@pytest.mark.parametrize("http2", [True, False])
def test_alpn_offers_h2_unless_turned_off(certs, http2):
    with serve(echo, **_tls_options(certs, http2=http2)) as server:
        context = ssl.create_default_context(cafile=certs["ca"])
        context.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            assert sock.selected_alpn_protocol() == ("h2" if http2 else "http/1.1")
            if http2:
                client = Client(server.port, sock=sock)
                response = client.get("/tls")
                info = json.loads(response.body)
                assert info["scheme"] == "https"
                assert info["http_version"] == "2"


def test_httpx_over_tls_with_the_tls_extension(certs):
    import httpx

    tls_seen: list[Any] = []

    async def app(scope, receive, send):
        tls_seen.append(scope["extensions"].get("tls"))
        await hello(scope, receive, send)

    with serve(app, **_tls_options(certs)) as server:
        context = ssl.create_default_context(cafile=certs["ca"])
        with httpx.Client(http2=True, verify=context) as client:
            response = client.get(f"https://localhost:{server.port}/")
            assert response.http_version == "HTTP/2"
            assert response.text == "Hello, world!"
    assert tls_seen[0]["tls_version"] in (0x0303, 0x0304)


def test_httpx_prior_knowledge():
    import httpx

    with serve(echo) as server, httpx.Client(http1=False, http2=True) as client:
        responses = [client.post(f"{server.url}/p{i}", content=b"z" * i) for i in range(3)]
        assert [r.http_version for r in responses] == ["HTTP/2"] * 3
        assert [r.json()["size"] for r in responses] == [0, 1, 2]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("option", ["--http2-prior-knowledge", "--http2"])
def test_curl(option):
    with serve(echo) as server:
        result = subprocess.run(
            ["curl", "-s", "-w", "\\n%{http_version}", option, "-d", "abc", f"{server.url}/c"],
            capture_output=True,
            timeout=20,
            check=True,
        )
        body, _, version = result.stdout.rpartition(b"\n")
        assert version == b"2"
        assert json.loads(body)["size"] == 3


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp is not installed")
def test_nghttp():
    with serve(hello) as server:
        result = subprocess.run(
            ["nghttp", "-n", "-s", "-m", "5", f"{server.url}/"],
            capture_output=True,
            timeout=20,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.count(b"/") >= 5  # one statistics line per request


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed")
def test_h2load_loses_no_request():
    with serve(hello) as server:
        result = subprocess.run(
            ["h2load", "-n", "2000", "-c", "4", "-m", "10", f"{server.url}/"],
            capture_output=True,
            timeout=60,
            text=True,
        )
        assert "2000 succeeded, 0 failed, 0 errored, 0 timeout" in result.stdout, result.stdout


_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# A page, a stylesheet and two fetches: the page writes what Resource Timing says of each
# (`nextHopProtocol`) into the DOM, which Chromium's --dump-dom prints.
_PAGE = b"""<!doctype html>
<html><head><link rel="stylesheet" href="/style.css"></head>
<body><pre id="out">pending</pre><script>
(async () => {
  const texts = await Promise.all(["/one", "/two"].map(async (p) => (await fetch(p)).text()));
  let entries = [];
  for (let i = 0; i < 500 && entries.length < 3; i++) {
    await new Promise((done) => setTimeout(done, 10));
    entries = performance.getEntriesByType("resource");
  }
  const seen = [performance.getEntriesByType("navigation")[0], ...entries].map(
    (entry) => [new URL(entry.name).pathname, entry.nextHopProtocol]);
  document.getElementById("out").textContent = JSON.stringify({texts, seen});
})();
</script></body></html>"""


@pytest.mark.once
@pytest.mark.skipif(
    _CHROMIUM is None,
    reason="chromium is not installed (tests/e2e/install-proxies.sh: apt-get install chromium)",
)
def test_chromium_loads_a_page_and_its_fetches_over_h2(certs, tmp_path):
    """Headless Chromium over TLS, trusting our certificate by its key (SPKI), not by turning
    checks off: the page, its stylesheet and its fetches all go over HTTP/2 (ALPN `h2`), as
    the browser's Resource Timing and the app's scope both say."""
    import base64
    import hashlib
    import html
    import re

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    versions: dict[str, str] = {}

    async def app(scope, receive, send):
        versions[scope["path"]] = scope["http_version"]
        path = scope["path"]
        if path == "/":
            body, kind = _PAGE, b"text/html"
        elif path == "/style.css":
            body, kind = b"pre { color: black }", b"text/css"
        else:
            body, kind = path.encode(), b"text/plain"
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
        )
        await send({"type": "http.response.body", "body": body})

    with open(certs["ssl_certfile"], "rb") as file:
        key = x509.load_pem_x509_certificate(file.read()).public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    with serve(app, **_tls_options(certs)) as server:
        assert _CHROMIUM is not None
        result = subprocess.run(
            [
                _CHROMIUM,
                "--headless",
                "--no-sandbox",  # as root in a container
                "--disable-gpu",
                f"--user-data-dir={tmp_path / 'profile'}",
                f"--ignore-certificate-errors-spki-list={pin}",
                "--virtual-time-budget=20000",  # --dump-dom waits for the page's script
                "--dump-dom",
                f"https://127.0.0.1:{server.port}/",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    out = re.search(r'<pre id="out">(.*?)</pre>', result.stdout, re.DOTALL)
    assert out is not None, result.stdout[-2000:] + result.stderr[-2000:]
    page = json.loads(html.unescape(out.group(1)))
    assert page["texts"] == ["/one", "/two"]
    protocols = {path: protocol for path, protocol in page["seen"]}  # (and /favicon.ico)
    paths = ("/", "/style.css", "/one", "/two")
    assert set(paths) <= protocols.keys(), page
    assert set(protocols.values()) == {"h2"}, page
    assert [versions[path] for path in paths] == ["2"] * 4


# -- bodies and flow control ---------------------------------------------------------------------


def test_request_body_larger_than_the_window():
    with serve(echo) as server:
        client = connect(server)
        body = bytes(range(256)) * 4000  # 1 MB, four times the stream window
        info = json.loads(client.get("/", method="POST", body=body).body)
        assert info["size"] == len(body)
        assert info["body_head"] == body[:16].decode("latin-1")


def test_a_body_is_never_buffered_past_the_window_and_one_slow_reader_stalls_no_one():
    release = threading.Event()

    async def app(scope, receive, send):
        if scope["path"] == "/slow":
            # Reads nothing until told: the client must stop at the stream's window.
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        await echo(scope, receive, send)

    with serve(app, http2_initial_window_size=65535) as server:
        client = connect(server)
        slow = client.request("/slow", method="POST", body=b"a" * 65535, end=False)  # the window
        with pytest.raises(h2.exceptions.FlowControlError):
            client.conn.send_data(slow, b"b")  # nothing acknowledged: no room
        # Other streams go on meanwhile, bodies included.
        for i in range(3):
            assert (
                json.loads(client.get(f"/fast{i}", method="POST", body=b"x" * 1000).body)["size"]
                == 1000
            )
        assert client.conn.local_flow_control_window(slow) == 0
        release.set()
        client.conn.end_stream(slow)
        client.flush()
        assert json.loads(client.response(slow).body)["size"] == 65535


def test_send_waits_for_the_clients_window():
    sent: list[float] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(8):
            await send({"type": "http.response.body", "body": b"y" * 1000, "more_body": True})
            sent.append(time.monotonic())
        await send({"type": "http.response.body", "body": b""})

    with serve(app) as server:
        client = connect(
            server, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2500}, auto_window=False
        )
        client.wait(lambda: client.settings_acked)
        stream = client.request("/")
        response = client.responses[stream]
        client.wait(lambda: len(response.body) >= 2500)
        time.sleep(0.2)
        assert len(response.body) == 2500  # the window, no more
        assert len(sent) <= 3  # the app's send waits: it is not buffered
        client.conn.increment_flow_control_window(10_000, stream)
        client.flush()
        assert client.response(stream).body == b"y" * 8000
        assert len(sent) == 8


def test_streams_run_at_once():
    gate = asyncio.Event()
    order: list[str] = []

    async def app(scope, receive, send):
        if scope["path"] == "/wait":
            await gate.wait()
        else:
            gate.set()
        order.append(scope["path"])
        await hello(scope, receive, send)

    with serve(app) as server:
        client = connect(server)
        first = client.request("/wait")
        second = client.request("/go")
        assert client.response(first).status == 200
        assert client.response(second).status == 200
        assert order == ["/go", "/wait"]


def test_rst_stream_disconnects_the_app():
    messages: list[dict] = []
    done = threading.Event()

    async def app(scope, receive, send):
        messages.append(await receive())
        messages.append(await receive())
        done.set()

    with serve(app) as server:
        client = connect(server)
        stream = client.request("/", method="POST", body=b"part", end=False)
        client.wait(lambda: True)
        time.sleep(0.1)
        client.conn.reset_stream(stream, h2.errors.ErrorCodes.CANCEL)
        client.flush()
        assert done.wait(5)
        assert messages[0] == {"type": "http.request", "body": b"part", "more_body": True}
        assert messages[1] == {"type": "http.disconnect"}
        # The connection goes on.
        assert client.responses.get(stream) is not None


def test_connection_loss_disconnects_every_stream():
    seen: list[dict] = []
    both = threading.Event()

    async def app(scope, receive, send):
        seen.append(await receive())
        seen.append(await receive())
        if len(seen) == 4:
            both.set()

    with serve(app) as server:
        client = connect(server)
        for _ in range(2):
            client.request("/", method="POST", body=b"", end=False)
        time.sleep(0.2)
        client.close()
        assert both.wait(5)
        # Each app was waiting for its body: both receives of both say the client left.
        assert seen == [{"type": "http.disconnect"}] * 4


# -- the extensions ----------------------------------------------------------------------------


def test_trailers():
    async def app(scope, receive, send):
        assert "http.response.trailers" in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"data", "more_body": False})
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"grpc-status", b"0")],
                "more_trailers": False,
            }
        )

    with serve(app) as server:
        client = connect(server)
        response = client.get("/", headers=[(b"te", b"trailers")])
        assert response.body == b"data"
        assert response.trailers == [(b"grpc-status", b"0")]


def test_early_hints():
    async def app(scope, receive, send):
        await send({"type": "http.response.early_hint", "links": [b"</style.css>; rel=preload"]})
        await hello(scope, receive, send)

    with serve(app) as server:
        response = connect(server).get("/")
        assert response.informational == [
            [(b":status", b"103"), (b"link", b"</style.css>; rel=preload")]
        ]
        assert response.status == 200


def test_pathsend(tmp_path):
    path = tmp_path / "file.bin"
    data = bytes(range(256)) * 2000
    path.write_bytes(data)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(path)})

    with serve(app) as server:
        response = connect(server).get("/")
        assert response.body == data


def test_metrics_count_http2_connections_and_requests():
    from test_metrics import scrape

    with serve(hello, metrics_port=0) as server:
        client = connect(server)
        for _ in range(3):
            client.get("/")
        assert client.get("/x").status == 200
        metrics = scrape(server.server.metrics_port)
    assert metrics["aserve_http2_connections_total"] == 1
    assert metrics["aserve_http2_requests_total"] == 4
    assert metrics["aserve_http_requests_total"] == 4
    assert metrics['aserve_http_responses_total{status="2xx"}'] == 4


def test_access_log_names_http_2(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="aserve.access")
    with serve(hello, access_log=True) as server:
        connect(server).get("/logged")
    assert any('"GET /logged HTTP/2" 200' in r.getMessage() for r in caplog.records)


# -- errors, limits and deadlines ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ([(b"X-Upper", b"v")], "uppercase name"),
        ([(b"connection", b"keep-alive")], "connection-specific"),
        ([(b"te", b"gzip")], "TE other than trailers"),
        ([(b"x", b" padded")], "value with leading space"),
    ],
)
def test_malformed_requests_reset_the_stream(fields, why):
    with serve(hello) as server:
        client = connect(server, validate=False)
        stream = client.request("/", headers=fields)
        assert client.response(stream).reset == h2.errors.ErrorCodes.PROTOCOL_ERROR, why
        assert client.get("/").status == 200  # the connection goes on


def test_content_length_must_match_the_body():
    with serve(echo) as server:
        client = connect(server, validate=False)
        stream = client.request(
            "/", method="POST", headers=[(b"content-length", b"10")], body=b"short"
        )
        assert client.response(stream).reset == h2.errors.ErrorCodes.PROTOCOL_ERROR


def test_limits_answer_per_stream():
    with serve(
        echo, limit_request_head=4000, limit_request_body=100, limit_request_line=200
    ) as server:
        client = connect(server)
        assert client.get("/", headers=[(b"x-big", b"v" * 5000)]).status == 431
        assert client.get("/" + "p" * 300).status == 414
        stream = client.request(
            "/", method="POST", headers=[(b"content-length", b"1000")], body=b"z" * 1000
        )
        assert client.response(stream).status == 413
        # A body over the limit without a declared length.
        assert client.get("/", method="POST", body=b"z" * 500).status == 413
        # The HPACK table stays right after each refusal.
        assert client.get("/fine").status == 200


def test_settings_announce_the_limits():
    with serve(hello, limit_request_head=12345, http2_max_concurrent_streams=7) as server:
        client = connect(server)
        client.wait(lambda: client.conn.remote_settings.max_concurrent_streams == 7)
        assert client.conn.remote_settings.max_header_list_size == 12345
        assert client.conn.remote_settings.initial_window_size == 256 * 1024


def test_streams_beyond_the_maximum_are_refused():
    release = threading.Event()

    async def app(scope, receive, send):
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        await hello(scope, receive, send)

    with serve(app, http2_max_concurrent_streams=2) as server:
        client = connect(server)
        client.wait(lambda: client.conn.remote_settings.max_concurrent_streams == 2)
        # h2 itself would refuse to open a third: tell it the limit is higher.
        client.conn.remote_settings.acknowledge()
        first, second = client.request("/1"), client.request("/2")
        client.conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 100
        client.conn.remote_settings.acknowledge()
        third = client.request("/3")
        assert client.response(third).reset == h2.errors.ErrorCodes.REFUSED_STREAM
        release.set()
        assert client.response(first).status == 200
        assert client.response(second).status == 200


def test_body_idle_timeout_answers_408():
    with serve(echo, timeout_request_body_idle=0.3) as server:
        client = connect(server)
        stream = client.request("/", method="POST", body=b"start", end=False)
        assert client.response(stream).status == 408


def test_request_timeout_answers_503():
    async def app(scope, receive, send):
        await asyncio.sleep(10)

    with serve(app, timeout_request=0.3) as server:
        assert connect(server).get("/").status == 503


def test_connection_errors_end_with_goaway():
    with serve(hello) as server:
        client = connect(server)
        client.get("/")
        # A frame on stream 0 that must be on a stream: PROTOCOL_ERROR for the connection.
        client.sock.sendall(b"\x00\x00\x00\x00\x01\x00\x00\x00\x00")  # DATA on stream 0
        client.wait(lambda: client.goaway is not None)
        assert client.goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert client.goaway.last_stream_id == 1
        with pytest.raises(ConnectionError):
            client.wait(lambda: False, timeout=2)


def test_hpack_bound_is_enforced_while_decoding():
    """A small block naming one large table entry many times (an "HPACK bomb") is refused
    with 431 without being expanded, and the table stays in step."""
    with serve(echo, limit_request_head=16384) as server:
        client = connect(server)
        encoder = hpack.Encoder()
        base = [
            (b":method", b"GET"),
            (b":path", b"/"),
            (b":scheme", b"http"),
            (b":authority", b"h"),
        ]
        big = (b"x-big", b"v" * 4000)
        blocks = [
            encoder.encode([*base, big]),
            encoder.encode(base + [big] * 1000),  # 1,000 bytes on the wire, 4 MB decoded
            encoder.encode([*base, big]),  # the table still in step: decodes as the client meant
        ]
        for stream, block in zip((1, 3, 5), blocks, strict=True):
            header = len(block).to_bytes(3, "big") + b"\x01\x05" + stream.to_bytes(4, "big")
            client.sock.sendall(header + block)
        decoder = hpack.Decoder()
        client.sock.settimeout(5)
        statuses: dict[int, bytes] = {}
        buffer = b""
        while 5 not in statuses:  # read frames until stream 5's HEADERS
            chunk = client.sock.recv(65536)
            assert chunk, "the server closed the connection"
            buffer += chunk
            while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                length = int.from_bytes(buffer[:3], "big")
                stream_id = int.from_bytes(buffer[5:9], "big")
                if buffer[3] == 1:  # HEADERS (its block decoded in order: the table needs it)
                    fields = dict(decoder.decode(buffer[9 : 9 + length], raw=True))
                    statuses[stream_id] = fields[b":status"]
                buffer = buffer[9 + length :]
        assert statuses == {1: b"200", 3: b"431", 5: b"200"}


# -- graceful close ----------------------------------------------------------------------------


def _rest_until_close(client: Client) -> tuple[bytes, bool]:
    """What the server still sends, until it closes; and whether it closed cleanly (a FIN),
    not with a reset, which could lose its last frames."""
    data, clean = client._rest, True
    client._rest = b""
    client.sock.settimeout(5)
    while True:
        try:
            chunk = client.sock.recv(65536)
        except ConnectionResetError:
            clean = False
            break
        if not chunk:
            break
        data += chunk
    return data, clean


def _frame_kinds(data: bytes) -> list[tuple[int, int]]:
    """(type, stream id) of each frame in `data`."""
    kinds = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        kinds.append((data[3], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF))
        data = data[9 + length :]
    return kinds


def _shutting_down(live) -> bool:
    state = live.server.state
    return state is not None and state.shutting_down


class Held:
    """An app whose /held request waits until `release` is set (in a thread: the server's
    loop runs on); the others are answered at once. `paths`: each request's path."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.paths: list[str] = []

    async def __call__(self, scope, receive, send):
        self.paths.append(scope["path"])
        if scope["path"] == "/held":
            self.started.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 10)
        await hello(scope, receive, send)


@contextlib.contextmanager
def _stopped_while_held(app: Held) -> Any:
    """A server told to stop while a client's /held request is in flight: (the server, the
    client, the held stream). The stop completes once the app is released."""
    with serve(app) as live:
        try:
            client = connect(live)
            held = client.request("/held")
            assert app.started.wait(5)
            stopper = threading.Thread(target=live.stop)
            stopper.start()
            yield live, client, held
            stopper.join(10)
            assert not stopper.is_alive()
        finally:
            app.release.set()


def test_a_draining_connection_answers_every_stream_then_sends_its_goaway_last():
    """A connection with a stream in flight when the server shuts down answers it, and a
    stream the client opens meanwhile too, and only then sends its one GOAWAY, naming the
    last stream, as the last frame before a clean close: a client that takes any GOAWAY as
    the end of the connection (python-hyper's h2, httpx's engine, which refuses every frame
    after it) loses nothing."""
    app = Held()
    with _stopped_while_held(app) as (live, client, held):
        deadline = time.monotonic() + 5
        while not _shutting_down(live) and time.monotonic() < deadline:
            time.sleep(0.005)
        meanwhile = client.request("/")
        assert client.response(meanwhile).status == 200
        assert client.goaway is None
        app.release.set()
        rest, clean = _rest_until_close(client)
        assert clean
        assert _frame_kinds(rest)[-1] == (7, 0)  # the GOAWAY, last
        # h2 as the client: it refuses any frame after a GOAWAY, so this raises if one came.
        events = client.conn.receive_data(rest)
        client.handle(events)
        assert isinstance(events[-1], h2.events.ConnectionTerminated)
        assert (events[-1].error_code, events[-1].last_stream_id) == (0, meanwhile)
        assert client.responses[held].ended and client.responses[held].body == b"Hello, world!"


def test_past_the_grace_new_streams_are_left_unprocessed_for_the_goaway_to_name():
    """A stream in flight for longer than GOAWAY_GRACE (1 s): the streams the client opens
    after it are not processed (their apps never run), so that the one in flight runs out;
    then the GOAWAY names it, and the client knows the later ones may be sent again."""
    app = Held()
    with _stopped_while_held(app) as (_, client, held):
        time.sleep(1.5)  # past GOAWAY_GRACE: nothing to poll for, no frame is sent
        assert client.goaway is None
        later = client.request("/later", body=b"x" * 100)
        time.sleep(0.2)
        assert app.paths == ["/held"]
        app.release.set()
        rest, clean = _rest_until_close(client)
        assert clean
        events = client.conn.receive_data(rest)  # h2: nothing after the GOAWAY
        client.handle(events)
        assert isinstance(events[-1], h2.events.ConnectionTerminated)
        assert events[-1].last_stream_id == held < later
        assert client.responses[held].body == b"Hello, world!"
        assert client.responses[later].status == 0 and client.responses[later].reset is None
        assert app.paths == ["/held"]


def _goaway_waiting(sock: socket.socket, timeout: float = 10) -> None:
    """Until the server's bytes wait unread on `sock` (its GOAWAY, sent while it was idle)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                return
        except BlockingIOError:
            pass
        time.sleep(0.005)
    raise TimeoutError("no GOAWAY")


@pytest.mark.parametrize("ending", ["keep-alive timeout", "shutdown"])
def test_a_request_crossing_the_goaway_is_not_processed_and_the_close_is_clean(ending):
    """An idle connection ends with GOAWAY naming the last stream processed: a request the
    client sent before reading it (on the wire as it left) is not processed and gets no frame
    (a RST_STREAM after the GOAWAY is one h2 would refuse), the client learns from the GOAWAY
    that it may send it again, and the connection ends with a FIN, not a reset that could
    lose the GOAWAY."""
    paths: list[str] = []

    async def app(scope, receive, send):
        paths.append(scope["path"])
        await hello(scope, receive, send)

    timeout = 0.3 if ending == "keep-alive timeout" else 60
    server = serve(app, timeout_keep_alive=timeout)
    live = server.__enter__()
    try:
        client = connect(live)
        first = client.get("/first")
        assert first.status == 200
        if ending == "shutdown":
            stopper = threading.Thread(target=live.stop)
            stopper.start()
        _goaway_waiting(client.sock)
        crossing = client.request("/crossing")  # h2 has not read the GOAWAY: it sends
        rest, clean = _rest_until_close(client)
        assert clean
        assert _frame_kinds(rest) == [(7, 0)]
        events = client.conn.receive_data(rest)
        assert isinstance(events[-1], h2.events.ConnectionTerminated)
        assert events[-1].last_stream_id == 1 < crossing
        assert paths == ["/first"]
    finally:
        server.__exit__(None, None, None)


def test_httpx_sends_a_request_that_crossed_the_goaway_again():
    """httpx (http2=True) sends its next request on a connection whose keep-alive timeout
    just sent GOAWAY, before reading it (its socket is held until the GOAWAY is there):
    the request is sent again on a new connection and answered, not failed."""
    import httpcore
    import httpx

    class Stream(httpcore.NetworkStream):
        def __init__(self, inner: httpcore.NetworkStream, backend: Backend) -> None:
            self.inner, self.backend = inner, backend

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self.inner.read(max_bytes, timeout)

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            if self.backend.cross:
                self.backend.cross = False
                _goaway_waiting(self.inner.get_extra_info("socket"))
            self.inner.write(buffer, timeout)

        def close(self) -> None:
            self.inner.close()

        def get_extra_info(self, info: str) -> Any:
            return self.inner.get_extra_info(info)

    class Backend(httpcore.SyncBackend):
        def __init__(self) -> None:
            self.connections = 0
            self.cross = False

        def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
            self.connections += 1
            return Stream(super().connect_tcp(*args, **kwargs), self)

    backend = Backend()
    transport = httpx.HTTPTransport(http1=False, http2=True)
    transport._pool = httpcore.ConnectionPool(http1=False, http2=True, network_backend=backend)
    with serve(hello, timeout_keep_alive=0.3) as server, httpx.Client(transport=transport) as c:
        assert c.get(server.url + "/").status_code == 200
        backend.cross = True
        response = c.get(server.url + "/")
        assert response.status_code == 200 and response.http_version == "HTTP/2"
        assert not backend.cross  # it did wait for the GOAWAY
        assert backend.connections == 2


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_request_in_flight_through_a_shutdown_is_answered():
    started = threading.Event()

    async def app(scope, receive, send):
        started.set()
        await asyncio.sleep(1.5)  # past GOAWAY_GRACE too
        await hello(scope, receive, send)

    server = serve(app)
    live = server.__enter__()
    try:
        curl = subprocess.Popen(
            ["curl", "-sS", "--http2-prior-knowledge", "-w", "\\n%{http_version}", live.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert started.wait(10)
        live.stop()
        out, err = curl.communicate(timeout=20)
        assert curl.returncode == 0, err
        assert out == b"Hello, world!\n2"
    finally:
        server.__exit__(None, None, None)


# -- bytes split anywhere ----------------------------------------------------------------------


def test_any_split_of_the_input_gives_the_same_answers():
    """The frame reader, fed a client's bytes cut at every position (two reads), answers
    exactly as for one read: preface, SETTINGS, HEADERS with CONTINUATION, DATA."""
    from aserve.config import Config
    from aserve.protocols.http import HttpProtocol
    from aserve.state import ServerState

    def make_client():
        client = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        client.initiate_connection()
        base = [(b":scheme", b"http"), (b":authority", b"h")]
        client.send_headers(1, [(b":method", b"GET"), (b":path", b"/x"), *base], end_stream=True)
        client.send_headers(
            3, [(b":method", b"POST"), (b":path", b"/y"), *base, (b"x-long", b"q" * 200)]
        )
        client.send_data(3, b"body bytes", end_stream=True)
        return client, client.data_to_send()

    _, sent = make_client()
    data = bytearray(sent)
    # Cut stream 3's header block into HEADERS + CONTINUATION.
    first = data.index(b"\x01\x04\x00\x00\x00\x03") - 3
    length = int.from_bytes(data[first : first + 3], "big")
    block = bytes(data[first + 9 : first + 9 + length])
    data[first : first + 9 + length] = (
        (40).to_bytes(3, "big")
        + b"\x01\x00\x00\x00\x00\x03"
        + block[:40]
        + (length - 40).to_bytes(3, "big")
        + b"\x09\x04\x00\x00\x00\x03"
        + block[40:]
    )
    data = bytes(data)

    class Transport(asyncio.Transport):
        def __init__(self):
            super().__init__()
            self.out = bytearray()
            self.protocol = None

        def get_extra_info(self, name, default=None):
            return {"sockname": ("127.0.0.1", 1), "peername": ("127.0.0.1", 2)}.get(name, default)

        def write(self, chunk):
            self.out += chunk

        def set_protocol(self, protocol):
            self.protocol = protocol

        def is_closing(self):
            return False

        def close(self):
            pass

        def pause_reading(self):
            pass

        def resume_reading(self):
            pass

    async def answers(pieces):
        state = ServerState(Config(app="x", date_header=False), echo, asyncio.get_running_loop())
        transport = Transport()
        protocol = HttpProtocol(state)
        transport.protocol = protocol
        protocol.connection_made(transport)
        for piece in pieces:
            transport.protocol.data_received(piece)
        for _ in range(5):  # the apps that waited for a body answer a few loop turns later
            await asyncio.sleep(0)
        reader, _ = make_client()
        bodies: dict[int, bytes] = {1: b"", 3: b""}
        for event in reader.receive_data(bytes(transport.out)):
            if isinstance(event, h2.events.DataReceived):
                bodies[event.stream_id] += event.data
        return bodies

    async def run():
        whole = await answers([data])
        assert json.loads(whole[1])["path"] == "/x"
        assert json.loads(whole[3])["size"] == 10
        for cut in range(1, len(data)):
            assert await answers([data[:cut], data[cut:]]) == whole, cut

    asyncio.run(run())
