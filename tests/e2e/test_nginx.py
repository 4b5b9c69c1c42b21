"""aserve behind a real nginx (TCP and Unix-socket upstreams; HTTP, TLS and WebSockets)."""

from __future__ import annotations

import json
import socket
import ssl

import httpx
import pytest
from e2e_support import aserve, nginx
from websockets.sync.client import connect

pytestmark = pytest.mark.once

# The test's client connects from a second loopback address: nginx reports it in
# X-Forwarded-For, while aserve sees nginx itself at 127.0.0.1.
CLIENT = "127.0.0.2"


@pytest.fixture(params=["tcp", "uds"])
def stack(request, tmp_path):
    """aserve started as a user would behind a local proxy, with nginx in front. No flags: the
    default --forwarded-allow-ips (127.0.0.1) trusts nginx on loopback, and a Unix-socket peer,
    which has no address, counts as local."""
    uds = tmp_path / "aserve.sock" if request.param == "uds" else None
    with aserve(uds=uds) as server, nginx(tmp_path, server.address) as proxy:
        yield proxy


def assert_forwarded(seen: dict, scheme: str) -> None:
    """The proxy's X-Forwarded-For / X-Forwarded-Proto became the scope's client and scheme."""
    assert (seen["client"] or [None])[0] == CLIENT
    assert seen["scheme"] == scheme


def client(proxy, tls: bool) -> httpx.Client:
    context = ssl.create_default_context(cafile=proxy.cert)
    transport = httpx.HTTPTransport(local_address=CLIENT, verify=context)
    base = f"https://127.0.0.1:{proxy.tls_port}" if tls else f"http://127.0.0.1:{proxy.port}"
    return httpx.Client(base_url=base, transport=transport, timeout=10)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_http_through_nginx(stack, tls):
    with client(stack, tls) as http:
        first = http.get("/first?x=1")
        second = http.get("/second")  # the same client connection, kept alive
        upload = http.post("/upload", content=b"u" * 1_000_000)
    scheme = "https" if tls else "http"
    port = stack.tls_port if tls else stack.port
    for response, path in [(first, "/first"), (second, "/second"), (upload, "/upload")]:
        assert response.status_code == 200, response.text
        seen = response.json()
        assert seen["path"] == path
        assert seen["host"] == f"127.0.0.1:{port}"
        assert seen["x_forwarded_for"] == CLIENT
    assert upload.json()["body_size"] == 1_000_000
    for response in (first, second, upload):
        assert_forwarded(response.json(), scheme)


def test_spoofed_forwarded_for_is_not_believed(tmp_path):
    """A client's own X-Forwarded-For reaches aserve before nginx's hop: the right-most
    address that is not a trusted proxy, the real client, is the one the app sees."""
    with aserve() as server, nginx(tmp_path, server.address) as proxy, client(proxy, False) as http:
        seen = http.get("/", headers={"X-Forwarded-For": "203.0.113.7"}).json()
    assert seen["x_forwarded_for"] == f"203.0.113.7, {CLIENT}"
    assert (seen["client"] or [None])[0] == CLIENT


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_websocket_through_nginx(stack, tls):
    sock = socket.socket()
    sock.bind((CLIENT, 0))
    port = stack.tls_port if tls else stack.port
    sock.connect(("127.0.0.1", port))
    url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/chat"
    context = ssl.create_default_context(cafile=stack.cert) if tls else None
    with connect(url, sock=sock, ssl=context, open_timeout=10) as ws:
        seen = json.loads(ws.recv(timeout=10))
        ws.send("hello through nginx")
        text = ws.recv(timeout=10)
        ws.send(b"\x00\x01" * 50_000)
        binary = ws.recv(timeout=10)
    assert seen["path"] == "/chat"
    assert seen["x_forwarded_for"] == CLIENT
    assert text == "hello through nginx"
    assert binary == b"\x00\x01" * 50_000
    assert_forwarded(seen, "wss" if tls else "ws")
