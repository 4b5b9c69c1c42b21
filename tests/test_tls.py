"""TLS over real sockets: httpx and a websockets client with trustme certificates, mutual TLS,
the ASGI `tls` extension, plain HTTP on the TLS port, and the settings' one-line errors."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import time

import httpx
import pytest
import trustme
from cryptography import x509
from websockets.sync.client import connect

from aserve.asgi import HTTP_EXTENSIONS
from aserve.config import Config
from aserve.errors import ConfigError
from aserve.protocols import sendfile
from aserve.tls import create_ssl_context, load_tls
from conftest import read_until_close, serve


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca, tmp_path_factory):
    """Files for the server (certificate chain, key), the CA, and a client certificate."""
    path = tmp_path_factory.mktemp("certs")
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    client_cert = ca.issue_cert(
        "client@example.com", common_name="client, one", organization_name="Example"
    )
    files = {
        "certfile": path / "server.pem",
        "keyfile": path / "server.key",
        "ca": path / "ca.pem",
        "client": path / "client.pem",
    }
    server_cert.cert_chain_pems[0].write_to_path(files["certfile"])
    server_cert.private_key_pem.write_to_path(files["keyfile"])
    ca.cert_pem.write_to_path(files["ca"])
    client_cert.private_key_and_cert_chain_pem.write_to_path(files["client"])
    files["server_pem"] = server_cert.cert_chain_pems[0].bytes().decode()
    files["client_pem"] = client_cert.cert_chain_pems[0].bytes().decode()
    return files


def tls_options(certs, **options):
    return {"ssl_certfile": str(certs["certfile"]), "ssl_keyfile": str(certs["keyfile"]), **options}


def client_context(certs, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    if with_cert:
        context.load_cert_chain(str(certs["client"]))
    return context


def https_url(server, path="/") -> str:
    return f"https://localhost:{server.port}{path}"


scopes: list[dict] = []


async def record(scope, receive, send):
    if scope["type"] == "websocket":
        scopes.append(scope)
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": scope["scheme"]})
        await send({"type": "websocket.close"})
        return
    scopes.append(scope)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["scheme"].encode()})


@pytest.fixture(autouse=True)
def _clear_scopes():
    scopes.clear()


def test_https_with_httpx_and_the_tls_extension(loop_name, certs):
    with (
        serve(record, loop=loop_name, **tls_options(certs)) as server,
        httpx.Client(verify=client_context(certs)) as client,
    ):
        first = client.get(https_url(server))
        second = client.get(https_url(server, "/again"))  # same connection
    assert first.text == second.text == "https"
    tls = scopes[0]["extensions"]["tls"]
    assert tls == {
        "server_cert": certs["server_pem"],
        "client_cert_chain": [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": 0x0304,
        "cipher_suite": tls["cipher_suite"],
    }
    # The TLS 1.3 suites: 0x1301 TLS_AES_128_GCM_SHA256, 0x1302, 0x1303.
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)
    assert scopes[1]["extensions"]["tls"] == tls
    # The server's other extensions are still offered on a TLS connection.
    assert set(HTTP_EXTENSIONS) <= set(scopes[0]["extensions"])


def test_tls_1_2_reports_its_version_and_suite(certs):
    context = client_context(certs)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
    with serve(record, **tls_options(certs)) as server:
        httpx.get(https_url(server), verify=context)
    tls = scopes[0]["extensions"]["tls"]
    assert tls["tls_version"] == 0x0303
    assert tls["cipher_suite"] in (0xC02F, 0xC02B)  # the IANA numbers of those two suites


def test_plain_http_has_no_tls_extension():
    with serve(record) as server:
        httpx.get(server.url)
    assert "tls" not in scopes[0].get("extensions", {})


def test_mutual_tls_client_certificate_chain(loop_name, certs, ca):
    options = tls_options(certs, ssl_ca_certs=str(certs["ca"]), ssl_cert_reqs=2)
    with serve(record, loop=loop_name, **options) as server:
        response = httpx.get(https_url(server), verify=client_context(certs, with_cert=True))
        assert response.status_code == 200
        # Without a certificate the handshake is refused: no request reaches the app.
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(https_url(server, "/nocert"), verify=client_context(certs))
    assert [scope["path"] for scope in scopes] == ["/"]
    tls = scopes[0]["extensions"]["tls"]
    chain = tls["client_cert_chain"]
    assert chain[0] == certs["client_pem"]
    if hasattr(ssl.SSLObject, "get_verified_chain"):  # 3.13+: the chain up to our CA
        assert chain[-1] == ca.cert_pem.bytes().decode()
    # RFC 4514, checked against cryptography's own rendering of the certificate's subject.
    subject = x509.load_pem_x509_certificate(chain[0].encode()).subject.rfc4514_string()
    assert subject.startswith(r"CN=client\, one,")
    assert tls["client_cert_name"] == subject
    assert tls["client_cert_error"] is None


def test_optional_client_certificate(certs):
    options = tls_options(certs, ssl_ca_certs=str(certs["ca"]), ssl_cert_reqs=1)
    with serve(record, **options) as server:
        assert httpx.get(https_url(server), verify=client_context(certs)).status_code == 200
        httpx.get(https_url(server), verify=client_context(certs, with_cert=True))
    assert scopes[0]["extensions"]["tls"]["client_cert_chain"] == []
    assert scopes[0]["extensions"]["tls"]["client_cert_name"] is None
    assert scopes[1]["extensions"]["tls"]["client_cert_chain"][0] == certs["client_pem"]


def test_alpn_offers_http_1_1_only_with_http2_off(certs):
    # (With HTTP/2 on, "h2" comes first: tests/test_http2.py.)
    with serve(record, **tls_options(certs, http2=False)) as server:
        context = client_context(certs)
        context.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            assert sock.selected_alpn_protocol() == "http/1.1"


def test_plain_http_on_the_tls_port_is_closed_quietly(loop_name, certs, caplog):
    caplog.set_level(logging.DEBUG)
    with serve(record, loop=loop_name, **tls_options(certs)) as server:
        answer = server.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
        assert not answer.startswith(b"HTTP/")
        # ...and the server goes on serving TLS.
        assert httpx.get(https_url(server), verify=client_context(certs)).text == "https"
    loud = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert loud == [], [record.getMessage() for record in loud]
    assert "TLS handshake with 127.0.0.1 failed" in caplog.text


def test_handshake_timeout_closes_a_silent_client(loop_name, certs, caplog):
    options = tls_options(certs, timeout_ssl_handshake=0.5)
    with serve(record, loop=loop_name, **options) as server, server.connect(timeout=10) as sock:
        started = time.monotonic()
        assert read_until_close(sock, timeout=10) == b""
        assert time.monotonic() - started < 8
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_websocket_over_wss(loop_name, certs):
    with (
        serve(record, loop=loop_name, **tls_options(certs)) as server,
        connect(f"wss://localhost:{server.port}/ws", ssl=client_context(certs)) as ws,
    ):
        assert ws.recv() == "wss"
    assert scopes[0]["scheme"] == "wss"
    assert scopes[0]["extensions"]["tls"]["server_cert"] == certs["server_pem"]
    assert "websocket.http.response" in scopes[0]["extensions"]


def test_pathsend_of_a_big_file_over_aserves_own_tls(loop_name, certs, tmp_path, monkeypatch):
    """TLS encrypts in user space, so pathsend cannot use sendfile there: the file is read
    through the TLS transport, and every byte of a file larger than the socket buffers (and
    than the read size) arrives intact, for a fast reader and for one that waits first."""
    data = os.urandom(5 * 1024 * 1024 + 4321)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()

    def refuse(*args):
        raise AssertionError("sendfile must not be used on a TLS connection")

    monkeypatch.setattr(sendfile, "_sendfile", refuse)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": str(path)})

    with serve(app, loop=loop_name, access_log=False, **tls_options(certs)) as server:
        with httpx.Client(verify=client_context(certs), timeout=60) as client:
            for _ in range(2):  # the connection serves on after a file
                response = client.get(https_url(server, "/big"))
                assert response.status_code == 200
                assert response.headers["content-length"] == str(len(data))
                assert hashlib.sha256(response.content).hexdigest() == digest
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        with client_context(certs).wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET /big HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            time.sleep(0.5)  # the server fills the socket buffers and waits for the reader
            received = read_until_close(tls, timeout=30)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == len(data) and hashlib.sha256(body).hexdigest() == digest


def test_proxy_protocol_header_before_the_tls_handshake(certs):
    with serve(record, proxy_protocol=True, **tls_options(certs)) as server:
        scopes_before = len(scopes)
        context = client_context(certs)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"PROXY TCP4 203.0.113.7 198.51.100.1 56324 443\r\n")
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert read_until_close(sock).endswith(b"https")
    assert scopes[scopes_before]["client"] == ("203.0.113.7", 56324)


# -- settings ---------------------------------------------------------------------------------


def _context(**options):
    return create_ssl_context(Config(app=record, **options))


def test_tls_is_off_without_a_certificate():
    assert _context() is None


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"ssl_keyfile": "key.pem"}, "ssl_keyfile is given but TLS is off"),
        ({"ssl_cert_reqs": 2}, "ssl_cert_reqs is given but TLS is off"),
        ({"ssl_certfile": "/nonexistent.pem"}, "cannot read '/nonexistent.pem'"),
        ({"ssl_cert_reqs": 3}, "must be 0 (none), 1 (optional) or 2 (required)"),
        ({"ssl_cert_reqs": 2}, "give ssl_ca_certs"),
        ({"ssl_ca_certs": "/nonexistent-ca.pem"}, "ssl_ca_certs: cannot load"),
        ({"ssl_ciphers": "NOT-A-CIPHER"}, "selects no cipher"),
        ({"ssl_keyfile_password": "wrong", "encrypted": True}, "wrong ssl_keyfile_password"),
        # Never OpenSSL's pass phrase prompt on the terminal: a server has no one to ask.
        ({"encrypted": True}, "encrypted.key' is encrypted: give ssl_keyfile_password"),
        ({"ssl_keyfile": "/nonexistent.key"}, "ssl_keyfile: cannot read '/nonexistent.key'"),
        ({"certfile": "not a certificate\n"}, "ssl_certfile: no valid PEM certificate in"),
        ({"keyfile": "not a key\n"}, "no valid PEM private key in"),
        ({"other key": True}, "does not match the certificate in"),
        ({"ssl_keyfile": None}, "(give it as ssl_keyfile)"),
        ({"ssl_version": 99}, "ssl_version 99"),
    ],
)
def test_bad_settings_are_one_line_errors(ca, certs, tmp_path, options, error):
    options = dict(options)
    for name in ("certfile", "keyfile"):
        if name in options:  # a damaged file
            damaged = tmp_path / f"damaged-{name}"
            damaged.write_text(options.pop(name))
            options[f"ssl_{name}"] = str(damaged)
    if options.pop("other key", False):
        other = tmp_path / "other.key"
        ca.issue_cert("other.example").private_key_pem.write_to_path(other)
        options["ssl_keyfile"] = str(other)
    if options.pop("encrypted", False):
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(certs["keyfile"].read_bytes(), None)
        encrypted = tmp_path / "encrypted.key"
        encrypted.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"right"),
            )
        )
        options = {**options, "ssl_keyfile": str(encrypted)}
    if "TLS is off" not in error:
        options = {**tls_options(certs), **options}
    with pytest.raises(ConfigError) as info:
        _context(**options)
    assert error in str(info.value)
    assert "\n" not in str(info.value)


def _handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> ssl.SSLObject:
    """A TLS handshake in memory; the server's SSLObject."""
    to_server, from_server, to_client, from_client = (ssl.MemoryBIO() for _ in range(4))
    server = server_context.wrap_bio(to_server, from_server, server_side=True)
    client = client_context.wrap_bio(to_client, from_client, server_hostname="localhost")
    for _ in range(10):
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if done == 2:
            return server
    raise AssertionError("no handshake")


