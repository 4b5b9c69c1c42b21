"""Certificate reload on SIGHUP, one process and --workers: real TLS clients, trustme CAs.

The server starts on a certificate from one CA; the files are replaced by a certificate from
another CA, then by files that do not load, each time followed by SIGHUP. The clients trust
both CAs and look at the certificate each connection got.
"""

from __future__ import annotations

import signal
import socket
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from conftest import read_response
from processes import AserveProcess, Load, wait_for

APPS = Path(__file__).parent / "apps"
PASSWORD = "secret"
MODES = {"one process": (), "--workers 2": ("--workers", "2")}


@pytest.fixture(scope="module")
def issued() -> dict[str, trustme.LeafCert]:
    first, second = trustme.CA(), trustme.CA()
    issued = {
        "a": first.issue_cert("localhost", "127.0.0.1"),
        "b": second.issue_cert("localhost", "127.0.0.1"),
    }
    issued["ca a"], issued["ca b"] = first, second  # type: ignore[assignment]
    return issued


def der(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def encrypted_key(cert: trustme.LeafCert, password: str = PASSWORD) -> bytes:
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode()),
    )


class Files:
    """The server's --ssl-certfile and --ssl-keyfile (encrypted with PASSWORD)."""

    def __init__(self, directory: Path) -> None:
        self.certfile = directory / "server.pem"
        self.keyfile = directory / "server.key"

    def use(self, cert: trustme.LeafCert, key_of: trustme.LeafCert | None = None) -> None:
        self.certfile.write_bytes(cert.cert_chain_pems[0].bytes())
        self.keyfile.write_bytes(encrypted_key(key_of or cert))


class Client:
    """TLS connections to the server, trusting both CAs."""

    def __init__(self, issued: dict, port: int) -> None:
        self.port = port
        self.context = ssl.create_default_context()
        issued["ca a"].configure_trust(self.context)
        issued["ca b"].configure_trust(self.context)

    def connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return self.context.wrap_socket(raw, server_hostname="localhost")

    def certificate(self) -> bytes:
        """The certificate a new connection gets (after a request on it is answered)."""
        with self.connect() as sock:
            get(sock, "/")
            peer = sock.getpeercert(binary_form=True)
        assert peer is not None
        return peer


