"""Where a latency tail comes from: event-loop stalls inside the server, seen from the server.

    python benchmarks/stalls.py [--servers aserve,uvicorn] [--runs 8] [--duration 5]

Serves the FastAPI workload's app wrapped in a probe, loads it with wrk exactly as
`make bench` does (server on core 0, wrk on core 1, 64 connections), and for every run prints
wrk's p99 beside what the probe saw in the server during that run:

- the probe re-arms a 5 ms timer on the server's loop and records every turn that came more
  than 15 ms late (a *stall*: no callback ran in that time);
- for each stall, how much CPU the server process used meanwhile (`time.process_time`): a stall
  during which the process kept the CPU was the server's own work (a long callback, the GC);
  one during which it got almost no CPU means the process was not running at all (preempted,
  or the virtual machine was);
- GC passes, with their generation and duration (`gc.callbacks`).

A second probe runs beside wrk on the load core (a 2 ms sleep loop, reporting every wake-up
more than 15 ms late), and /proc/stat gives each core's steal time during the run: if the load
core stalls, wrk stops reading responses and its latencies grow while the server sits idle.

So a p99 spike that lines up with a CPU-less stall comes from the host, not the server.
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TICK = 0.005
STALL = 0.015
LOG_ENV = "ASERVE_STALL_LOG"


class StallProbe:
    """ASGI wrapper: starts the loop monitor on the first request; writes JSON lines."""

    def __init__(self, app):
        self.app = app
        self.started = False
        self.log = None
        self.gc_start = 0.0

    async def __call__(self, scope, receive, send):
        if not self.started and scope["type"] == "http":
            self.started = True
            self._start()
        await self.app(scope, receive, send)

    def _start(self):
        import asyncio

        self.log = open(os.environ[LOG_ENV], "a", buffering=1)  # noqa: SIM115 (lives with the process)
        gc.callbacks.append(self._on_gc)
        loop = asyncio.get_running_loop()
        state = {"wall": time.monotonic(), "cpu": time.process_time()}

        def tick():
            wall, cpu = time.monotonic(), time.process_time()
            late = wall - state["wall"] - TICK
            if late > STALL:
                self._write(
                    {
                        "kind": "stall",
                        "at": wall,
                        "late_ms": late * 1e3,
                        "cpu_ms": (cpu - state["cpu"]) * 1e3,
                    }
                )
            state["wall"], state["cpu"] = wall, cpu
            loop.call_later(TICK, tick)

        loop.call_later(TICK, tick)

    def _on_gc(self, phase, info):
        if phase == "start":
            self.gc_start = time.monotonic()
        else:
            now = time.monotonic()
            self._write(
                {
                    "kind": "gc",
                    "at": now,
                    "generation": info["generation"],
                    "ms": (now - self.gc_start) * 1e3,
                }
            )

    def _write(self, record):
        self.log.write(json.dumps(record) + "\n")


def _fastapi_app():
    from benchmarks.fastapi_app import app as fastapi

    return StallProbe(fastapi)


LOAD_PROBE = """
import json, sys, time
end = time.monotonic() + float(sys.argv[1])
stalls, last = [], time.monotonic()
while last < end:
    time.sleep(0.002)
    now = time.monotonic()
    if now - last - 0.002 > 0.015:
        stalls.append(round((now - last - 0.002) * 1e3, 1))
    last = now
