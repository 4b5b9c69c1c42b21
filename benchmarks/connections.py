"""Many connections in one worker: idle keep-alive HTTP and open WebSockets, held at once.

For each server (aserve, uvicorn), one process under the machine's descriptor limit:

1. open `--idle` keep-alive connections (one request each, then idle) as fast as the clients
   can, then `--websockets` WebSockets (handshake and one echo each), from several client
   processes, each binding its sockets to its own loopback source address (127.0.0.2,
   127.0.0.3, ...: ephemeral ports are counted per source address);
2. read the server's RSS and descriptor count from /proc before and after each phase: memory
   per idle HTTP connection and per WebSocket;
3. while all are held: the server's CPU over a few idle seconds (work per tick that grows with
   the number of connections would show here), then requests on fresh connections, one at a
   time, timed (p50/p99/max);
4. a request on every held connection (a GET on each idle one, a message on each WebSocket):
   how many still answer, and how fast.

    python benchmarks/connections.py                       # 15,000 idle + 4,000 WebSockets
    python benchmarks/connections.py --idle 2000 --websockets 500 --servers aserve

Prints a table and writes benchmarks/results/connections-<time>.json. The server is pinned to
core 0 and the clients to core 1, as in benchmarks/run.py. Needs a descriptor limit above the
connection count (the soft limit is raised to the hard one for the server and each client).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import multiprocessing
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import servers
from benchmarks.idle import raise_nofile_limit
from benchmarks.servers import HOST, tree_rss_kib

APP = "benchmarks.apps:ws_echo"
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
MESSAGE = b"still here?"
# Opens in progress per client process at once: the clients go as fast as they can, but a few
# hundred SYNs per process keep the total under the server's listen backlog (2048).
OPENING = 256
RESULTS = Path(__file__).resolve().parent / "results"


# -- the client side: raw asyncio protocols, no streams (cheap per connection) ----------------


def _mask(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (payload < 126 bytes)."""
    key = os.urandom(4)
    body = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + body


class HttpHolder(asyncio.Protocol):
    """One keep-alive connection: a request now and then, idle in between."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.buffer = b""
        self.waiter: asyncio.Future[None] | None = None
        self.lost = False
        self.made = 0.0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.made = time.perf_counter()

    def request(self) -> asyncio.Future[None]:
        self.waiter = asyncio.get_running_loop().create_future()
        if self.lost:
            self.waiter.set_exception(ConnectionError("connection closed by the server"))
        else:
            self.transport.write(REQUEST)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head, found, body = self.buffer.partition(b"\r\n\r\n")
        if not found:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(body) < length:
            return
        self.buffer = body[length:]
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if head.startswith(b"HTTP/1.1 200"):
                waiter.set_result(None)
            else:
                waiter.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("connection closed by the server"))


class WsHolder(asyncio.Protocol):
    """One WebSocket: the handshake, a message now and then, pongs for the server's pings."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.transport: Any = None
        self.buffer = b""
        self.upgraded = False
        self.waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET /ws HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def request(self) -> asyncio.Future[None]:
        self.waiter = asyncio.get_running_loop().create_future()
        if self.lost:
            self.waiter.set_exception(ConnectionError("WebSocket closed by the server"))
        else:
            self.transport.write(_mask(0x1, MESSAGE))
        return self.waiter

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.upgraded:
            head, found, buffer = buffer.partition(b"\r\n\r\n")
            if not found:
                self.buffer = head
                return
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self._resolve(ConnectionError(f"handshake refused: {head[:60]!r}"))
                return
            self.upgraded = True
            self._resolve(None)
        # Server frames are unmasked; ours are short, so their length fits in the first byte.
        while len(buffer) >= 2:
            opcode, size = buffer[0] & 0x0F, buffer[1] & 0x7F
            if size > 125 or len(buffer) < 2 + size:
                break
            payload, buffer = buffer[2 : 2 + size], buffer[2 + size :]
            if opcode == 0x9:  # ping: answer, or the server drops us after its ping timeout
                self.transport.write(_mask(0xA, payload))
            elif opcode == 0x1:
                self._resolve(None if payload == MESSAGE else ConnectionError("bad echo"))
            elif opcode == 0x8:
                self._resolve(ConnectionError(f"closed by the server: {payload!r}"))
        self.buffer = buffer

    def _resolve(self, exc: Exception | None) -> None:
        if not self.waiter.done():
            if exc is None:
                self.waiter.set_result(None)
            else:
                self.waiter.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._resolve(ConnectionError("WebSocket closed by the server"))