def get(sock: ssl.SSLSocket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    response = read_response(sock, timeout=15)
    assert response.startswith(b"HTTP/1.1 200 "), response
    return response.partition(b"\r\n\r\n")[2]


def start(files: Files, mode: str, *options: str) -> AserveProcess:
    """The server on `files`; `wait_for_port` waits for its "running on" line, which the
    supervisor writes once every worker is ready."""
    return AserveProcess(
        "supervised:app",
        "--app-dir",
        str(APPS),
        "--port",
        "0",
        "--no-access-log",
        "--ssl-certfile",
        str(files.certfile),
        "--ssl-keyfile",
        str(files.keyfile),
        "--ssl-keyfile-password",
        PASSWORD,
        *MODES[mode],
        *options,
    )


def reload(server: AserveProcess, mode: str, log: str) -> None:
    """SIGHUP, then wait until it is done: the log line, and (workers) the rolling restart.

    Under --workers, an old worker may still accept a connection (on the certificate it
    started with) until it is told to drain: check new connections with `wait_for`.
    """
    reloads = server.output.count(log)
    restarts = server.output.count("Reload complete")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_until(lambda: server.output.count(log) > reloads, f"{log!r} logged")
    if mode != "one process":
        server.wait_until(
            lambda: server.output.count("Reload complete") > restarts, "the rolling restart"
        )


@pytest.mark.once
@pytest.mark.parametrize("mode", MODES)
def test_sighup_gives_new_connections_the_new_certificate_and_keeps_bad_files_out(
    issued, tmp_path, mode
):
    files = Files(tmp_path)
    files.use(issued["a"])
    server = start(files, mode)
    try:
        client = Client(issued, server.wait_for_port())
        assert client.certificate() == der(issued["a"])
        kept = client.connect()  # open across the reload, idle
        get(kept, "/")
        in_flight = client.connect()  # a request in progress during the reload
        in_flight.sendall(b"GET /slow?3 HTTP/1.1\r\nHost: localhost\r\n\r\n")

        files.use(issued["b"])
        reload(server, mode, "TLS certificate reloaded")

        def new_connection() -> tuple[bytes | None, bytes]:
            """The certificate a new connection gets, and the one the app's `tls` extension
            reports for it."""
            with client.connect() as sock:
                pem = get(sock, "/server-cert").decode()
                return sock.getpeercert(binary_form=True), ssl.PEM_cert_to_DER_cert(pem)

        new = (der(issued["b"]), der(issued["b"]))
        wait_for(lambda: new_connection() == new, "the new certificate")
        h2 = Client(issued, client.port)  # the reloaded context is made as the first: ALPN
        h2.context.set_alpn_protocols(["h2", "http/1.1"])
        with h2.connect() as sock:
            assert sock.selected_alpn_protocol() == "h2"
            assert sock.getpeercert(binary_form=True) == der(issued["b"])
        # The request under way ends on the connection it began on, with the old certificate.
        assert read_response(in_flight, timeout=15).startswith(b"HTTP/1.1 200 ")
        assert in_flight.getpeercert(binary_form=True) == der(issued["a"])
        if mode == "one process":  # reloaded in place: the idle connection serves on
            get(kept, "/")
            assert kept.getpeercert(binary_form=True) == der(issued["a"])
        # (Under --workers, the old workers drain: `kept` is answered with Connection: close
        # or closed once idle, as in any rolling restart.)
        in_flight.close()
        kept.close()

        # Files that do not load: one error line each, naming the problem; B stays in use.
        broken = [
            (lambda: files.certfile.unlink(), "cannot read"),
            (lambda: files.certfile.write_text("not a certificate\n"), "no valid PEM certificate"),
            (lambda: files.use(issued["a"], key_of=issued["b"]), "does not match the certificate"),
            (
                lambda: files.keyfile.write_bytes(encrypted_key(issued["b"], "not the password")),
                "wrong ssl_keyfile_password",
            ),
        ]
        for number, (damage, problem) in enumerate(broken, 1):
            files.use(issued["b"])
            damage()
            reload(server, mode, "TLS certificate not reloaded")
            errors = [line for line in server.lines if "TLS certificate not reloaded" in line]
            assert len(errors) == number and problem in errors[-1], server.output
            assert client.certificate() == der(issued["b"])
    finally:
        code = server.stop()
    assert code == 0, server.output
    assert "Traceback" not in server.output
    if mode != "one process":  # the broken files never reached a worker
        assert "could not start" not in server.output and "Reload aborted" not in server.output


@pytest.mark.once
@pytest.mark.parametrize("mode", MODES)
def test_no_request_fails_while_the_certificate_is_reloaded(issued, tmp_path, mode):
    files = Files(tmp_path)
    files.use(issued["a"])
    server = start(files, mode)
    try:
        port = server.wait_for_port()
        client = Client(issued, port)
        seen: set[bytes] = set()
        with Load(f"https://localhost:{port}", 2, 2, verify=client.context) as load:
            load.wait_for(20)
            for cert in [issued["b"], issued["a"], issued["b"]] * (
                2 if mode == "one process" else 1
            ):
                files.use(cert)
                reload(server, mode, "TLS certificate reloaded")
                wait_for(lambda cert=cert: client.certificate() == der(cert), "the new certificate")
                seen.add(der(cert))
                load.wait_for(20)
        assert load.failures == [], load.failures[:5]
        assert load.ok > 100
        assert seen == {der(issued["a"]), der(issued["b"])}
    finally:
        code = server.stop()
    assert code == 0, server.output


@pytest.mark.once
@pytest.mark.parametrize("mode", MODES)
def test_sighup_reads_the_client_ca_certificates_again(issued, tmp_path, mode):
    """--ssl-ca-certs (client certificates required) is read again too: after the CA file
    names another CA, that CA's clients are let in and the old one's are refused; a CA file
    that does not load keeps the one in use, with one error line."""
    files = Files(tmp_path)
    files.use(issued["a"])
    old_clients, new_clients = trustme.CA(), trustme.CA()
    ca_certs = tmp_path / "clients.pem"
    old_clients.cert_pem.write_to_path(ca_certs)
    server = start(files, mode, "--ssl-cert-reqs", "2", "--ssl-ca-certs", str(ca_certs))

    def answered(ca: trustme.CA) -> bool:
        """Whether a client with a certificate from `ca` gets an answer."""
        client = Client(issued, port)
        ca.issue_cert("client@example.org").configure_cert(client.context)
        try:
            with client.connect() as sock:  # TLS 1.3: a refusal arrives after the handshake
                sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                return read_response(sock, timeout=15).startswith(b"HTTP/1.1 200 ")
        except (ssl.SSLError, OSError):
            return False

    def new_ca_only() -> bool:
        return answered(new_clients) and not answered(old_clients)

    try:
        port = server.wait_for_port()
        assert answered(old_clients) and not answered(new_clients)
        new_clients.cert_pem.write_to_path(ca_certs)
        reload(server, mode, "TLS certificate reloaded")

        if mode == "one process":  # reloaded in place before the log line
            assert new_ca_only()
        else:  # an old worker may accept until it is told to drain (see `reload`)
            wait_for(new_ca_only, "the new client CA")

        ca_certs.write_text("not a certificate\n")
        reload(server, mode, "TLS certificate not reloaded")
        errors = [line for line in server.lines if "TLS certificate not reloaded" in line]
        assert len(errors) == 1 and "ssl_ca_certs: cannot load" in errors[0], server.output
        assert new_ca_only()
    finally:
        code = server.stop()
    assert code == 0, server.output
    assert "Traceback" not in server.output


@pytest.mark.once
def test_a_tls_session_resumes_on_every_worker(issued, tmp_path):
    """The supervisor loads the context before the fork, so every worker has the same
    session-ticket key: a client resumes its session whichever worker accepts it (each
    worker making its own context, a ticket from one was refused by the other)."""
    files = Files(tmp_path)
    files.use(issued["a"])
    server = start(files, "--workers 2")
    try:
        client = Client(issued, server.wait_for_port())
        session = None
        resumed: dict[bytes, list[bool]] = {}
        for _ in range(40):
            with client.context.wrap_socket(
                socket.create_connection(("127.0.0.1", client.port), timeout=10),
                server_hostname="localhost",
                session=session,
            ) as sock:
                pid = get(sock, "/")
                if session is not None:
                    resumed.setdefault(pid, []).append(sock.session_reused)
                session = sock.session
    finally:
        code = server.stop()
    assert code == 0, server.output
    assert len(resumed) == 2, resumed  # both workers answered
    assert all(all(flags) for flags in resumed.values()), resumed