print(json.dumps(stalls))
"""


def _steal_ms():
    """Steal time of each core so far, in ms (/proc/stat, in USER_HZ ticks)."""
    ticks = os.sysconf("SC_CLK_TCK")
    steal = {}
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0].startswith("cpu") and fields[0] != "cpu":
            steal[fields[0]] = int(fields[8]) * 1000 / ticks
    return steal


def _read_log(path):
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    except OSError:
        return []


def main(argv=None):
    from benchmarks.idle import raise_nofile_limit
    from benchmarks.servers import start_server, stop_server
    from benchmarks.wrk import run_wrk

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="aserve,uvicorn")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--load-probe",
        choices=("on", "off", "alternate"),
        default="alternate",
        help="run the load-core probe in every run, none, or every other run "
        "(it keeps the load core from idling, which is itself a test)",
    )
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {1})
    raise_nofile_limit(4096)
    summary = {}
    for name in args.servers.split(","):
        log = Path(f"/tmp/aserve-stalls-{name}-{os.getpid()}.jsonl")
        log.unlink(missing_ok=True)
        os.environ[LOG_ENV] = str(log)
        server = start_server(name, "benchmarks.stalls:app", core=0)
        rows = []
        try:
            url = f"http://127.0.0.1:{server.port}/items/42?q=hello"
            run_wrk(url, connections=args.connections, duration=1, core=1)  # warm-up
            for run in range(1, args.runs + 1):
                probing = args.load_probe == "on" or (
                    args.load_probe == "alternate" and run % 2 == 0
                )
                probe = subprocess.Popen(
                    [
                        "taskset",
                        "-c",
                        "1",
                        sys.executable,
                        "-c",
                        LOAD_PROBE,
                        str(args.duration if probing else 0),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                steal_before = _steal_ms()
                begin = time.monotonic()
                result = run_wrk(url, connections=args.connections, duration=args.duration, core=1)
                end = time.monotonic()
                steal = {cpu: round(ms - steal_before[cpu]) for cpu, ms in _steal_ms().items()}
                load_stalls = json.loads(probe.communicate(timeout=30)[0] or "[]")
                records = [r for r in _read_log(log) if begin <= r["at"] <= end]
                stalls = [r for r in records if r["kind"] == "stall"]
                gcs = [r for r in records if r["kind"] == "gc"]
                worst = max(stalls, key=lambda r: r["late_ms"], default=None)
                rows.append(
                    {
                        "run": run,
                        "rps": result["value"],
                        "p99_ms": result["p99_ms"],
                        "stalls": len(stalls),
                        "worst_stall_ms": worst["late_ms"] if worst else 0.0,
                        "worst_stall_cpu_ms": worst["cpu_ms"] if worst else 0.0,
                        "cpu_less_stall_ms": sum(
                            r["late_ms"] for r in stalls if r["cpu_ms"] < 0.5 * r["late_ms"]
                        ),
                        "gc_passes": len(gcs),
                        "gc_max_ms": max((r["ms"] for r in gcs), default=0.0),
                        "load_probe": probing,
                        "load_core_stalls_ms": load_stalls,
                        "steal_ms": steal,
                    }
                )
                row = rows[-1]
                print(
                    f"{name:8} run {run}: {row['rps']:8,.0f} req/s  p99 {row['p99_ms']:7.1f} ms"
                    f"  stalls {row['stalls']:3}  worst {row['worst_stall_ms']:6.1f} ms"
                    f" (cpu {row['worst_stall_cpu_ms']:5.1f})"
                    f"  cpu-less {row['cpu_less_stall_ms']:6.1f} ms"
                    f"  gc {row['gc_passes']} (max {row['gc_max_ms']:.1f} ms)"
                    f"  load probe {'on ' if probing else 'off'}"
                    f" (stalls {sorted(load_stalls)[-3:]} ms)  steal {steal} ms",
                    flush=True,
                )
        finally:
            stop_server(server)
            log.unlink(missing_ok=True)
        summary[name] = rows
    for name, rows in summary.items():
        for probing in (False, True):
            p99 = [r["p99_ms"] for r in rows if r["load_probe"] == probing]
            if p99:
                print(
                    f"{name} (load probe {'on' if probing else 'off'}): p99 median "
                    f"{statistics.median(p99):.1f} ms, max {max(p99):.1f} ms, "
                    f"runs over 100 ms: {sum(p > 100 for p in p99)} of {len(p99)}"
                )


if __name__ != "__main__" and os.environ.get(LOG_ENV):
    app = _fastapi_app()

if __name__ == "__main__":
    main()
