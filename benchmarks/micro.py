"""Per-request CPU cost of the HTTP protocol alone: no sockets, no load generator.

Feeds the same keep-alive request into aserve's protocol (and uvicorn's httptools protocol)
through an in-memory transport and reports the time per request. Under callgrind the count of
instructions is repeatable, which makes small hot-path changes measurable on a noisy machine:

    python benchmarks/micro.py aserve                 # µs per request, 5 runs
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/micro.py aserve --requests 2000 --runs 1
    (repeat with --requests 6000; the difference / 4000 is instructions per request)

`--metrics` counts each request into aserve's Prometheus metrics (docs/metrics.md), as
`--metrics-port` does, to measure what they cost.

uvicorn needs one event-loop turn per request to run the Task it schedules; aserve answers
inside `data_received` when the app does not wait. The uvicorn figure includes that turn.
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


async def per_request_aserve(requests: int, metrics: bool = False) -> float:
    from aserve.config import Config
    from aserve.protocols.http import HttpProtocol
    from aserve.state import ServerState

    # (metrics_port only switches the counters on here: ServerState binds nothing)
    config = Config(app=hello, access_log=False, metrics_port=0 if metrics else None)
    state = ServerState(config, hello, asyncio.get_running_loop())
    protocol = HttpProtocol(state)
    transport = MemoryTransport()
    protocol.connection_made(transport)
    for _ in range(1000):  # warm caches
        protocol.data_received(REQUEST)
    start = time.perf_counter()
    for _ in range(requests):
        protocol.data_received(REQUEST)
    elapsed = time.perf_counter() - start
    await asyncio.sleep(0)
    assert transport.writes == requests + 1000, "every request must be answered"
    if state.metrics is not None:
        assert state.metrics.responses[2] == requests + 1000, "every response must be counted"
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
    parser.add_argument("server", choices=["aserve", "uvicorn"])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--metrics", action="store_true", help="aserve with metrics on")
    args = parser.parse_args()

    async def measure(requests: int) -> float:
        if args.server == "aserve":
            return await per_request_aserve(requests, args.metrics)
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