def _failure_kind(exc: BaseException) -> str:
    """What went wrong with one open: the server closed it unanswered, it was reset or
    refused, or nothing came back in time."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, (ConnectionResetError, ConnectionRefusedError)):
        return type(exc).__name__
    if isinstance(exc, ConnectionError) and "closed by the server" in str(exc):
        return "closed_unanswered"
    return type(exc).__name__


async def _timed(coro: Any, timeout: float) -> float:
    started = time.perf_counter()
    await asyncio.wait_for(coro, timeout)
    return time.perf_counter() - started


class Client:
    """The connections of one client process, bound to its source addresses in turn.

    Several addresses per process when it opens many: bind() with port 0 searches the
    address's ports in use, and beyond about half the ephemeral range (14,000 here) it took
    12 ms a call in the kernel, blocking the client's event loop (docs/performance.md).
    """

    def __init__(self, port: int, sources: list[str]) -> None:
        self.port = port
        self.sources = itertools.cycle(sources)
        self.http: list[HttpHolder] = []
        self.websockets: list[WsHolder] = []
        # From connected to the request written, per open: how late this process's own
        # event loop got round to it.
        self.write_lag: list[float] = []

    async def _open_http(self) -> HttpHolder:
        loop = asyncio.get_running_loop()
        _, holder = await loop.create_connection(
            HttpHolder, HOST, self.port, local_addr=(next(self.sources), 0)
        )
        self.write_lag.append(time.perf_counter() - holder.made)
        await holder.request()
        return holder

    async def _open_ws(self) -> WsHolder:
        loop = asyncio.get_running_loop()
        _, holder = await loop.create_connection(
            lambda: WsHolder(self.port), HOST, self.port, local_addr=(next(self.sources), 0)
        )
        await holder.waiter  # the handshake
        await holder.request()  # and one echo
        return holder

    async def open(
        self, kind: str, count: int, timeout: float, opening: int = OPENING
    ) -> dict[str, Any]:
        """Open `count` connections, `opening` at a time; each must be answered within
        `timeout` (connect, request and answer). Failures are counted by kind."""
        opener = self._open_http if kind == "http" else self._open_ws
        held: list[Any] = self.http if kind == "http" else self.websockets
        gate = asyncio.Semaphore(opening)
        errors: list[str] = []
        kinds: dict[str, int] = {}
        times: list[float] = []

        async def one() -> None:
            async with gate:
                started = time.perf_counter()
                try:
                    held.append(await asyncio.wait_for(opener(), timeout))
                    times.append(time.perf_counter() - started)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    name = _failure_kind(exc)
                    kinds[name] = kinds.get(name, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return {
            "opened": count - len(errors),
            "failed": len(errors),
            "failed_by_kind": kinds,
            "seconds": time.perf_counter() - started,
            "first_error": errors[0] if errors else None,
            "open_seconds": sorted(times),
            "write_lag": self.write_lag,
        }

    async def check(self, timeout: float) -> dict[str, Any]:
        """A request on every held connection, a few hundred at a time."""
        gate = asyncio.Semaphore(OPENING)
        latencies: dict[str, list[float]] = {"http": [], "websocket": []}
        failed = {"http": 0, "websocket": 0}
        errors: list[str] = []

        async def one(kind: str, holder: Any) -> None:
            async with gate:
                try:
                    latencies[kind].append(await _timed(holder.request(), timeout))
                except Exception as exc:
                    failed[kind] += 1
                    errors.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(
            *(one("http", h) for h in self.http),
            *(one("websocket", w) for w in self.websockets),
        )
        return {
            "latencies": latencies,
            "failed": failed,
            "first_error": errors[0] if errors else None,
        }

    def close(self) -> None:
        for holder in [*self.http, *self.websockets]:
            if holder.transport is not None:
                holder.transport.close()


def _client_process(conn: Any, port: int, sources: list[str]) -> None:
    """A client process: runs the commands the parent sends over `conn` until "exit"."""
    raise_nofile_limit(1 << 20)  # up to the hard limit

    async def main() -> None:
        loop = asyncio.get_running_loop()
        client = Client(port, sources)
        while True:
            command, *args = await loop.run_in_executor(None, conn.recv)
            if command == "open":
                conn.send(await client.open(*args))
            elif command == "check":
                conn.send(await client.check(*args))
            elif command == "close":
                client.close()
                await asyncio.sleep(0.5)
                conn.send({})
            else:
                return

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


class Clients:
    """Client processes, each with its own source addresses and descriptor limit."""

    def __init__(
        self,
        port: int,
        processes: int,
        core: int | None,
        sources: list[list[str]] | None = None,
    ) -> None:
        # spawn, not fork: the caller may have threads (a test runner does)
        context = multiprocessing.get_context("spawn")
        self.pipes = []
        self.processes = []
        sources = sources or [[f"127.0.0.{2 + index}"] for index in range(processes)]
        for index in range(processes):
            parent, child = context.Pipe()
            source = sources[index]
            process = context.Process(target=_client_process, args=(child, port, source))
            process.start()
            if core is not None:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(process.pid, {core})
            self.pipes.append(parent)
            self.processes.append(process)

    def ask(self, command: str, *per_client_args: Any) -> list[dict[str, Any]]:
        for index, pipe in enumerate(self.pipes):
            args = [a[index] if isinstance(a, list) else a for a in per_client_args]
            pipe.send((command, *args))
        return [pipe.recv() for pipe in self.pipes]

    def open(
        self, kind: str, total: int, timeout: float = 60.0, opening: int = OPENING
    ) -> dict[str, Any]:
        count = len(self.pipes)
        shares = [total // count + (1 if i < total % count else 0) for i in range(count)]
        started = time.perf_counter()
        answers = self.ask("open", kind, shares, timeout, opening)
        seconds = time.perf_counter() - started
        opened = sum(a["opened"] for a in answers)
        kinds: dict[str, int] = {}
        for answer in answers:
            for name, number in answer["failed_by_kind"].items():
                kinds[name] = kinds.get(name, 0) + number
        times = sorted(x for a in answers for x in a["open_seconds"])
        lag = sorted(x for a in answers for x in a["write_lag"])
        return {
            "asked": total,
            "opened": opened,
            "failed": sum(a["failed"] for a in answers),
            "failed_by_kind": kinds,
            "seconds": round(seconds, 2),
            "per_second": round(opened / seconds) if seconds else None,
            "open_time": _percentiles(times),
            "write_lag": _percentiles(lag),
            "first_error": next((a["first_error"] for a in answers if a["first_error"]), None),
        }

    def check(self, timeout: float = 30.0) -> dict[str, Any]:
        started = time.perf_counter()
        answers = self.ask("check", timeout)
        result: dict[str, Any] = {"seconds": round(time.perf_counter() - started, 2)}
        for kind in ("http", "websocket"):
            latencies = sorted(x for a in answers for x in a["latencies"][kind])
            result[kind] = {
                "answered": len(latencies),
                "failed": sum(a["failed"][kind] for a in answers),
                **_percentiles(latencies),
            }
        result["first_error"] = next((a["first_error"] for a in answers if a["first_error"]), None)
        return result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("close")
            for pipe in self.pipes:
                pipe.send(("exit",))
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


# -- measuring the server ---------------------------------------------------------------------


def _percentiles(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fresh_requests(port: int, count: int, gap: float = 0.01) -> dict[str, Any]:
    """`count` requests, each on a new connection, one at a time: connect to last byte."""
    latencies, failures = [], 0
    for _ in range(count):
        started = time.perf_counter()
        try:
            with socket.create_connection((HOST, port), timeout=5) as sock:
                sock.sendall(REQUEST)
                data = b""
                while not data.endswith(b"Hello, world!"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            if not data.startswith(b"HTTP/1.1 200"):
                failures += 1
                continue
            latencies.append(time.perf_counter() - started)
        except OSError:
            failures += 1
        time.sleep(gap)
    return {"requests": count, "failed": failures, **_percentiles(latencies)}


def settle(pid: int, seconds: float = 1.5) -> int:
    """RSS in KiB once it has settled (sampled until two readings agree within 1%)."""
    previous = tree_rss_kib(pid)
    deadline = time.monotonic() + seconds * 4
    while time.monotonic() < deadline:
        time.sleep(seconds / 3)
        current = tree_rss_kib(pid)
        if abs(current - previous) <= previous / 100:
            return current
        previous = current
    return previous


def measure(
    pid: int,
    port: int,
    idle: int,
    websockets: int,
    clients: int = 4,
    probes: int = 300,
    idle_seconds: float = 3.0,
    core: int | None = None,
) -> dict[str, Any]:
    """Everything above against a running server (process `pid`, listening on `port`)."""
    result: dict[str, Any] = {"idle_asked": idle, "websockets_asked": websockets}
    fresh_requests(port, 20, gap=0)  # warm up: first-request imports and caches
    rss_start = settle(pid)
    fds_start = open_fds(pid)
    group = Clients(port, clients, core)
    try:
        result["open_http"] = group.open("http", idle)
        rss_http = settle(pid)
        result["open_websocket"] = group.open("websocket", websockets)
        rss_all = settle(pid)
        opened_http = result["open_http"]["opened"]
        opened_ws = result["open_websocket"]["opened"]
        result["rss_kib"] = {"start": rss_start, "idle_http": rss_http, "all": rss_all}
        result["kib_per_idle_http"] = (
            round((rss_http - rss_start) / opened_http, 2) if opened_http else None
        )
        result["kib_per_websocket"] = (
            round((rss_all - rss_http) / opened_ws, 2) if opened_ws else None
        )
        result["fds"] = {"start": fds_start, "held": open_fds(pid)}
        before = cpu_seconds(pid)
        time.sleep(idle_seconds)  # an interval to measure, not a wait for a condition
        result["idle_cpu_percent"] = round(100 * (cpu_seconds(pid) - before) / idle_seconds, 1)
        result["fresh_connection"] = fresh_requests(port, probes)
        result["held_check"] = group.check()
        result["fds"]["after_check"] = open_fds(pid)
    finally:
        group.close()
    return result


# -- at the descriptor limit ------------------------------------------------------------------


def _collect(socks: list[socket.socket], quiet: float, deadline: float) -> dict[str, set[Any]]:
    """Read one response from each socket: which were answered, which the server closed
    without an answer; stops once nothing happened for `quiet` seconds."""
    selector = selectors.DefaultSelector()
    buffers = {}
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock] = b""
    answered: set[socket.socket] = set()
    dropped: set[socket.socket] = set()
    last = time.monotonic()
    while len(answered) + len(dropped) < len(socks) and time.monotonic() - last < quiet:
        if time.monotonic() > deadline:
            break
        for key, _ in selector.select(0.05):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            buffers[sock] += data
            if data and not buffers[sock].endswith(b"Hello, world!"):
                continue
            selector.unregister(sock)
            (answered if buffers[sock].startswith(b"HTTP/1.1 200") else dropped).add(sock)
            last = time.monotonic()
    selector.close()
    return {"answered": answered, "dropped": dropped}


def at_the_limit(pid: int, port: int, extra: int = 200) -> dict[str, Any]:
    """A server whose soft descriptor limit is low: connect past it, then free a few."""
    limit = int(
        next(
            line.split()[3]
            for line in Path(f"/proc/{pid}/limits").read_text().splitlines()
            if line.startswith("Max open files")
        )
    )
    socks = []
    for _ in range(limit + extra):  # the kernel completes them (listen backlog 2048)
        sock = socket.create_connection((HOST, port), timeout=5)
        sock.sendall(REQUEST)
        sock.setblocking(False)
        socks.append(sock)
    first = _collect(socks, quiet=2.0, deadline=time.monotonic() + 30)
    held = first["answered"]
    waiting = [s for s in socks if s not in held and s not in first["dropped"]]
    result: dict[str, Any] = {
        "soft_limit": limit,
        "connected": len(socks),
        "answered": len(held),
        "closed_unanswered": len(first["dropped"]),
        "waiting": len(waiting),
        "server_fds": open_fds(pid),
    }
    before = cpu_seconds(pid)
    time.sleep(3.0)  # an interval to measure
    result["cpu_percent_at_limit"] = round(100 * (cpu_seconds(pid) - before) / 3.0, 1)
    for sock in held:
        sock.sendall(REQUEST)
    again = _collect(list(held), quiet=2.0, deadline=time.monotonic() + 30)
    result["held_answering_again"] = len(again["answered"])
    # Free more than are waiting, so that fresh connections find room too.
    freed = list(again["answered"])[: len(waiting) + 50]
    for sock in freed:
        sock.close()
    later = _collect(waiting, quiet=2.0, deadline=time.monotonic() + 30)
    result["freed"] = len(freed)
    result["waiting_answered_after_freeing"] = len(later["answered"])
    result["fresh_after_freeing"] = fresh_requests(port, 20)
    for sock in socks:
        sock.close()
    return result


# -- the garbage collector's share -------------------------------------------------------------


def gc_pause(counts: list[int]) -> list[dict[str, Any]]:
    """What a full garbage collection costs with `count` idle connections in the process.

    A full (oldest-generation) collection visits every object the collector tracks, so its
    pause grows with the number of connections held: the one cost here that does. Measured
    in-process: aserve's protocol on an in-memory transport, one request each, then
    `gc.collect()` timed.
    """
    import gc

    from benchmarks.micro import REQUEST as MICRO_REQUEST
    from benchmarks.micro import MemoryTransport, hello

    async def held(count: int) -> dict[str, Any]:
        from aserve.config import Config
        from aserve.protocols.http import HttpProtocol
        from aserve.state import ServerState

        state = ServerState(Config(app=hello, access_log=False), hello, asyncio.get_running_loop())
        gc.collect()
        tracked = len(gc.get_objects())
        protocols = []
        for _ in range(count):
            protocol = HttpProtocol(state)
            protocol.connection_made(MemoryTransport())
            protocol.data_received(MICRO_REQUEST)
            protocols.append(protocol)
        per_connection = (len(gc.get_objects()) - tracked) / count
        pauses = []
        for _ in range(3):  # CPU time, which a busy machine disturbs less than wall time
            started = time.process_time()
            gc.collect()
            pauses.append(time.process_time() - started)
        for protocol in protocols:
            protocol.connection_lost(None)
        return {
            "connections": count,
            "tracked_objects_per_connection": round(per_connection, 1),
            "full_collection_cpu_ms": round(min(pauses) * 1000, 1),
        }

    async def run() -> list[dict[str, Any]]:
        return [await held(count) for count in counts]

    try:
        import uvloop
    except ImportError:
        return asyncio.run(run())
    return uvloop.run(run())


# -- many workers: a machine's worth of connections -------------------------------------------

FLEET_APP = "benchmarks.apps:hello"
# The kernel's TCP counters that say where opens were lost or delayed (nstat's names):
# the accept queue full (ListenOverflows: a completed handshake's last ACK, or a SYN, dropped;
# every overflow is also a ListenDrop), bare ACKs held back by TCP_DEFER_ACCEPT, the SYN
# queue full (with or without syncookies), and retransmissions of SYNs and SYN-ACKs.
TCP_COUNTERS = (
    "ListenOverflows",
    "ListenDrops",
    "TCPDeferAcceptDrop",
    "TCPReqQFullDrop",
    "TCPReqQFullDoCookies",
    "SyncookiesSent",
    "SyncookiesRecv",
    "SyncookiesFailed",
    "TCPSynRetrans",
    "TCPTimeouts",
    "TCPAbortOnData",
    "EmbryonicRsts",
)


def tcp_counters() -> dict[str, int]:
    """The machine's TcpExt counters above, from /proc/net/netstat (as `nstat -az` shows)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    values: dict[str, int] = {}
    for names, numbers in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            values.update(zip(names.split()[1:], map(int, numbers.split()[1:]), strict=True))
    return {name: values.get(name, 0) for name in TCP_COUNTERS}


