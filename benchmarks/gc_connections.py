"""What idle keep-alive connections cost the cyclic garbage collector, against a real server.

A full (oldest-generation) collection visits every object the collector tracks, so its pause
grows with the number of connections a worker holds, and it stops every connection at once.
This runs the server in this process (so `gc` sees its objects), opens idle keep-alive
connections from client processes on other loopback source addresses (one request each, then
idle: `benchmarks/connections.py`'s clients), and at each step (0, then `--steps`) reports:

- GC-tracked objects per held connection: `len(gc.get_objects())` after a collection, minus
  the count before any connection, divided by the connections held;
- the CPU time of a full `gc.collect()` (the minimum of `--repeat` runs, process time), and a
  straight line through the steps extrapolated to 100,000 connections;
- with `--types`, which object types those are (the difference per connection by type).

    python benchmarks/gc_connections.py                          # aserve and uvicorn, both loops
    python benchmarks/gc_connections.py --servers aserve --loops uvloop --steps 2000 --types
    python benchmarks/gc_connections.py --freeze                 # gc.freeze() after startup

Each server and loop runs in a fresh process of its own (`--one`), pinned to core 0, the
clients to core 1. uvicorn runs as `--http httptools --loop uvloop` (or asyncio) would. Needs a
descriptor limit above the largest step (the soft limit is raised to the hard one).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.apps import hello
from benchmarks.connections import Clients
from benchmarks.idle import raise_nofile_limit
from benchmarks.servers import HOST

EXTRAPOLATE_TO = 100_000
KEEP_ALIVE = 900.0  # the connections must outlive the run


def _warm_up(port: int, count: int = 20) -> None:
    """A few requests on fresh connections: first-request imports and caches."""
    for _ in range(count):
        with socket.create_connection((HOST, port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            while sock.recv(65536):
                pass


def _tracked() -> tuple[int, collections.Counter[str]]:
    gc.collect()
    objects = gc.get_objects()
    types = collections.Counter(type(o).__qualname__ for o in objects)
    count = len(objects)
    del objects
    return count, types


def _full_collection_ms(repeat: int) -> float:
    pauses = []
    for _ in range(repeat):
        started = time.process_time()  # CPU time: a busy machine disturbs it less than wall
        gc.collect()
        pauses.append(time.process_time() - started)
    return round(min(pauses) * 1000, 2)


async def _start_aserve(loop_name: str) -> tuple[Any, int, Any]:
    from aserve.config import Config
    from aserve.server import Server

    config = Config(
        app=hello,
        host=HOST,
        port=0,
        loop=loop_name,
        access_log=False,
        log_level="warning",
        timeout_keep_alive=KEEP_ALIVE,
    )
    server = Server(config)
    server.systemd_notify = False
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    return server, server.sockets[0].getsockname()[1], task


async def _start_uvicorn(loop_name: str) -> tuple[Any, int, Any]:
    import uvicorn

    config = uvicorn.Config(
        hello,
        host=HOST,
        port=0,
        loop="none",  # this process runs the loop (uvloop or asyncio) already
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=int(KEEP_ALIVE),
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    return server, server.servers[0].sockets[0].getsockname()[1], task


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """In this process: start the server, then hold connections step by step."""
    loop = asyncio.get_running_loop()
    start = _start_aserve if args.server == "aserve" else _start_uvicorn
    server, port, serving = await start(args.loop)
    await loop.run_in_executor(None, _warm_up, port)
    group = await loop.run_in_executor(None, Clients, port, args.clients, 1)
    await asyncio.sleep(0.5)
    if args.freeze:
        gc.collect()
        gc.freeze()  # what a server would do after startup: the objects so far stay out
    base_count, base_types = _tracked()
    rows = [{"connections": 0, "tracked": base_count, "full_gc_ms": _full_collection_ms(3)}]
    held = 0
    types: dict[str, float] = {}
    try:
        for step in args.steps:
            opened = await loop.run_in_executor(None, group.open, "http", step - held)
            held += opened["opened"]
            if opened["failed"]:
                print(f"  {opened['failed']} failed: {opened['first_error']}", file=sys.stderr)
            await asyncio.sleep(1.0)  # the last answers written, the clients' ACKs in
            count, now_types = _tracked()
            rows.append(
                {
                    "connections": held,
                    "tracked": count,
                    "objects_per_connection": round((count - base_count) / held, 2),
                    "full_gc_ms": _full_collection_ms(args.repeat),
                }
            )
            print(f"  {args.server}/{args.loop}: {rows[-1]}", file=sys.stderr, flush=True)
            if args.types:
                diff = now_types - base_types
                types = {n: round(c / held, 2) for n, c in diff.most_common() if c >= held / 20}
    finally:
        await loop.run_in_executor(None, group.close)
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(serving, 30)
    return {"server": args.server, "loop": args.loop, "freeze": args.freeze, "rows": rows,
            "types_per_connection": types, **_fit(rows)}  # fmt: skip


def _fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Least squares through the steps: ms per 1,000 connections, and at 100,000."""
    xs = [r["connections"] for r in rows]
    ys = [r["full_gc_ms"] for r in rows]
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    spread = sum((x - mean_x) ** 2 for x in xs)
    if not spread:
        return {}
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    intercept = mean_y - slope * mean_x
    per_connection = rows[-1].get("objects_per_connection")
    return {
        "ms_per_1000_connections": round(slope * 1000, 3),
        "full_gc_ms_at_100k": round(intercept + slope * EXTRAPOLATE_TO, 1),
        "objects_per_connection": per_connection,
    }


def run_one(args: argparse.Namespace) -> None:
    raise_nofile_limit(1 << 20)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(measure(args))
    else:
        result = asyncio.run(measure(args))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="aserve,uvicorn")
    parser.add_argument("--loops", default="uvloop,asyncio")
    parser.add_argument("--steps", default="5000,10000,15000", help="connections held, cumulative")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--repeat", type=int, default=3, help="full collections timed per step")
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() once started")
    parser.add_argument("--types", action="store_true", help="per-connection objects by type")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # server:loop, in this process
    args = parser.parse_args()
    args.steps = [int(s) for s in args.steps.split(",")]
    if args.one:
        args.server, args.loop = args.one.split(":")
        run_one(args)
        return
    results = []
    for server in args.servers.split(","):
        for loop in args.loops.split(","):
            command = [sys.executable, __file__, "--one", f"{server}:{loop}"]
            command += ["--steps", ",".join(map(str, args.steps)), "--clients", str(args.clients)]
            command += ["--repeat", str(args.repeat)]
            command += ["--freeze"] * args.freeze + ["--types"] * args.types
            output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
            results.append(json.loads(output.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    steps = [r["connections"] for r in results[0]["rows"]]
    print("| server | loop | objects/connection | full GC ms at " + " / ".join(
        f"{s:,}" for s in steps) + " | ms per 1,000 | at 100,000 (fit) |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        pauses = " / ".join(str(row["full_gc_ms"]) for row in r["rows"])
        print(
            f"| {r['server']} | {r['loop']} | {r.get('objects_per_connection')} | {pauses} | "
            f"{r.get('ms_per_1000_connections')} | {r.get('full_gc_ms_at_100k')} |"
        )


if __name__ == "__main__":
    main()
