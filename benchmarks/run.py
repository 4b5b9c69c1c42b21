"""aserve vs uvicorn vs granian (and hypercorn on HTTP/2): interleaved rounds, medians, table,
JSON, PNG.

    python benchmarks/run.py [--rounds N] [--duration SECONDS] [--quick]

Each server runs one worker pinned to core 0 (taskset -c 0); wrk, h2load and the other
load clients run on core 1. uvicorn runs once per backend (httptools and zttp; the three
WebSocket implementations on the echo) and aserve is compared with the best of them on each
workload. Results go to benchmarks/results/.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import deps, report
from benchmarks.h2load import run_h2load
from benchmarks.idle import idle_memory, raise_nofile_limit
from benchmarks.servers import (
    HOST,
    OPTIONAL_SERVERS,
    REPO_ROOT,
    SERVERS,
    UVICORN_VARIANTS,
    ServerError,
    Unsupported,
    log_tail,
    make_tls_files,
    start_server,
    stop_server,
    variants,
)
from benchmarks.workloads import WORKLOADS, check_response
from benchmarks.wrk import run_wrk

SERVER_CORE, LOAD_CORE = 0, 1
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1 (wrk takes whole seconds)")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=5, help="interleaved rounds (default 5)"
    )
    parser.add_argument(
        "--duration", type=positive_int, default=5, help="seconds of load per workload (default 5)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="seconds of warm-up load after each server start (default 1)",
    )
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=5000,
        help="connections held open by the memory test (default 5000)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round, 2 s per workload, 1000 idle connections",
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="comma-separated, from "
        + ",".join(SERVERS + OPTIONAL_SERVERS + UVICORN_VARIANTS)
        + " (aserve-py: aserve's hot path as Python source; uvicorn: each of its backends,"
        " uvicorn-BACKEND: that one only; hypercorn runs the HTTP/2 workloads only)",
    )
    parser.add_argument(
        "--workloads", default="", help="comma-separated subset of workload names (default: all)"
    )
    parser.add_argument("--start-timeout", type=float, default=10.0)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 1
        args.idle_connections = min(args.idle_connections, 1000)
    return args


def select(names, available, what):
    chosen = [n.strip() for n in names.split(",") if n.strip()] or list(available)
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        sys.exit(f"error: unknown {what}: {', '.join(unknown)} (known: {', '.join(available)})")
    return chosen


def selected_workloads(args):
    names = select(args.workloads, [w.name for w in WORKLOADS], "workload")
    return [
        dataclasses.replace(w, connections=args.idle_connections) if w.kind == "memory" else w
        for w in WORKLOADS
        if w.name in names
    ]


def group_by_start(workloads):
    """Consecutive lists of workloads that share one server start (same app and kind)."""
    groups = {}
    for workload in workloads:
        groups.setdefault(workload.start_key, []).append(workload)
    return list(groups.values())


def prepare_machine(idle_connections):
    """Check the two cores, move this process to the load core, raise the fd limit."""
    cores = os.sched_getaffinity(0)
    if not {SERVER_CORE, LOAD_CORE} <= cores:
        sys.exit(f"error: need CPU cores {SERVER_CORE} and {LOAD_CORE}, have {sorted(cores)}")
    os.sched_setaffinity(0, {LOAD_CORE})
    limit = raise_nofile_limit(max(65536, 2 * idle_connections + 1024))
    if limit < idle_connections + 256:
        sys.exit(f"error: RLIMIT_NOFILE {limit} is too low for {idle_connections} connections")


def measure_h2(workload, port, duration):
    scheme = "https" if workload.tls else "http"
    result = run_h2load(
        f"{scheme}://{HOST}:{port}{workload.path}",
        connections=workload.connections,
        streams=workload.streams,
        duration=duration,
        core=LOAD_CORE,
        body_size=workload.body_size,
        headers=workload.headers,
    )
    if result["protocol"] not in ("h2", "h2c"):
        raise RuntimeError(f"h2load spoke {result['protocol']}, not HTTP/2")
    if not result["requests"]:
        raise RuntimeError(f"h2load completed no request: {result['errors']}")
    return result


def measure_http(workload, port, duration):
    result = run_wrk(
        f"http://{HOST}:{port}{workload.path}",
        connections=workload.connections,
        duration=duration,
        core=LOAD_CORE,
        script=workload.script,
        script_args=workload.script_args,
    )
    if not result["requests"]:
        raise RuntimeError(f"wrk completed no request: {result['errors']}")
    if not workload.latency:
        result["p50_ms"] = result["p99_ms"] = None
    return result


def measure_ws(workload, port, duration, warmup):
    cmd = [
        "taskset",
        "-c",
        str(LOAD_CORE),
        sys.executable,
        "-m",
        "benchmarks.wsload",
        "--port",
        str(port),
        "--connections",
        str(workload.connections),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
    ]
    done = subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=duration + warmup + 60,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ws client failed: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout)
    if not result["connections_ok"]:
        raise RuntimeError(f"no websocket connection worked: {result['first_error']}")
    return result


def measure_memory(workload, server):
    result = idle_memory(server.process.pid, server.port, workload.connections)
    if result["alive_at_measure"] < workload.connections:
        raise RuntimeError(
            f"only {result['alive_at_measure']} of {workload.connections} idle "
            f"connections were open at the measurement: {result}"
        )
    return result


def measure(workload, server, duration, warmup, tls=None):
    """Check one response, then load the server; returns the result dict."""
    if workload.kind == "ws":
        return measure_ws(workload, server.port, duration, warmup)
    problem = check_response(workload, server.port, tls)
    if problem:
        raise RuntimeError(problem)
    if workload.kind == "memory":
        return measure_memory(workload, server)
    if workload.http2:
        return measure_h2(workload, server.port, duration)
    return measure_http(workload, server.port, duration)


MEASURE_ERRORS = (RuntimeError, OSError, subprocess.SubprocessError, ValueError)


def warm_up(group, server, seconds, tls=None):
    """Discarded load on a fresh server; problems show up in the real measurement."""
    first = group[0]
    if seconds <= 0 or first.kind not in ("http", "h2"):
        return
    if check_response(first, server.port, tls) is None:
        with contextlib.suppress(*MEASURE_ERRORS):
            if first.http2:
                measure_h2(first, server.port, seconds)
            else:
                measure_http(first, server.port, seconds)


def start_group(names, group, args, round_number):
    """Start every server for `group` (all pinned to the server core; idle ones cost nothing).

    Returns ({name: server}, failure records for the servers that did not start: marked
    `unsupported` when the server cannot run this kind of workload at all).
    """
    started, failed = {}, []
    idle = group[0].connections if group[0].kind == "memory" else 0
    for name in names:
        try:
            started[name] = start_server(
                name,
                group[0].app,
                core=SERVER_CORE,
                timeout=args.start_timeout,
                kind=group[0].kind,
                idle_connections=idle,
                tls=args.tls if group[0].tls else None,
            )
        except ServerError as exc:
            unsupported = isinstance(exc, Unsupported)
            failed += [
                {
                    "round": round_number,
                    "server": name,
                    "workload": w.name,
                    "ok": False,
                    "start_failed": True,
                    "unsupported": unsupported,
                    "error": str(exc) if unsupported else f"server start failed: {exc}",
                }
                for w in group
            ]
    return started, failed


def run_group(names, group, args, round_number):
    """Measure every server on each workload of `group` back to back; return run records.

    The servers being compared run one right after the other on the same workload (seconds
    apart, not minutes), and the order rotates with the round: on a machine whose speed
    drifts, that keeps the drift out of the ratios better than a server-by-server sweep.
    """
    servers, records = start_group(names, group, args, round_number)
    tls = args.tls if group[0].tls else None
    try:
        shift = (round_number - 1) % max(len(servers), 1)
        order = list(servers)[shift:] + list(servers)[:shift]
        for name in order:
            warm_up(group, servers[name], args.warmup, tls)
        for workload in group:
            for name in order:
                server = servers[name]
                record = {
                    "round": round_number,
                    "server": name,
                    "workload": workload.name,
                    "loadavg_1m": os.getloadavg()[0],
                }
                try:
                    result = measure(workload, server, args.duration, args.warmup, tls)
                    record.update(result, ok=True)
                except MEASURE_ERRORS as exc:
                    record.update(ok=False, error=f"{exc}{log_tail(server.log_path, 6)}")
                print_progress(record, workload)
                records.append(record)
    finally:
        for server in servers.values():
            stop_server(server)
    return records


def print_progress(record, workload):
    head = f"  [round {record['round']}] {record['server']:<24} {workload.name:<14}"
    if not record["ok"]:
        print(f"{head} FAILED: {record['error'].splitlines()[0]}", flush=True)
        return
    latency = ""
    if record.get("p50_ms") is not None:
        latency = f"  p50 {record['p50_ms']:.2f} ms  p99 {record['p99_ms']:.2f} ms"
    errors = {k: v for k, v in record.get("errors", {}).items() if v}
    print(
        f"{head} {record['value']:>12,.1f} {workload.unit}{latency}"
        f"{'  errors ' + str(errors) if errors else ''}",
        flush=True,
    )


def warn_if_busy(threshold=1.0):
    load = os.getloadavg()[0]
    if load > threshold:
        print(f"warning: load average is {load:.1f}; other processes will add noise", flush=True)


def run_rounds(args, servers, workloads):
    """Interleave: every round runs every workload group on every server (see run_group).

    `servers` are families (or single uvicorn backends): each group runs the servers they
    stand for on its kind of workload (`servers.variants`)."""
    runs, broken = [], set()
    groups = group_by_start(workloads)
    for round_number in range(1, args.rounds + 1):
        print(f"round {round_number}/{args.rounds}", flush=True)
        for group in groups:
            names = [v for s in servers for v in variants(s, group[0].kind)]
            names = [n for n in dict.fromkeys(names) if (n, group[0].start_key) not in broken]
            records = run_group(names, group, args, round_number)
            for record in records:
                if record.get("start_failed") and record["workload"] == group[0].name:
                    broken.add((record["server"], group[0].start_key))
                    print(
                        f"  [round {round_number}] {record['server']:<24} {record['error']}",
                        flush=True,
                    )
            runs += records
    return runs


def write_results(args, servers, workloads, runs, elapsed):
    summary = report.summarize(runs, workloads)
    config = {
        "rounds": args.rounds,
        "duration": args.duration,
        "warmup": args.warmup,
        "quick": args.quick,
        "idle_connections": args.idle_connections,
        "servers": servers,
        "server_core": SERVER_CORE,
        "load_core": LOAD_CORE,
        "elapsed_seconds": round(elapsed, 1),
        "max_loadavg_1m": max((r["loadavg_1m"] for r in runs if "loadavg_1m" in r), default=None),
    }
    meta = report.metadata(config)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.output_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    report.save_json(stem.with_suffix(".json"), meta, workloads, runs, summary)
    title = (
        f"median of {args.rounds} round(s), {args.duration:g}s each - Python "
        f"{sys.version.split()[0]} - {meta['machine']['cpu']}"
    )
    report.save_plot(stem.with_suffix(".png"), summary, workloads, title)
    print("\n" + report.format_tables(summary, workloads, servers))
    failures = report.format_failures(summary)
    if failures:
        print("\nnot measured:\n" + failures)
    if any(cell["flagged"] for row in summary.values() for cell in row.values()):
        print("\n'!' = some runs reported socket errors / non-2xx answers (see JSON)")
    print(
        f"saved {stem.with_suffix('.json')} and {stem.with_suffix('.png')} ({elapsed / 60:.1f} min)"
    )


def main(argv=None):
    args = parse_args(argv)
    servers = select(args.servers, SERVERS + OPTIONAL_SERVERS, "server")
    workloads = selected_workloads(args)
    deps.ensure_wrk()
    if any(w.http2 for w in workloads):
        deps.ensure_h2load()
    deps.ensure_python_packages()
    prepare_machine(args.idle_connections)
    warn_if_busy()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        args.tls = make_tls_files(tmp) if any(w.tls for w in workloads) else None
        runs = run_rounds(args, servers, workloads)
    write_results(args, servers, workloads, runs, time.monotonic() - started)


if __name__ == "__main__":
    main()
