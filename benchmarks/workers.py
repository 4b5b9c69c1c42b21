"""Workers: requests per CPU-second of all server processes together, aserve vs uvicorn vs granian.

    python benchmarks/workers.py [--rounds N] [--duration SECONDS] [--workers N]
    make bench-workers BENCH_ARGS="--rounds 3 --duration 5"

Each server runs the hello app with `--workers 2` (uvicorn with httptools and uvloop, granian
with uvloop), unpinned; wrk runs on core 1. On a two-core machine that also runs the load
generator, requests per second with two workers says little, so the figure is requests per
CPU-second: wrk's request count over the CPU time (utime + stime from /proc) that the whole
server process tree used during the load window. `aserve-1` is aserve as one process with
no supervisor: a worker under the supervisor must cost no more CPU per request than that.
Rounds are interleaved (every server once per round, the order rotating); medians are
reported with ratios to aserve. Results go to benchmarks/results/workers-*.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import deps
from benchmarks.servers import (
    HOST,
    REPO_ROOT,
    RunningServer,
    ServerError,
    _server_env,
    free_port,
    stop_server,
    wait_until_ready,
)
from benchmarks.wrk import run_wrk

LOAD_CORE = 1
APP = "benchmarks.apps:hello"
SERVERS = ("aserve", "uvicorn", "granian", "aserve-1")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def command(name, port, workers):
    python = sys.executable
    common = ["--host", HOST, "--port", str(port), "--no-access-log", "--log-level", "warning"]
    if name == "aserve":
        return [python, "-m", "aserve", APP, *common, "--workers", str(workers)]
    if name == "aserve-1":
        return [python, "-m", "aserve", APP, *common]
    if name == "uvicorn":
        return [
            *[python, "-m", "uvicorn", APP, *common, "--workers", str(workers)],
            *["--http", "httptools", "--loop", "uvloop"],
        ]
    if name == "granian":
        return [
            *[python, "-m", "granian", "--interface", "asgi", *common],
            *["--workers", str(workers), "--loop", "uvloop", APP],
        ]
    raise ValueError(f"unknown server {name!r}")


def process_tree(pid):
    """`pid` and every descendant, from /proc/PID/task/*/children."""
    found, pending = [], [pid]
    while pending and len(found) < 256:
        current = pending.pop()
        if current in found:
            continue
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending += [int(child) for child in task.read_text().split()]
            except OSError:
                continue
    return found


def cpu_seconds(pid):
    """utime + stime of `pid` and its descendants (threads included), in seconds."""
    ticks = 0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / CLOCK_TICKS


class Server:
    """One server started the way servers.py starts them, but with this script's command."""

    def __init__(self, name, workers, timeout):
        port = free_port()
        fd, log_name = tempfile.mkstemp(prefix=f"bench-workers-{name}-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            process = subprocess.Popen(
                command(name, port, workers),
                cwd=REPO_ROOT,
                env=_server_env("aserve" if name.startswith("aserve") else name),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running = RunningServer(name, APP, port, process, Path(log_name))
        try:
            wait_until_ready(self.running, timeout)
        except ServerError:
            stop_server(self.running)
            raise

    def measure(self, connections, duration, warmup):
        url = f"http://{HOST}:{self.running.port}/"
        if warmup:
            run_wrk(url, connections=connections, duration=warmup, core=LOAD_CORE)
        pid = self.running.process.pid
        processes = len(process_tree(pid))
        before = cpu_seconds(pid)
        result = run_wrk(url, connections=connections, duration=duration, core=LOAD_CORE)
        cpu = cpu_seconds(pid) - before
        errors = {key: value for key, value in result["errors"].items() if value}
        return {
            "requests": result["requests"],
            "rps": result["value"],
            "cpu_seconds": round(cpu, 3),
            "requests_per_cpu_second": result["requests"] / cpu if cpu > 0 else None,
            "processes": processes,
            "errors": errors,
        }

    def stop(self):
        stop_server(self.running)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=int, default=5, help="seconds of load (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of discarded load")
    parser.add_argument("--workers", type=int, default=2, help="workers per server (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    parser.add_argument("--start-timeout", type=float, default=20.0)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = sorted(set(args.servers) - set(SERVERS))
    if unknown:
        parser.error(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(SERVERS)}")
    return args


def run_rounds(args):
    runs = []
    for round_number in range(1, args.rounds + 1):
        shift = (round_number - 1) % len(args.servers)
        order = args.servers[shift:] + args.servers[:shift]
        for name in order:
            record = {"round": round_number, "server": name, "loadavg_1m": os.getloadavg()[0]}
            try:
                server = Server(name, args.workers, args.start_timeout)
            except ServerError as exc:
                record.update(ok=False, error=str(exc))
            else:
                try:
                    record.update(server.measure(args.connections, args.duration, args.warmup))
                    record["ok"] = record["requests_per_cpu_second"] is not None
                except (RuntimeError, OSError) as exc:
                    record.update(ok=False, error=str(exc))
                finally:
                    server.stop()
            runs.append(record)
            print_run(record)
    return runs


def print_run(record):
    head = f"  [round {record['round']}] {record['server']:<9}"
    if not record["ok"]:
        print(f"{head} FAILED: {record.get('error', '').splitlines()[0]}", flush=True)
        return
    print(
        f"{head} {record['requests_per_cpu_second']:>9,.0f} req/CPU-s  "
        f"{record['rps']:>9,.0f} req/s  {record['cpu_seconds']:.2f} CPU-s  "
        f"{record['processes']} processes"
        + (f"  errors {record['errors']}" if record["errors"] else ""),
        flush=True,
    )


def summarize(runs, servers):
    summary = {}
    for name in servers:
        good = [r for r in runs if r["server"] == name and r["ok"]]
        if not good:
            continue
        summary[name] = {
            "requests_per_cpu_second": statistics.median(
                r["requests_per_cpu_second"] for r in good
            ),
            "rps": statistics.median(r["rps"] for r in good),
            "runs": len(good),
            "errors": sum(sum(r["errors"].values()) for r in good),
        }
    # The ratio is to aserve with workers, or to one aserve process when that is all there is.
    base_row = summary.get("aserve") or summary.get("aserve-1") or {}
    base = base_row.get("requests_per_cpu_second")
    for row in summary.values():
        row["vs_aserve"] = row["requests_per_cpu_second"] / base if base else None
    return summary


def format_table(summary, args):
    lines = [
        f"hello, --workers {args.workers}, {args.connections} connections, "
        f"median of {args.rounds} round(s) x {args.duration}s",
        f"{'server':<10} {'req/CPU-s':>10} {'vs aserve':>10} {'req/s':>9} {'runs':>5}",
    ]
    for name, row in summary.items():
        ratio = f"{row['vs_aserve']:.2f}" if row["vs_aserve"] else "-"
        lines.append(
            f"{name:<10} {row['requests_per_cpu_second']:>10,.0f} {ratio:>10} "
            f"{row['rps']:>9,.0f} {row['runs']:>5}" + ("  !" if row["errors"] else "")
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    deps.ensure_wrk()
    deps.ensure_python_packages()
    started = time.monotonic()
    runs = run_rounds(args)
    summary = summarize(runs, args.servers)
    table = format_table(summary, args)
    print("\n" + table)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"workers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    settings = {k: v for k, v in vars(args).items() if k != "output_dir"}
    payload = {
        "settings": settings,
        "python": sys.version.split()[0],
        "elapsed_seconds": round(time.monotonic() - started, 1),
        "runs": runs,
        "summary": summary,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
