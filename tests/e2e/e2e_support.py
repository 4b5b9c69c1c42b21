"""Real proxies and real aserve processes for the end-to-end tests, all on loopback.

Each binary comes from the system's packages (`make test-e2e` installs them); where one is
missing the test that needs it is skipped with a reason that names it, never silently.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from processes import AserveProcess, Child
from processes import wait_for as wait_for  # the tests import it from here

HERE = Path(__file__).parent
# What each HAProxy server line gets for PROXY protocol v2 (docs/deployment.md shows it).
PROXY_V2 = "send-proxy-v2 check-send-proxy"
# And for HTTP/2 in cleartext to aserve (h2c).
H2C = "proto h2"


def require(binary: str) -> str:
    """The binary's path, or a skip naming it and how to get it."""
    path = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/sbin/{binary}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        pytest.skip(f"{binary} is not installed (make test-e2e installs it with apt-get)")
    return path


def require_option(option: str, what: str) -> None:
    """Skip, naming the feature, when this aserve has no such command-line option."""
    result = subprocess.run(
        [sys.executable, "-m", "aserve", "--help"], capture_output=True, text=True, check=True
    )
    if option not in result.stdout:
        pytest.skip(f"this aserve has no {option} ({what})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render(template: str, **values: str) -> str:
    text = (HERE / template).read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    leftover = re.search(r"@[A-Z_]+@", text)
    assert leftover is None, f"{template}: no value for {leftover.group()}"
    return text


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class Aserve(AserveProcess):
    """`python -m aserve e2e_app:app ...` on a free TCP port or on a Unix socket."""

    def __init__(self, *options: str, uds: Path | None = None, instance: str = "") -> None:
        self.uds = uds
        bind = ["--uds", str(uds)] if uds else ["--port", "0"]
        super().__init__(
            "e2e_app:app",
            "--app-dir",
            str(HERE),
            *bind,
            *options,
            env={"E2E_INSTANCE": instance},
            merge_output=True,
        )
        self.wait_until(lambda: "running on" in self.output, "aserve to start", or_stop=True)
        self.port = 0 if uds else self.wait_for_port()

    @property
    def address(self) -> str:
        """The address a proxy's configuration names."""
        return f"unix:{self.uds}" if self.uds else f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def aserve(*options: str, uds: Path | None = None, instance: str = "") -> Iterator[Aserve]:
    server = Aserve(*options, uds=uds, instance=instance)
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"aserve exited with {code}:\n{server.output}"
    assert "Traceback" not in server.output, server.output


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 made with the openssl command."""
    openssl = require("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


class Nginx(Child):
    """nginx in the foreground with its prefix, logs, pid and temp files in `directory`."""

    def __init__(self, directory: Path, upstream: str) -> None:
        binary = require("nginx")
        self.directory = directory
        self.port, self.tls_port = free_port(), free_port()
        self.cert, self.key = self_signed_certificate(directory)
        self._write_site(upstream)
        conf = directory / "nginx.conf"
        # Run as root, nginx's workers would switch to an unprivileged user that cannot reach
        # the test's temp directory (or its Unix socket): keep them as the caller.
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(render("nginx.conf", DIR=str(directory), USER=user))
        prefix = f"{directory}/"
        super().__init__(
            [
                binary,
                "-p",
                prefix,
                "-e",
                str(directory / "error.log"),
                "-c",
                str(conf),
                "-g",
                "daemon off;",
            ],
            merge_output=True,
        )
        self.wait_until(
            lambda: accepts(self.port) and accepts(self.tls_port),
            "nginx to listen",
            diagnose=self.diagnose,
            or_stop=True,
        )

    def _write_site(self, upstream: str) -> None:
        (self.directory / "site.conf").write_text(
            render(
                "nginx-site.conf",
                UPSTREAM=upstream,
                LISTEN=f"127.0.0.1:{self.port}",
                TLS_LISTEN=f"127.0.0.1:{self.tls_port}",
                CERT=str(self.cert),
                KEY=str(self.key),
            )
        )

    def switch_upstream(self, upstream: str) -> None:
        """Point the upstream at another server: nginx reloads its configuration (SIGHUP),
        new workers take new connections and the old ones finish theirs."""
        self._write_site(upstream)
        self.proc.send_signal(signal.SIGHUP)

    def diagnose(self) -> str:
        log = self.directory / "error.log"
        return self.output + (log.read_text() if log.exists() else "")


@contextlib.contextmanager
def nginx(directory: Path, upstream: str) -> Iterator[Nginx]:
    proxy = Nginx(directory, upstream)
    try:
        yield proxy
    finally:
        proxy.stop(signal.SIGQUIT)  # graceful: finish the connections in progress


class HAProxy(Child):
    """haproxy in the foreground (-db) on a free port with the servers given."""

    def __init__(self, directory: Path, servers: list[str], server_options: str = "") -> None:
        binary = require("haproxy")
        self.port = free_port()
        cfg = directory / "haproxy.cfg"
        cfg.write_text(
            render(
                "haproxy.cfg",
                LISTEN=f"127.0.0.1:{self.port}",
                SERVER_A=servers[0],
                SERVER_B=servers[1],
                SERVER_OPTIONS=f" {server_options}" if server_options else "",
            )
        )
        check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        super().__init__([binary, "-f", str(cfg), "-db"], merge_output=True)
        self.wait_until(lambda: accepts(self.port), "haproxy to listen", or_stop=True)


@contextlib.contextmanager
def haproxy(directory: Path, servers: list[str], server_options: str = "") -> Iterator[HAProxy]:
    proxy = HAProxy(directory, servers, server_options)
    try:
        yield proxy
    finally:
        proxy.stop(signal.SIGUSR1)  # soft stop: finish the connections in progress


def http_get(port: int, path: str = "/", source: str = "127.0.0.1") -> tuple[bytes, bytes, int]:
    """One GET on a new connection from `source`: (head, body, the client's own port)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        client_port = s.getsockname()[1]
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body, client_port