def test_a_handshake_begun_before_a_certificate_reload_reports_its_own_certificate(
    ca, certs, tmp_path
):
    other = ca.issue_cert("localhost", "127.0.0.1")
    other.cert_chain_pems[0].write_to_path(tmp_path / "new.pem")
    other.private_key_pem.write_to_path(tmp_path / "new.key")
    old = load_tls(Config(app=record, **tls_options(certs)))
    new_options = {
        "ssl_certfile": str(tmp_path / "new.pem"),
        "ssl_keyfile": str(tmp_path / "new.key"),
    }
    new = load_tls(Config(app=record, **new_options))
    assert old is not None and new is not None
    new.replacing(old)
    began_before = _handshake(old.context, client_context(certs))
    began_after = _handshake(new.context, client_context(certs))
    assert new.extension(began_before)["server_cert"] == certs["server_pem"]
    assert new.extension(began_after)["server_cert"] == other.cert_chain_pems[0].bytes().decode()
    newer = load_tls(Config(app=record, **tls_options(certs))).replacing(new)
    assert new.previous is None  # one level kept: reloads do not pile contexts up
    assert newer.previous is new


def test_a_certificate_reload_calls_ssl_context_factory_again(ca, certs, tmp_path, caplog):
    """An embedder's factory is called again on a reload (SIGHUP; `Server.reload_tls` here):
    new connections get the context it returns now. A factory that raises, whatever it
    raises, keeps the context in use with one error line, and the server serves on."""
    other = ca.issue_cert("localhost", "127.0.0.1")
    other.cert_chain_pems[0].write_to_path(tmp_path / "new.pem")
    other.private_key_pem.write_to_path(tmp_path / "new.key")
    chains = [
        (str(certs["certfile"]), str(certs["keyfile"])),
        (str(tmp_path / "new.pem"), str(tmp_path / "new.key")),
        (str(tmp_path / "missing.pem"), None),  # a renewal half-copied
    ]

    def factory(config, default_factory):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*chains.pop(0))
        return context

    def certificate(server) -> str:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            context = client_context(certs)
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                return ssl.DER_cert_to_PEM_cert(sock.getpeercert(binary_form=True))

    def same(pem: str, expected: str) -> bool:
        return ssl.PEM_cert_to_DER_cert(pem) == ssl.PEM_cert_to_DER_cert(expected)

    with serve(record, ssl_context_factory=factory) as server:
        assert same(certificate(server), certs["server_pem"])
        assert server.server.reload_tls()
        assert same(certificate(server), other.cert_chain_pems[0].bytes().decode())
        caplog.clear()
        assert not server.server.reload_tls()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [
            "TLS certificate not reloaded, the one in use stays: ssl_context_factory raised "
            "FileNotFoundError: [Errno 2] No such file or directory"
        ]
        assert same(certificate(server), other.cert_chain_pems[0].bytes().decode())
        response = httpx.get(https_url(server), verify=client_context(certs))
        assert response.text == "https"