def _queues(port: int) -> tuple[int, int]:
    """(connections in the accept queue, connections in SYN-RECV) of the listener on `port`.

    `ss` asks the kernel with a filter (inet_diag), so this stays cheap with 100,000
    connections open, where reading /proc/net/tcp would not."""
    listen = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=False
    ).stdout.split()
    syn_recv = subprocess.run(
        ["ss", "-Htn", "state", "syn-recv", f"sport = :{port}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.count("\n")
    return (int(listen[1]) if len(listen) > 1 else 0), syn_recv


class QueueSampler(threading.Thread):
    """Samples the listener's queues every `interval` seconds while the clients open."""

    def __init__(self, port: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self.interval):
            accept, syn_recv = _queues(self.port)
            self.samples.append((round(time.monotonic() - started, 2), accept, syn_recv))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self.join()
        accept = [a for _, a, _ in self.samples]
        syn_recv = [r for _, _, r in self.samples]
        return {
            "samples": len(self.samples),
            "accept_queue_max": max(accept, default=0),
            "accept_queue_median": statistics.median(accept) if accept else 0,
            "syn_recv_max": max(syn_recv, default=0),
            "series": self.samples[:: max(1, len(self.samples) // 200)],
        }


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def socket_fds(pid: int) -> int:
    """Open descriptors of `pid` that are sockets."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def worker_pids(pid: int) -> list[int]:
    """The server's workers: its child processes, less multiprocessing's resource tracker
    (uvicorn's spawned workers start one)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in task.read_text().split()]
    workers = []
    for child in children:
        with contextlib.suppress(OSError):
            if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
    return sorted(workers)


def tree_pss_kib(pid: int) -> int:
    return pss_kib(pid) + sum(pss_kib(worker) for worker in worker_pids(pid))


def settle_pss(pid: int, seconds: float = 1.0, timeout: float = 30.0) -> int:
    """The process tree's PSS once two readings `seconds` apart agree within 0.5%."""
    previous = tree_pss_kib(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(seconds)
        current = tree_pss_kib(pid)
        if abs(current - previous) <= previous / 200:
            return current
        previous = current
    return previous


def wait_for_workers(pid: int, workers: int, timeout: float = 60.0) -> list[int]:
    """Poll until `workers` workers run and the tree's memory has settled (all started)."""
    deadline = time.monotonic() + timeout
    while len(worker_pids(pid)) < workers:
        if time.monotonic() > deadline:
            raise servers.ServerError(
                f"only {len(worker_pids(pid))} of {workers} workers after {timeout:.0f}s"
            )
        time.sleep(0.1)
    settle_pss(pid)
    return worker_pids(pid)


def _spread(counts: list[int]) -> float | None:
    """How far the busiest and the least busy worker are from the mean, in % of it."""
    if not counts or not sum(counts):
        return None
    mean = sum(counts) / len(counts)
    return round(100 * max(max(counts) - mean, mean - min(counts)) / mean, 2)


def measure_fleet(
    pid: int,
    port: int,
    connections: int,
    *,
    workers: int,
    clients: int,
    sources: list[list[str]],
    opening: int,
    open_timeout: float,
    probes: int,
) -> dict[str, Any]:
    """Hold `connections` keep-alive connections against a server with `workers` workers."""
    pids = wait_for_workers(pid, workers)
    fresh_requests(port, 20, gap=0)  # warm up (each worker's first requests)
    result: dict[str, Any] = {"asked": connections, "workers": len(pids), "sources": sources}
    base_sockets = {worker: socket_fds(worker) for worker in pids}
    pss_start = settle_pss(pid)
    group = Clients(port, clients, None, sources)
    try:
        sampler = QueueSampler(port)
        counters = tcp_counters()
        sampler.start()
        result["open"] = group.open("http", connections, open_timeout, opening)
        result["queues"] = sampler.stop()
        after = tcp_counters()
        result["tcp_counters"] = {name: after[name] - counters[name] for name in TCP_COUNTERS}
        pss_held = settle_pss(pid)
        per_worker = [socket_fds(worker) - base_sockets[worker] for worker in pids]
        held = result["open"]["opened"]
        result["per_worker"] = per_worker
        result["balance_spread_percent"] = _spread(per_worker)
        result["pss_kib"] = {"start": pss_start, "held": pss_held}
        result["pss_kib_per_connection"] = round((pss_held - pss_start) / held, 2) if held else None
        result["fresh_connection"] = fresh_requests(port, probes)
        result["held_check"] = group.check(timeout=60.0)
    finally:
        group.close()
    return result


def run_fleet(name: str, args: argparse.Namespace, block: int) -> dict[str, Any]:
    """One server with `--workers`: `--idle` connections from `--clients` processes, each on
    its own `--sources` loopback source addresses in 127.0.`block`.x (a fresh block for every
    run, so no earlier run's TIME-WAIT holds the ports)."""
    servers.KEEP_ALIVE_SECONDS = str(args.keep_alive)
    extra = ["--workers", str(args.workers), *args.server_arg]
    server = servers.start_server(
        name, FLEET_APP, core=None, idle_connections=args.idle, extra=extra
    )
    per = args.sources
    sources = [
        [f"127.0.{block}.{2 + index * per + n}" for n in range(per)]
        for index in range(args.clients)
    ]
    try:
        result = measure_fleet(
            server.process.pid,
            server.port,
            args.idle,
            workers=args.workers,
            clients=args.clients,
            sources=sources,
            opening=args.opening,
            open_timeout=args.open_timeout,
            probes=args.probes,
        )
        result["command"] = server.command
        result["alive"] = server.process.poll() is None
        result["log_tail"] = servers.log_tail(server.log_path, 10)
        return result
    finally:
        servers.stop_server(server)


def _fleet_row(name: str, r: dict[str, Any]) -> list[str]:
    opened = r["open"]
    check = r["held_check"]["http"]
    fresh = r["fresh_connection"]
    counters = r["tcp_counters"]
    kinds = ", ".join(f"{n} {c}" for n, c in opened["failed_by_kind"].items())
    times = opened["open_time"]
    return [
        name,
        f"{check['answered']:,} / {r['asked']:,}",
        f"{opened['failed']:,}" + (f" ({kinds})" if kinds else ""),
        f"{opened['seconds']} s ({times['p99_ms']} / {times['max_ms']} ms)",
        " / ".join(f"{c:,}" for c in r["per_worker"]) + f" ({r['balance_spread_percent']}%)",
        f"{r['pss_kib_per_connection']} KiB",
        f"{fresh['p50_ms']} / {fresh['p99_ms']} ms ({fresh['failed']} failed)",
        f"{counters['ListenOverflows']:,} / {counters['TCPDeferAcceptDrop']:,}",
        f"{r['queues']['accept_queue_max']:,} / {r['queues']['syn_recv_max']:,}",
    ]


def fleet_main(args: argparse.Namespace) -> None:
    """`make bench-connections`: every server in `--servers` once per round, interleaved."""
    raise_nofile_limit(1 << 20)  # up to the hard limit: the server, its workers, the clients
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "loadavg_before": os.getloadavg(),
        "args": vars(args),
        "somaxconn": int(Path("/proc/sys/net/core/somaxconn").read_text()),
        "tcp_max_syn_backlog": int(Path("/proc/sys/net/ipv4/tcp_max_syn_backlog").read_text()),
        "runs": [],
    }
    names = args.servers.split(",")
    block = 10
    for round_number in range(1, args.rounds + 1):
        shift = (round_number - 1) % len(names)
        for name in names[shift:] + names[:shift]:
            print(f"== round {round_number}: {name} --workers {args.workers}", flush=True)
            block += 1
            try:
                result = run_fleet(name, args, block)
            except servers.ServerError as exc:
                result = {"error": str(exc)}
            result.update(server=name, round=round_number)
            report["runs"].append(result)
            shown = {k: v for k, v in result.items() if k != "queues"}
            shown["queues"] = {k: v for k, v in result.get("queues", {}).items() if k != "series"}
            print(json.dumps(shown, indent=1), flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"connections-workers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    header = [
        "server", "held (answering) / asked", "failed opens", "open time (p99 / max per open)",
        "per worker (spread from the mean)", "PSS per connection", "fresh request p50 / p99",
        "ListenOverflows / TCPDeferAcceptDrop", "max accept queue / SYN-RECV",
    ]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for run in report["runs"]:
        label = f"{run['server']} (round {run['round']})"
        if "error" in run:
            print(f"| {label} | error: {run['error'].splitlines()[0]} |")
        else:
            print("| " + " | ".join(_fleet_row(label, run)) + " |")
    print(f"written to {path}")


# -- the benchmark ----------------------------------------------------------------------------


def run_at_the_limit(name: str, soft_limit: int) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft_limit, hard))  # the server inherits it
    try:
        server = servers.start_server(name, APP, core=0, kind="ws", idle_connections=1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        result = at_the_limit(server.process.pid, server.port)
        result["alive"] = server.process.poll() is None
        return result
    finally:
        servers.stop_server(server)


def run_server(name: str, args: argparse.Namespace) -> dict[str, Any]:
    # Idle connections must outlive the whole run, not 120 s.
    servers.KEEP_ALIVE_SECONDS = str(args.keep_alive)
    server = servers.start_server(
        name, APP, core=0, kind="ws", idle_connections=args.idle + args.websockets
    )
    try:
        limit = int(
            next(
                line.split()[3]
                for line in Path(f"/proc/{server.process.pid}/limits").read_text().splitlines()
                if line.startswith("Max open files")
            )
        )
        # taskset execs the server: the pid is the server's own.
        result = measure(
            server.process.pid,
            server.port,
            args.idle,
            args.websockets,
            clients=args.clients,
            probes=args.probes,
            idle_seconds=args.idle_seconds,
            core=1,
        )
        result["nofile_limit"] = limit
        result["alive"] = server.process.poll() is None
        return result
    finally:
        servers.stop_server(server)


def _row(name: str, r: dict[str, Any]) -> list[str]:
    check = r["held_check"]
    fresh = r["fresh_connection"]
    return [
        name,
        f"{r['open_http']['opened']:,}/{r['open_http']['asked']:,} in {r['open_http']['seconds']}s",
        f"{r['open_websocket']['opened']:,}/{r['open_websocket']['asked']:,} in "
        f"{r['open_websocket']['seconds']}s",
        f"{r['kib_per_idle_http']} KiB",
        f"{r['kib_per_websocket']} KiB",
        f"{r['idle_cpu_percent']}%",
        f"{fresh['p50_ms']} / {fresh['p99_ms']} / {fresh['max_ms']} ms ({fresh['failed']} failed)",
        f"{check['http']['answered']:,} + {check['websocket']['answered']:,} "
        f"({check['http']['failed'] + check['websocket']['failed']} failed)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="aserve,uvicorn")
    parser.add_argument("--idle", type=int, default=15_000)
    parser.add_argument("--websockets", type=int, default=4_000)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--probes", type=int, default=300, help="fresh-connection requests")
    parser.add_argument("--keep-alive", type=int, default=900)
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=22.0,
        help="CPU measured over this long while held (20 s: every WebSocket is pinged once)",
    )
    parser.add_argument(
        "--emfile-limit",
        type=int,
        default=1000,
        help="soft descriptor limit of the at-the-limit run (0: skip it)",
    )
    parser.add_argument(
        "--gc-pause",
        default="",
        help="only time a full GC with this many connections held in-process (e.g. 19000,100000)",
    )
    fleet = parser.add_argument_group(
        "many workers (make bench-connections): with --workers N, `--idle` keep-alive "
        "connections against N workers, no WebSockets"
    )
    fleet.add_argument("--workers", type=int, default=0, help="0: one process (the default)")
    fleet.add_argument("--rounds", type=int, default=1, help="interleaved rounds")
    fleet.add_argument(
        "--opening", type=int, default=OPENING, help="opens in flight per client process"
    )
    fleet.add_argument(
        "--open-timeout", type=float, default=120.0, help="seconds for one open to be answered"
    )
    fleet.add_argument(
        "--sources",
        type=int,
        default=4,
        help="loopback source addresses per client process (1: the slow bind() of before)",
    )
    fleet.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="an extra argument for every server (repeat it)",
    )
    args = parser.parse_args()
    if args.workers:
        fleet_main(args)
        return
    if args.gc_pause:
        for row in gc_pause([int(n) for n in args.gc_pause.split(",")]):
            print(json.dumps(row))
        return
    raise_nofile_limit(1 << 20)  # up to the hard limit; inherited by the server
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "loadavg_before": os.getloadavg(),
        "args": vars(args),
        "servers": {},
    }
    for name in args.servers.split(","):
        print(f"== {name}", flush=True)
        try:
            report["servers"][name] = run_server(name, args)
        except servers.ServerError as exc:
            report["servers"][name] = {"error": str(exc)}
        print(json.dumps(report["servers"][name], indent=1), flush=True)
        if args.emfile_limit:
            try:
                limit_result = run_at_the_limit(name, args.emfile_limit)
            except servers.ServerError as exc:
                limit_result = {"error": str(exc)}
            report["servers"][name]["at_the_limit"] = limit_result
            print(json.dumps(limit_result, indent=1), flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"connections-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    header = [
        "server", "idle HTTP opened", "WebSockets opened", "RSS/idle HTTP", "RSS/WebSocket",
        "CPU while held", "fresh connection p50/p99/max", "held ones answering",
    ]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name, result in report["servers"].items():
        if "error" not in result:
            print("| " + " | ".join(_row(name, result)) + " |")
    limit_header = [
        "server", "soft limit", "answered", "closed unanswered", "waiting", "CPU at the limit",
        "held answer again", "waiting answered after freeing (waiting + 50)", "fresh after freeing",
    ]  # fmt: skip
    print("| " + " | ".join(limit_header) + " |")
    print("|" + " --- |" * len(limit_header))
    for name, result in report["servers"].items():
        r = result.get("at_the_limit")
        if r and "error" not in r:
            fresh = r["fresh_after_freeing"]
            cells = [
                name, r["soft_limit"], r["answered"], r["closed_unanswered"], r["waiting"],
                f"{r['cpu_percent_at_limit']}%", r["held_answering_again"],
                r["waiting_answered_after_freeing"],
                f"{fresh['requests'] - fresh['failed']}/{fresh['requests']}",
            ]  # fmt: skip
            print("| " + " | ".join(str(c) for c in cells) + " |")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
