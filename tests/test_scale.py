"""Many connections in one worker: held by thousands, and at the file-descriptor limit.

Whole processes (`aserve` under its own descriptor limit, load clients): marked `once`.
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import subprocess
import time
from pathlib import Path

import pytest

from processes import AserveProcess

APPS = Path(__file__).parent / "apps"
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
HELLO = b"HTTP/1.1 200 OK"


class LimitedServer(AserveProcess):
    """`python -m aserve` on an inherited listening socket, its soft RLIMIT_NOFILE lowered."""

    def __init__(self, nofile: int, *args: str) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        fd = listener.fileno()

        def lower_limit() -> None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

        super().__init__(
            "--fd", str(fd), *args, stdout=subprocess.DEVNULL, pass_fds=[fd], preexec_fn=lower_limit
        )
        listener.close()  # the server has its own copy

    def wait_until_serving(self, timeout: float = 15) -> None:
        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(REQUEST)
                    return sock.recv(100).startswith(HELLO)
            except OSError:
                return False

        self.wait_until(answers, "the server to answer", timeout)

    def cpu_seconds(self) -> float:
        """utime + stime of the server process, from /proc."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def _answered(socks: list[socket.socket], quiet: float, deadline: float) -> set[socket.socket]:
    """Wait for one response on each socket; return those that got one. Stops once nothing
    new arrived for `quiet` seconds (longer than the listener's pause) or at `deadline`."""
    selector = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytes] = {}
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock] = b""
    done: set[socket.socket] = set()
    last = time.monotonic()
    while len(done) < len(socks) and time.monotonic() - last < quiet:
        if time.monotonic() > deadline:
            break
        for key, _ in selector.select(0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            buffers[sock] += data
            if b"hello" in buffers[sock] or not data:
                selector.unregister(sock)
                if buffers[sock].startswith(HELLO):
                    done.add(sock)
                last = time.monotonic()
    selector.close()
    for sock in socks:
        sock.setblocking(True)
    return done


@pytest.mark.once
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_at_the_descriptor_limit_it_keeps_serving_and_accepts_again(loop: str) -> None:
    """Run out of descriptors for real: the server keeps answering the connections it has,
    does not spin while the backlog stays readable, and takes the waiting connections once
    descriptors are free again."""
    nofile = 100
    server = LimitedServer(
        nofile, "lifespan_apps:hello", "--app-dir", str(APPS), "--loop", loop, "--no-access-log"
    )
    clients: list[socket.socket] = []
    try:
        server.wait_until_serving()
        for _ in range(nofile + 40):  # the kernel completes them all (backlog 2048)
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(REQUEST)
            clients.append(sock)
        held = _answered(clients, quiet=1.5, deadline=time.monotonic() + 20)
        waiting = [sock for sock in clients if sock not in held]
        # Every descriptor the server had went to a connection; the rest wait in the backlog,
        # accepted in order.
        assert 0 < len(waiting) < 60, len(held)
        assert clients[: len(held)] == [sock for sock in clients if sock in held]
        assert server.open_fds() >= nofile - 1
        assert "Too many open files" in "".join(server.lines)

        # At the limit the listening socket stays readable: a server retrying at once would
        # burn a core. Over two seconds it may use a little CPU, not most of it.
        before = server.cpu_seconds()
        time.sleep(2.0)  # measuring an interval, not waiting for a condition
        used = server.cpu_seconds() - before
        assert used < 0.3, f"{used:.2f}s of CPU in 2s at the descriptor limit"

        # The connections it holds are served as usual.
        for sock in held:
            sock.sendall(REQUEST)
        assert _answered(list(held), quiet=5, deadline=time.monotonic() + 20) == held

        # Free 30 descriptors: waiting connections are accepted and answered, oldest first.
        for sock in list(held)[:30]:
            sock.close()
        now_served = _answered(waiting, quiet=1.5, deadline=time.monotonic() + 20)
        assert len(now_served) >= 20, f"{len(now_served)} of {len(waiting)} accepted"
        assert waiting[: len(now_served)] == [sock for sock in waiting if sock in now_served]
        assert "Accepting connections again" in "".join(server.lines)
        assert server.proc.poll() is None
    finally:
        for sock in clients:
            sock.close()
        code = server.stop()
    assert code == 0, "".join(server.lines)


@pytest.mark.once
def test_thousands_of_idle_connections_and_websockets_held_while_serving() -> None:
    """The scale benchmark (benchmarks/connections.py) in small: 2,000 idle keep-alive
    connections and 500 WebSockets opened at once from two source addresses; while they are
    held, fresh connections are served quickly and every held one still answers."""
    from benchmarks.connections import measure

    idle, websockets = 2000, 500
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < idle + websockets + 200:
        pytest.skip(f"the descriptor limit ({hard}) is below {idle + websockets + 200}")
    server = LimitedServer(
        idle + websockets + 200,
        "benchmarks.apps:ws_echo",
        "--app-dir",
        str(Path(__file__).parent.parent),
        "--timeout-keep-alive",
        "300",
        "--no-access-log",
    )
    try:
        server.wait_until_serving()
        result = measure(server.proc.pid, server.port, idle, websockets, clients=2, probes=200)
        assert server.proc.poll() is None
    finally:
        code = server.stop()
    report = json.dumps(result, indent=1)
    assert result["open_http"]["opened"] == idle, report
    assert result["open_websocket"]["opened"] == websockets, report
    check = result["held_check"]
    assert (check["http"]["answered"], check["websocket"]["answered"]) == (idle, websockets)
    assert result["fds"]["held"] >= result["fds"]["start"] + idle + websockets
    fresh = result["fresh_connection"]
    assert fresh["failed"] == 0, report
    # The target is 100 ms at p99 with 19,000 held (docs/performance.md); a busy CI machine
    # gets some slack, a server that works per connection on each accept would not fit.
    assert fresh["p99_ms"] < 250, report
    # About 4 KiB per idle connection and 6.9 per idle WebSocket today (docs/performance.md);
    # a per-connection buffer or task would show.
    assert result["kib_per_idle_http"] < 8, report
    assert result["kib_per_websocket"] < 40, report
    assert code == 0, "".join(server.lines)
