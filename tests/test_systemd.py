"""systemd without systemd: NOTIFY_SOCKET datagrams, the watchdog, socket activation.

The service manager's side is played by the test: a Unix datagram socket it reads, and
listening sockets placed at fd 3 on, as systemd passes them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.conftest import serve

from aserve import systemd
from aserve.config import Config, ConfigError
from aserve.sockets import bind_sockets

APPS = Path(__file__).parent / "apps"


class NotifyReader:
    """The service manager's end of NOTIFY_SOCKET: collects datagrams as they arrive."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []  # (monotonic time, payload)
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, line: str, timeout: float = 20) -> float:
        """When a datagram carrying `line` arrived (polls up to `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for when, payload in list(self.messages):
                if line in payload.split("\n"):
                    return when
            time.sleep(0.02)
        raise AssertionError(f"no {line!r} among {[m for _, m in self.messages]}")

    def lines(self) -> list[str]:
        return [line for _, payload in list(self.messages) for line in payload.split("\n")]

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyReader]:
    path = tmp_path / "notify"
    reader = NotifyReader(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield reader
    reader.close()


@contextlib.contextmanager
def at_fds(*socks: socket.socket) -> Iterator[None]:
    """Place `socks` at fd 3, 4, ... as systemd does, restoring whatever was there after."""
    saved: list[tuple[int, int | None]] = []
    try:
        for offset, sock in enumerate(socks):
            fd = systemd.LISTEN_FDS_START + offset
            try:
                saved.append((fd, os.dup(fd)))
            except OSError:
                saved.append((fd, None))
            os.dup2(sock.fileno(), fd)
        yield
    finally:
        for fd, copy in saved:
            if copy is None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            else:
                os.dup2(copy, fd)
                os.close(copy)


def listening_tcp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


# -- notify() -----------------------------------------------------------------------------


def test_notify_sends_one_datagram_of_lines(notify_socket):
    assert systemd.notify("READY=1", "STATUS=Serving") is True
    notify_socket.wait_for("STATUS=Serving")
    assert [payload for _, payload in notify_socket.messages] == ["READY=1\nSTATUS=Serving"]


def test_notify_to_an_abstract_socket(monkeypatch):
    name = f"aserve-test-{os.getpid()}-{time.monotonic_ns()}"
    reader = NotifyReader(b"\0" + name.encode())
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("WATCHDOG=1") is True
        reader.wait_for("WATCHDOG=1")
    finally:
        reader.close()


def test_notify_outside_systemd_is_a_quiet_no_op(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.notify("READY=1") is False  # no exception: the manager may be gone


# -- watchdog_period() --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("3000000", None, 1.5),
        ("3000000", "self", 1.5),
        ("3000000", "other", None),  # the pings are expected from another process
        ("0", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_period_is_half_of_watchdog_usec(monkeypatch, usec, pid, expected):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() if pid == "self" else os.getppid()))
    assert systemd.watchdog_period() == expected


# -- listen_fds() -------------------------------------------------------------------------


def test_listen_fds_takes_every_socket_passed_to_this_process(monkeypatch):
    first, second = listening_tcp(), listening_tcp()
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "2")
    monkeypatch.setenv("LISTEN_FDNAMES", "web:admin")
    with first, second, at_fds(first, second):
        got = systemd.listen_fds()
        try:
            assert [s.fileno() for s in got] == [3, 4]
            assert [s.getsockname() for s in got] == [first.getsockname(), second.getsockname()]
            assert not any(os.get_inheritable(s.fileno()) for s in got)
            assert not any(s.getblocking() for s in got)
        finally:
            for sock in got:
                sock.detach()  # at_fds restores fd 3 and 4
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        assert name not in os.environ  # a child process must not take them for its own


@pytest.mark.parametrize("pid", ["other", None])
def test_listen_fds_ignores_sockets_meant_for_another_process(monkeypatch, pid):
    monkeypatch.delenv("LISTEN_PID", raising=False)
    if pid is not None:
        monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd.listen_fds() == []
    assert "LISTEN_FDS" not in os.environ


def test_a_passed_datagram_socket_is_a_one_line_config_error(monkeypatch):
    dgram = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "1")
    with (
        dgram,
        at_fds(dgram),
        pytest.raises(ConfigError, match="file descriptor 3 is not a stream socket"),
    ):
        bind_sockets(Config(app="x:y"))


# -- the server -----------------------------------------------------------------------------


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def blocking(scope, receive, send):
    """Blocks the event loop for 1.5 s on /block: what the watchdog is there to notice."""
    if scope["path"] == "/block":
        time.sleep(1.5)
    await hello(scope, receive, send)


def test_server_notifies_ready_then_stopping(notify_socket):
    with serve(hello) as live:
        ready = notify_socket.wait_for("READY=1")
        assert "STOPPING=1" not in notify_socket.lines()
        assert httpx.get(live.url).text == "hello"
    stopping = notify_socket.wait_for("STOPPING=1")
    assert stopping > ready
    assert any(
        line.startswith("STATUS=Serving on http://127.0.0.1:") for line in notify_socket.lines()
    )


def test_watchdog_pings_come_from_the_event_loop(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with serve(blocking) as live:
        notify_socket.wait_for("WATCHDOG=1")
        assert httpx.get(live.url + "/block", timeout=10).text == "hello"
        unblocked = time.monotonic()
        deadline = unblocked + 20
        while time.monotonic() < deadline and notify_socket.messages[-1][0] <= unblocked:
            time.sleep(0.02)
    pings = [when for when, payload in notify_socket.messages if payload == "WATCHDOG=1"]
    assert pings[-1] > unblocked  # pinging again once the loop runs
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    # The loop was blocked for 1.5 s: no ping in that time, so systemd would have noticed.
    assert max(gaps) >= 1.2, gaps


def test_no_notifications_when_the_server_is_a_supervised_worker(notify_socket, monkeypatch):
    from aserve import server as server_module

    monkeypatch.setattr(server_module.Server, "systemd_notify", False)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    with serve(hello) as live:
        assert httpx.get(live.url).text == "hello"
    time.sleep(0.3)
    assert notify_socket.messages == []


def test_server_serves_on_every_socket_systemd_passed(monkeypatch, tmp_path):
    tcp = listening_tcp()
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "s"))
    unix.listen(16)
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "2")
    # The port in the config is not used: systemd's sockets are.
    with tcp, unix, at_fds(tcp, unix), serve(hello, port=1) as live:
        assert len(live.server.sockets) == 2
        port = tcp.getsockname()[1]
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
        transport = httpx.HTTPTransport(uds=str(tmp_path / "s"))
        with httpx.Client(transport=transport) as client:
            assert client.get("http://localhost/").text == "hello"


# -- the real command line ------------------------------------------------------------------

# Sets LISTEN_PID to its own PID (known only once running), moves the socket to fd 3 and
# becomes `python -m aserve ...`: what systemd does between fork and exec.
ACTIVATE = textwrap.dedent(
    """
    import os, sys
    fds = [int(fd) for fd in os.environ.pop("TEST_FDS").split(",")]
    for target, fd in enumerate(fds, 3):
        os.dup2(fd, target)
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execv(sys.executable, [sys.executable, "-m", "aserve", *sys.argv[1:]])
    """
)


def wait_for_output(proc_lines: list[str], pattern: str, proc: subprocess.Popen, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(proc_lines):
            match = re.search(pattern, line)
            if match:
                return match
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in:\n" + "".join(proc_lines))


def start(args: list[str], env: dict[str, str], **kwargs) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, **kwargs
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


@pytest.mark.once
def test_cli_notifies_ready_watchdog_and_stopping(notify_socket):
    env = {**os.environ, "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    args = [sys.executable, "-m", "aserve", "lifespan_apps:hello", "--app-dir", str(APPS)]
    proc, lines = start([*args, "--port", "0"], env)
    try:
        port = int(wait_for_output(lines, r"running on http://127\.0\.0\.1:(\d+)", proc)[1])
        notify_socket.wait_for("READY=1")
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
        first = notify_socket.wait_for("WATCHDOG=1")
        deadline = time.monotonic() + 20
        while notify_socket.lines().count("WATCHDOG=1") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert notify_socket.lines().count("WATCHDOG=1") >= 3  # keeps pinging
        assert "STOPPING=1" not in notify_socket.lines()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        proc.kill()
    assert notify_socket.wait_for("STOPPING=1") > first
    assert notify_socket.lines().index("READY=1") < notify_socket.lines().index("STOPPING=1")


@pytest.mark.once
def test_cli_serves_on_sockets_passed_by_socket_activation(tmp_path):
    tcp = listening_tcp()
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(tmp_path / "app.sock"))
    unix.listen(16)
    fds = [tcp.fileno(), unix.fileno()]
    env = {**os.environ, "TEST_FDS": ",".join(map(str, fds))}
    args = [sys.executable, "-c", ACTIVATE, "lifespan_apps:hello", "--app-dir", str(APPS)]
    # --port 1 would fail to bind as a normal user: the passed sockets are used instead.
    with tcp, unix:
        proc, lines = start([*args, "--port", "1"], env, pass_fds=fds)
        try:
            port = tcp.getsockname()[1]
            wait_for_output(
                lines, rf"running on http://127\.0\.0\.1:{port} \(socket from systemd\)", proc
            )
            wait_for_output(lines, r"running on unix socket .*app\.sock", proc)
            assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
            transport = httpx.HTTPTransport(uds=str(tmp_path / "app.sock"))
            with httpx.Client(transport=transport) as client:
                assert client.get("http://localhost/").text == "hello"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            proc.kill()
    # systemd owns the socket file: the server does not remove it.
    assert (tmp_path / "app.sock").exists()