def test_error_answer_reaches_a_client_still_uploading_over_tls(loop_name, certs):
    # Lingering close without the half-close TLS cannot do: the 413 (and the large answer
    # before it, still in our send buffer) must reach a client that sends its body before it
    # reads, instead of a reset.
    big = b"y" * (256 * 1024)

    async def app(scope, receive, send):
        headers = [(b"content-length", b"%d" % len(big))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": big})

    size = 4 * 1024 * 1024
    head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\n"
    head += b"Content-Length: %d\r\n\r\n" % size
    options = tls_options(certs, limit_request_body=1024)
    with serve(app, loop=loop_name, **options) as server:
        for _ in range(3):
            with (
                socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
                client_context(certs).wrap_socket(raw, server_hostname="localhost") as sock,
            ):
                sock.sendall(head)
                chunk, sent = b"x" * 65536, 0
                try:
                    while sent < size:
                        sock.sendall(chunk)
                        sent += len(chunk)
                except OSError:
                    pass
                data = b""
                try:
                    while not data.endswith(b"request body too large.\n"):
                        more = sock.recv(65536)
                        if not more:
                            break
                        data += more
                except OSError as exc:
                    data += repr(exc).encode()
            assert data.startswith(b"HTTP/1.1 200 "), data[:200]
            assert big in data, data[-200:]
            assert b"HTTP/1.1 413 Content Too Large\r\n" in data, data[-300:]
