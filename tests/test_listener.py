"""Accepting connections: a burst is accepted at once, not one connection per loop turn."""

from __future__ import annotations

import asyncio
import errno
import itertools
import socket
import threading
import time
from typing import Any

import pytest
from tests.conftest import read_response, serve

from aserve import listener as listener_module
from aserve.edge import Edge
from aserve.listener import Listener
from aserve.proxy import parse_trusted
from aserve.server import loop_factory


class Recorder(asyncio.Protocol):
    made: list[Recorder]

    def connection_made(self, transport: Any) -> None:
        self.made.append(self)
        self.transport = transport


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    sock.setblocking(False)  # as Listener.start() leaves it
    return sock


def _run(loop_name: str, coro: Any) -> Any:
    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        return runner.run(coro)


def _connections_after_each_wake_up(loop_name: str, clients: int, wake_ups: int) -> list[int]:
    """Queue `clients` connections on a listening socket, then deliver `wake_ups` readable
    events to a Listener, as the loop would; return how many connections exist after each."""

    async def main() -> list[int]:
        made: list[Recorder] = []
        Recorder.made = made
        loop = asyncio.get_running_loop()
        sock = _listening_socket()
        queued = [socket.create_connection(sock.getsockname()) for _ in range(clients)]
        listener = Listener(loop, sock, Recorder, backlog=256)
        counts = []
        try:
            for _ in range(wake_ups):
                listener._accept()
                await asyncio.sleep(0)  # connection_made runs on the next loop turns
                await asyncio.sleep(0)
                counts.append(len(made))
            return counts
        finally:
            listener.close()
            for protocol in made:
                protocol.transport.close()
            for client in queued:
                client.close()

    return _run(loop_name, main())


def test_one_wake_up_accepts_every_pending_connection(loop_name: str) -> None:
    """uvloop's own servers accept one connection per loop iteration; ours take them all."""
    assert _connections_after_each_wake_up(loop_name, clients=40, wake_ups=1) == [40]


def test_a_wake_up_accepts_at_most_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener_module, "ACCEPT_BATCH", 5)
    assert _connections_after_each_wake_up("uvloop", clients=12, wake_ups=3) == [5, 10, 12]


class Tracked(Recorder):
    lost: list[Tracked]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(self)


@pytest.mark.parametrize("proxy_protocol", [False, True])
def test_a_connection_accepted_as_the_listener_closes_is_told_when_it_closes(
    loop_name: str, proxy_protocol: bool
) -> None:
    """A connection accepted just before shutdown (its `connection_made` already run, its
    hand-over not yet resumed) is closed by the server like any other; its protocol must hear
    `connection_lost`, or the server waits for it until the graceful timeout.

    Cancelling the hand-over there made uvloop close the transport with its private
    `_close()`, which drops the `connection_lost` already scheduled: a `--reload` child waited
    its whole --timeout-graceful-shutdown (30 s) for a connection that was gone.
    """

    async def main() -> tuple[int, int, bytes]:
        made: list[Tracked] = []
        lost: list[Tracked] = []
        Tracked.made, Tracked.lost = made, lost
        loop = asyncio.get_running_loop()
        sock = _listening_socket()
        client = socket.create_connection(sock.getsockname())
        edge = None
        if proxy_protocol:
            client.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 80\r\n")
            edge = Edge(loop, lambda addresses=None: Tracked(), proxy_from=parse_trusted("*"))
        listener = Listener(loop, sock, Tracked, backlog=16, edge=edge)
        listener._accept()
        for _ in range(100):  # connection_made runs; the hand-over's task resumes after it
            if made:
                break
            await asyncio.sleep(0)
        listener.close()  # the server begins shutting down in that same loop turn
        for protocol in made:
            protocol.transport.close()  # as the server's shutdown closes an idle connection
        for _ in range(100):
            if len(lost) == len(made):
                break
            await asyncio.sleep(0.01)
        client.settimeout(5)
        try:
            eof = client.recv(100)
        finally:
            client.close()
        return len(made), len(lost), eof

    made, lost, eof = _run(loop_name, main())
    assert (made, lost, eof) == (1, 1, b"")


def test_running_out_of_file_descriptors_pauses_accepting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(listener_module, "ACCEPT_RETRY_DELAY", 0.05)

    class Exhausted(socket.socket):
        failures = 3
        calls: list[float] = []  # when accept() was called

        def accept(self) -> Any:
            Exhausted.calls.append(time.monotonic())
            if Exhausted.failures:
                Exhausted.failures -= 1
                raise OSError(errno.EMFILE, "Too many open files")
            return super().accept()

    async def main() -> int:
        made: list[Recorder] = []
        Recorder.made = made
        loop = asyncio.get_running_loop()
        sock = Exhausted()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        client = socket.create_connection(sock.getsockname())
        listener = Listener(loop, sock, Recorder, backlog=16)
        listener.start()
        try:
            deadline = time.monotonic() + 10
            while not made and time.monotonic() < deadline:  # it tries again, then takes it
                await asyncio.sleep(0.01)
            return len(made)
        finally:
            listener.close()
            for protocol in made:
                protocol.transport.close()
            client.close()

    assert _run("uvloop", main()) == 1
    # Paused after each failure, not spinning on a socket that stays readable: each retry
    # came ACCEPT_RETRY_DELAY (0.05 s) after the failure before it, however busy the machine
    # (a spinning listener calls again at once). The fourth call took the connection.
    retries = [later - earlier for earlier, later in itertools.pairwise(Exhausted.calls[:4])]
    assert len(retries) == 3 and min(retries) >= 0.04, retries
    # Said once for the episode (three failed retries), and once when it is over.
    assert caplog.text.count("Too many open files") == 1
    assert "connections wait in the backlog, retrying every 0.05s" in caplog.text
    assert caplog.text.count("Accepting connections again") == 1


def test_a_burst_of_new_connections_is_served_while_the_server_is_busy() -> None:
    """Four clients keep the loop busy (each request blocks it for 40 ms); twenty new clients
    connect at once. Accepting one connection per loop turn, the last would wait for twenty
    turns of about 160 ms each (over 3 s); accepted together, all are answered in well under
    a second."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/busy":
            time.sleep(0.04)  # blocks the event loop, as CPU-heavy app code does
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with serve(app) as server:
        stop = threading.Event()

        def keep_busy() -> None:
            with server.connect() as sock:
                while not stop.is_set():
                    sock.sendall(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
                    read_response(sock)

        busy = [threading.Thread(target=keep_busy) for _ in range(4)]
        for thread in busy:
            thread.start()
        time.sleep(0.3)  # the busy connections are established and loading the loop
        try:
            started = time.monotonic()
            clients = [server.connect(timeout=10) for _ in range(20)]
            for sock in clients:
                sock.sendall(b"GET /new HTTP/1.1\r\nHost: x\r\n\r\n")
            answers = [read_response(sock, timeout=10) for sock in clients]
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            for thread in busy:
                thread.join()
        for sock in clients:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
    assert elapsed < 1.5, f"20 new connections took {elapsed:.2f}s to be answered"


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def test_accepted_connections_do_not_wait_for_acks(loop_name: str) -> None:
    """TCP_NODELAY on every accepted connection, on both loops: with Nagle's algorithm a
    response written in pieces (a stream) waits for the client's delayed ACK, up to 40 ms."""
    with serve(_hello, loop=loop_name) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).endswith(b"hello")
        (connection,) = server.server.state.connections
        accepted = connection.transport.get_extra_info("socket")
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
