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
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
# What each HAProxy server line gets for PROXY protocol v2 (docs/deployment.md shows it).
PROXY_V2 = "send-proxy-v2 check-send-proxy"
DEADLINE = 30.0  # generous: the CI machine has two busy cores


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


def wait_for(condition, what: str, timeout: float = DEADLINE, diagnose=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{diagnose()}")
        time.sleep(0.02)


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class Child:
    """A process whose output is collected on a thread, stopped and reaped on exit."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_until_ready(self, what: str, diagnose=None) -> None:
        """Poll `_ready`; a process that never gets there is stopped, not left behind."""
        try:
            wait_for(self._ready, what, diagnose=diagnose or (lambda: self.output))
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        raise NotImplementedError

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            self._reader.join(5)
            raise AssertionError(
                f"{Path(self.args[0]).name} exited with {self.proc.returncode}:\n{self.output}"
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


class Aserve(Child):
    """`python -m aserve e2e_app:app ...` on a free TCP port or on a Unix socket."""

    def __init__(self, *options: str, uds: Path | None = None, instance: str = "") -> None:
        self.uds = uds
        bind = ["--uds", str(uds)] if uds else ["--port", "0"]
        super().__init__(
            [
                sys.executable,
                "-m",
                "aserve",
                "e2e_app:app",
                "--app-dir",
                str(HERE),
                *bind,
                *options,
            ],
            env={"E2E_INSTANCE": instance},
        )
        self.wait_until_ready("aserve to start")
        self.port = 0
        match = re.search(r"running on http://127\.0\.0\.1:(\d+)", self.output)
        if match:
            self.port = int(match.group(1))

    def _ready(self) -> bool:
        self.check_alive()
        return "running on" in self.output

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
        self.cert, key = self_signed_certificate(directory)
        (directory / "site.conf").write_text(
            render(
                "nginx-site.conf",
                UPSTREAM=upstream,
                LISTEN=f"127.0.0.1:{self.port}",
                TLS_LISTEN=f"127.0.0.1:{self.tls_port}",
                CERT=str(self.cert),
                KEY=str(key),
            )
        )
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
            ]
        )
        self.wait_until_ready("nginx to listen", self.diagnose)

    def _ready(self) -> bool:
        self.check_alive()
        return accepts(self.port) and accepts(self.tls_port)

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
        super().__init__([binary, "-f", str(cfg), "-db"])
        self.wait_until_ready("haproxy to listen")

    def _ready(self) -> bool:
        self.check_alive()
        return accepts(self.port)


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
