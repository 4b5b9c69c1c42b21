"""Per-request CPU cost of the HTTP protocol alone: no sockets, no load generator.

Feeds the same keep-alive request into aserve's protocol (and uvicorn's httptools protocol)
through an in-memory transport and reports the time per request. Under callgrind the count of
instructions is repeatable, which makes small hot-path changes measurable on a noisy machine:

    python benchmarks/micro.py aserve                 # µs per request, 5 runs
    python benchmarks/micro.py aserve --connections 64   # 64 requests per loop iteration
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/micro.py aserve --requests 2000 --runs 1
    (repeat with --requests 6000; the difference / 4000 is instructions per request)

`--metrics` counts each request into aserve's Prometheus metrics (docs/metrics.md), as
`--metrics-port` does, to measure what they cost.

`aserve-h2` is the same hello over HTTP/2 (h2c, prior knowledge): ten streams per read, as
`h2load -m 10` sends them, each a HEADERS frame of h2load's five fields (indexed from the
HPACK table after the first), answered with HEADERS and DATA. The reads are built before the
timed loop; under callgrind, building them is counted in the figure (a few hundred
instructions per request). `--headers N` adds N request headers (h2load's `-H`).

Each loop iteration reads one request from each of `--connections` connections (default 1),
then the loop turns: aserve writes its answers at the end of the iteration, so the figure
includes that turn, shared by the iteration's requests. uvicorn needs one event-loop turn per
request to run the Task it schedules; its figure includes that turn.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

REQUEST = (
    b"GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
)


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"13")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


class MemoryTransport(asyncio.Transport):
    """Counts writes; enough of a transport for both servers' protocols."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def write(self, data: Any) -> None:
        self.writes += 1

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def per_request_aserve(requests: int, metrics: bool = False, connections: int = 1) -> float:
    from aserve.config import Config
    from aserve.protocols.http import HttpProtocol
    from aserve.state import ServerState

    # (metrics_port only switches the counters on here: ServerState binds nothing)
    config = Config(app=hello, access_log=False, metrics_port=0 if metrics else None)
    state = ServerState(config, hello, asyncio.get_running_loop())
    protocols = [HttpProtocol(state) for _ in range(connections)]
    transports = [MemoryTransport() for _ in range(connections)]
    for protocol, transport in zip(protocols, transports, strict=True):
        protocol.connection_made(transport)
    # One loop iteration reads one request from each connection, as the event loop does with
    # that many clients waiting on their answers; the answers leave at the iteration's end.
    rounds = max(1, requests // connections)
    for _ in range(max(1, 1000 // connections)):  # warm caches
        for protocol in protocols:
            protocol.data_received(REQUEST)
        await asyncio.sleep(0)
    start = time.perf_counter()
    for _ in range(rounds):
        for protocol in protocols:
            protocol.data_received(REQUEST)
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    await asyncio.sleep(0)
    answered = sum(transport.writes for transport in transports)
    warm = max(1, 1000 // connections) * connections
    assert answered == rounds * connections + warm, "every request must be answered"
    if state.metrics is not None:
        assert state.metrics.responses[2] == answered, "every response must be counted"
    return elapsed / (rounds * connections)


def h2_reads(
    requests: int, first_id: int = 0, per_read: int = 10, headers: int = 0
) -> tuple[bytes, list[bytes]]:
    """A client's bytes: the preface, SETTINGS and a first batch, then `requests` more
    streams, `per_read` per read. Streams after the first batch are the same HEADERS block
    but for the stream id (h2's encoder indexes all five fields by then)."""
    import h2.config
    import h2.connection

    client = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    client.increment_flow_control_window(2**30)
    fields = [
        (b":method", b"GET"),
        (b":path", b"/"),
        (b":scheme", b"http"),
        (b":authority", b"127.0.0.1:8080"),
        (b"user-agent", b"h2load nghttp2/1.52.0"),
        *((b"x-header-%d" % n, b"value-number-%d-abcdefghij" % n) for n in range(1, headers + 1)),
    ]
    for stream_id in range(1, 2 * per_read, 2):
        client.send_headers(stream_id, fields, end_stream=True)
    first = client.data_to_send() + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"  # + SETTINGS ACK
    client.send_headers(2 * per_read + 1, fields, end_stream=True)
    template = client.data_to_send()
    head, block = template[:5], template[9:]
    stream_id = first_id or 2 * per_read + 1
    ids = [
        (head + i.to_bytes(4, "big") + block) for i in range(stream_id, stream_id + 2 * requests, 2)
    ]
    reads = [b"".join(ids[i : i + per_read]) for i in range(0, requests, per_read)]
    return first, reads


async def per_request_aserve_h2(requests: int, headers: int = 0) -> float:
    from aserve.config import Config
    from aserve.protocols.http import HttpProtocol
    from aserve.state import ServerState

    config = Config(app=hello, access_log=False)
    state = ServerState(config, hello, asyncio.get_running_loop())
    protocol = HttpProtocol(state)
    transport = MemoryTransport()
    protocol.connection_made(transport)
    first, warm = h2_reads(1000, headers=headers)
    protocol.data_received(first)
    protocol = transport.protocol  # now the HTTP/2 protocol
    for data in warm:
        protocol.data_received(data)
    _, reads = h2_reads(requests, first_id=2 * (len(warm) * 10 + 10) + 1, headers=headers)
    start = time.perf_counter()
    for data in reads:
        protocol.data_received(data)
    elapsed = time.perf_counter() - start
    assert protocol._last_stream_id == 2 * (requests + 1010) - 1, "every stream must be read"
    assert not protocol._streams, "every stream must be answered"
    return elapsed / requests


async def per_request_uvicorn(requests: int) -> float:
    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    config = Config(app=hello, access_log=False, http="httptools")
    config.load()
    protocol = HttpToolsProtocol(config, ServerState(), {})
    transport = MemoryTransport()
    protocol.connection_made(transport)
    for _ in range(1000):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)
    start = time.perf_counter()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the turn uvicorn's scheduled Task needs
    elapsed = time.perf_counter() - start
    assert transport.writes >= requests, "every request must be answered"
    return elapsed / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", choices=["aserve", "aserve-h2", "uvicorn"])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--metrics", action="store_true", help="aserve with metrics on")
    parser.add_argument(
        "--connections",
        type=int,
        default=1,
        help="aserve: connections read from per loop iteration, one request each (default 1)",
    )
    parser.add_argument(
        "--headers", type=int, default=0, help="aserve-h2: this many more request headers"
    )
    args = parser.parse_args()

    async def measure(requests: int) -> float:
        if args.server == "aserve":
            return await per_request_aserve(requests, args.metrics, args.connections)
        if args.server == "aserve-h2":
            return await per_request_aserve_h2(requests, args.headers)
        return await per_request_uvicorn(requests)

    async def runs() -> list[float]:
        return [await measure(args.requests) for _ in range(args.runs)]

    try:
        import uvloop

        results = uvloop.run(runs())
    except ImportError:
        results = asyncio.run(runs())
    micros = [r * 1e6 for r in results]
    print(f"{args.server}: {statistics.median(micros):.2f} µs/request (median of {args.runs})")


if __name__ == "__main__":
    main()
