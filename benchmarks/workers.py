"""Workers: CPU per request, one process vs workers under a supervisor (aserve, uvicorn, granian).

    python benchmarks/workers.py [--rounds N] [--duration SECONDS] [--workers 0,1,2]
    python benchmarks/workers.py --instructions      # callgrind: load-independent counts
    make bench-workers BENCH_ARGS="--rounds 3 --duration 5"

Issue 10 asks that a worker under the supervisor cost no more CPU per request than one
process without it. Each server runs the hello app as one process (`--workers 0` here: no
flag, no supervisor) and with `--workers 1` and `2` (uvicorn with httptools and uvloop: its
`--workers 1` is one process, so it is run once; granian with uvloop, which always runs a
main process and workers), unpinned; wrk runs on core 1 with 64 keep-alive connections.

Two ways to count the cost of a request:

- Default: requests per CPU-second. wrk's request count over the CPU time (utime + stime from
  /proc) of the whole server process tree during the load window, the supervisor included
  (its share is reported apart). When `perf` can count the `raw_syscalls:sys_enter`
  tracepoint, syscalls and context switches per request are reported too: they show how
  many requests each event-loop wake-up serves. CPU time depends on the machine's load (a
  busy core serves more requests per wake-up, caches are shared), so rounds are interleaved
  (every variant once per round, the order rotating) and medians reported.
- `--instructions`: instructions per request under callgrind (`valgrind --tool=callgrind
  --trace-children=yes`), which do not depend on what else runs. Each variant runs twice,
  with a short and a long load window; the difference in instructions over the difference in
  requests cancels start-up and shutdown. Under callgrind every server is saturated, so this
  counts the work per request at full batching; it is slow (a minute or more per variant).

Results go to benchmarks/results/workers-*.json (instructions-*.json with --instructions).
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
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
SERVERS = ("aserve", "uvicorn", "granian")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PERF_EVENTS = ("task-clock", "context-switches", "raw_syscalls:sys_enter")


class Variant:
    """A server and its process model: `workers` 0 is one process with no `--workers` flag."""

    def __init__(self, server, workers):
        self.server = server
        self.workers = workers

    @property
    def label(self):
        return self.server if self.workers == 0 else f"{self.server} -w{self.workers}"

    @property
    def description(self):
        if self.workers == 0:
            return f"{self.server}, one process"
        return f"{self.server} `--workers {self.workers}`"


def variants(servers, worker_counts):
    """Every server with every worker count, less those that do not exist or repeat one."""
    found = []
    for server in servers:
        for workers in worker_counts:
            if server == "granian" and workers == 0:
                continue  # granian always runs a main process and workers
            if server == "uvicorn" and workers == 1:
                continue  # uvicorn --workers 1 is one process: the same as no flag
            found.append(Variant(server, workers))
    return found


def command(variant, port, slow=False):
    """The server's command line; `slow` (under callgrind) keeps slow workers from being
    killed as unresponsive by the supervisor's health check."""
    python = sys.executable
    name = variant.server
    common = ["--host", HOST, "--port", str(port), "--no-access-log", "--log-level", "warning"]
    workers = ["--workers", str(variant.workers)] if variant.workers else []
    if slow and variant.workers and name in ("aserve", "uvicorn"):
        workers += ["--timeout-worker-healthcheck", "600"]
    if name == "aserve":
        return [python, "-m", "aserve", APP, *common, *workers]
    if name == "uvicorn":
        return [
            *[python, "-m", "uvicorn", APP, *common, *workers],
            *["--http", "httptools", "--loop", "uvloop"],
        ]
    if name == "granian":
        return [
            *[python, "-m", "granian", "--interface", "asgi", *common],
            *["--workers", str(variant.workers), "--loop", "uvloop", APP],
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


def cpu_seconds(pids):
    """utime + stime of each of `pids` (threads included), in seconds."""
    seconds = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15
    return seconds


def perf_works():
    """Can `perf stat` count the syscall tracepoint here (root, or a low perf_event_paranoid)?"""
    if shutil.which("perf") is None:
        return False
    done = subprocess.run(
        ["perf", "stat", "-x,", "-e", ",".join(PERF_EVENTS), "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0 and "not supported" not in done.stderr and "<not" not in done.stderr


class Server:
    """One server started the way servers.py starts them, but with this script's command."""

    def __init__(self, variant, timeout, wrapper=(), env=None):
        port = free_port()
        fd, log_name = tempfile.mkstemp(prefix=f"bench-workers-{variant.server}-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            process = subprocess.Popen(
                [*wrapper, *command(variant, port, slow=bool(wrapper))],
                cwd=REPO_ROOT,
                env={**_server_env(variant.server), **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.variant = variant
        self.running = RunningServer(variant.label, APP, port, process, Path(log_name))
        self.url = f"http://{HOST}:{port}/"
        try:
            wait_until_ready(self.running, timeout)
        except ServerError:
            stop_server(self.running)
            raise

    def measure(self, connections, duration, warmup, perf, script=None):
        # The warm-up also gives every worker time to start (the first answer needs only one).
        load = {"connections": connections, "core": LOAD_CORE, "script": script}
        if warmup:
            run_wrk(self.url, duration=warmup, **load)
        root = self.running.process.pid
        pids = process_tree(root)
        counter = None
        if perf:
            fd, perf_name = tempfile.mkstemp(prefix="bench-workers-perf-", suffix=".csv")
            os.close(fd)
            counter = subprocess.Popen(
                [
                    *["perf", "stat", "-x,", "-o", perf_name, "-e", ",".join(PERF_EVENTS)],
                    *["-p", ",".join(map(str, pids))],
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.3)  # attached before the load starts
        before = cpu_seconds(pids)
        result = run_wrk(self.url, duration=duration, **load)
        after = cpu_seconds(pids)
        per_process = {pid: after[pid] - before[pid] for pid in before if pid in after}
        cpu = sum(per_process.values())
        requests = result["requests"]
        record = {
            "requests": requests,
            "rps": result["value"],
            "cpu_seconds": round(cpu, 3),
            "requests_per_cpu_second": requests / cpu if cpu > 0 else None,
            "processes": len(pids),
            # The first process is the supervisor (the server itself when it is one process).
            "root_cpu_share": per_process.get(root, 0.0) / cpu if cpu > 0 else None,
            "cpu_seconds_by_process": [round(per_process.get(pid, 0.0), 3) for pid in pids],
            "errors": {key: value for key, value in result["errors"].items() if value},
        }
        if counter is not None:
            counter.send_signal(signal.SIGINT)  #: perf writes its counts and exits
            counter.wait(timeout=10)
            record.update(_perf_counts(Path(perf_name), requests))
        return record

    def stop(self):
        stop_server(self.running)

    def stop_gracefully(self, timeout=120.0):
        """SIGTERM and a long wait: under callgrind each process writes its counts as it exits."""
        process = self.running.process
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
        stop_server(self.running)


def _perf_counts(path, requests):
    counts = {}
    try:
        for line in path.read_text().splitlines():
            fields = line.split(",")
            if (
                len(fields) > 2
                and fields[2] in PERF_EVENTS
                and fields[0].replace(".", "").isdigit()
            ):
                counts[fields[2]] = float(fields[0])
    finally:
        path.unlink(missing_ok=True)
    if not requests or len(counts) < len(PERF_EVENTS):
        return {}
    return {
        "syscalls_per_request": counts["raw_syscalls:sys_enter"] / requests,
        "context_switches_per_request": counts["context-switches"] / requests,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=int, default=5, help="seconds of load (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of discarded load")
    parser.add_argument(
        "--workers",
        default="0,1,2",
        help="comma-separated worker counts; 0 = one process, no --workers (default 0,1,2)",
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument(
        "--new-connections",
        action="store_true",
        help="a new connection per request (Connection: close): the cost of accepting",
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset")
    parser.add_argument("--start-timeout", type=float, default=20.0)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under callgrind instead of CPU time",
    )
    parser.add_argument(
        "--no-perf", action="store_true", help="do not count syscalls with perf stat"
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    args.servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = sorted(set(args.servers) - set(SERVERS))
    if unknown:
        parser.error(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(SERVERS)}")
    try:
        args.workers = [int(count) for count in args.workers.split(",") if count.strip()]
    except ValueError:
        parser.error(f"--workers takes comma-separated numbers, not {args.workers!r}")
    if not args.workers or min(args.workers) < 0:
        parser.error("--workers needs counts of 0 or more")
    return args


def script(args):
    return "close.lua" if args.new_connections else None


def workload(args):
    kind = "a new connection per request" if args.new_connections else "keep-alive"
    return f"hello, {args.connections} connections, {kind}"


def run_rounds(args, chosen):
    perf = not args.no_perf and perf_works()
    if not perf and not args.no_perf:
        print("(perf stat cannot count syscalls here: CPU time only)", flush=True)
    runs = []
    for round_number in range(1, args.rounds + 1):
        shift = (round_number - 1) % len(chosen)
        for variant in chosen[shift:] + chosen[:shift]:
            record = {
                "round": round_number,
                "server": variant.label,
                "loadavg_1m": os.getloadavg()[0],
            }
            try:
                server = Server(variant, args.start_timeout)
            except ServerError as exc:
                record.update(ok=False, error=str(exc))
            else:
                try:
                    record.update(
                        server.measure(
                            args.connections, args.duration, args.warmup, perf, script(args)
                        )
                    )
                    record["ok"] = record["requests_per_cpu_second"] is not None
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    record.update(ok=False, error=str(exc))
                finally:
                    server.stop()
            runs.append(record)
            print_run(record)
    return runs


def print_run(record):
    head = f"  [round {record['round']}] {record['server']:<11}"
    if not record["ok"]:
        print(f"{head} FAILED: {(record.get('error') or '?').splitlines()[0]}", flush=True)
        return
    extra = ""
    if "syscalls_per_request" in record:
        extra = (
            f"  {record['syscalls_per_request']:.2f} syscalls/req"
            f"  {record['context_switches_per_request']:.3f} cs/req"
        )
    split = "/".join(f"{seconds:.2f}" for seconds in record["cpu_seconds_by_process"])
    print(
        f"{head} {record['requests_per_cpu_second']:>9,.0f} req/CPU-s  "
        f"{record['rps']:>9,.0f} req/s  CPU-s {split}{extra}"
        + (f"  errors {record['errors']}" if record["errors"] else ""),
        flush=True,
    )


def summarize(runs, chosen):
    summary = {}
    for variant in chosen:
        good = [r for r in runs if r["server"] == variant.label and r["ok"]]
        if not good:
            continue
        row = {
            "description": variant.description,
            "requests_per_cpu_second": statistics.median(
                r["requests_per_cpu_second"] for r in good
            ),
            "rps": statistics.median(r["rps"] for r in good),
            "runs": len(good),
            "errors": sum(sum(r["errors"].values()) for r in good),
        }
        if variant.workers:
            row["supervisor_cpu_share"] = statistics.median(r["root_cpu_share"] for r in good)
        for key in ("syscalls_per_request", "context_switches_per_request"):
            if all(key in r for r in good):
                row[key] = statistics.median(r[key] for r in good)
        summary[variant.label] = row
    _ratios(summary, "requests_per_cpu_second")
    return summary


def _ratios(summary, key):
    """Each row against aserve as one process (what issue 10 compares a worker with)."""
    base_row = summary.get("aserve") or next(iter(summary.values()), {})
    base = base_row.get(key)
    for row in summary.values():
        row["vs_aserve"] = row[key] / base if base else None


def format_table(summary, args):
    lines = [
        f"{workload(args)}, median of {args.rounds} round(s) "
        f"x {args.duration}s; ratios to one aserve process",
        f"{'variant':<12} {'req/CPU-s':>10} {'vs aserve':>10} {'req/s':>9} "
        f"{'superv.':>8} {'sysc/req':>9} {'cs/req':>7} {'runs':>5}",
    ]
    for name, row in summary.items():
        ratio = f"{row['vs_aserve']:.2f}" if row["vs_aserve"] else "-"
        share = row.get("supervisor_cpu_share")
        syscalls = row.get("syscalls_per_request")
        switches = row.get("context_switches_per_request")
        lines.append(
            f"{name:<12} {row['requests_per_cpu_second']:>10,.0f} {ratio:>10} "
            f"{row['rps']:>9,.0f} {'-' if share is None else f'{share:.1%}':>8} "
            f"{'-' if syscalls is None else f'{syscalls:.2f}':>9} "
            f"{'-' if switches is None else f'{switches:.3f}':>7} {row['runs']:>5}"
            + ("  !" if row["errors"] else "")
        )
    return "\n".join(lines)


# --- instructions per request under callgrind -------------------------------------------


def callgrind_run(variant, args, duration, directory):
    """Whole-life instructions of every process of one server run under callgrind."""
    directory.mkdir(parents=True, exist_ok=True)
    # Unpinned: with every process on one core, two workers under callgrind took 153k
    # instructions per request (switching between them on every wake-up), one 40-53k.
    wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--trace-children=yes",
        f"--callgrind-out-file={directory}/callgrind.out.%p",
    ]
    # A fixed hash seed: the same dict layouts, hence the same work, in both runs.
    server = Server(variant, args.start_timeout * 10, wrapper, env={"PYTHONHASHSEED": "0"})
    try:
        # A warm-up long enough for every worker to start under callgrind (the first answer
        # needs only one), so the counted window reconnects to all of them.
        load = {"connections": args.connections, "core": LOAD_CORE, "script": script(args)}
        run_wrk(server.url, duration=5, **load)
        result = run_wrk(server.url, duration=duration, **load)
    finally:
        server.stop_gracefully()
    by_process = {}
    for path in directory.glob("callgrind.out.*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                by_process[path.suffix.lstrip(".")] = int(line.split()[1])
                break
    return result["requests"], by_process


def measure_instructions(args, chosen):
    if shutil.which("valgrind") is None:
        sys.exit("error: --instructions needs valgrind (apt-get install valgrind)")
    # Under callgrind a server does a few hundred requests a second: the long window must
    # hold many more requests than the short one for the difference to be accurate.
    short, long = 3, 3 + 3 * args.duration
    summary = {}
    with tempfile.TemporaryDirectory(prefix="bench-workers-callgrind-") as scratch:
        for variant in chosen:
            counts = []
            for duration in (short, long):
                directory = Path(scratch) / f"{variant.label.replace(' ', '')}-{duration}"
                try:
                    counts.append(callgrind_run(variant, args, duration, directory))
                except (ServerError, RuntimeError, OSError) as exc:
                    print(f"  {variant.label}: FAILED: {str(exc).splitlines()[0]}", flush=True)
                    break
            if len(counts) < 2 or counts[1][0] <= counts[0][0]:
                continue
            (requests_a, ir_a), (requests_b, ir_b) = counts
            requests = requests_b - requests_a
            per_request = (sum(ir_b.values()) - sum(ir_a.values())) / requests
            summary[variant.label] = {
                "description": variant.description,
                "instructions_per_request": per_request,
                "requests": [requests_a, requests_b],
                "instructions_by_process": [ir_a, ir_b],
            }
            print(f"  {variant.label:<12} {per_request:>9,.0f} instructions/request", flush=True)
    _ratios(summary, "instructions_per_request")
    return summary


def format_instructions(summary, args):
    lines = [
        f"{workload(args)}: instructions per request under callgrind (all processes); "
        "ratios to one aserve process",
        f"{'variant':<12} {'instr/req':>10} {'vs aserve':>10}",
    ]
    for name, row in summary.items():
        ratio = f"{row['vs_aserve']:.2f}" if row["vs_aserve"] else "-"
        lines.append(f"{name:<12} {row['instructions_per_request']:>10,.0f} {ratio:>10}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    deps.ensure_wrk()
    deps.ensure_python_packages()
    chosen = variants(args.servers, args.workers)
    started = time.monotonic()
    if args.instructions:
        runs = None
        summary = measure_instructions(args, chosen)
        table, prefix = format_instructions(summary, args), "instructions"
    else:
        runs = run_rounds(args, chosen)
        summary = summarize(runs, chosen)
        table, prefix = format_table(summary, args), "workers"
    print("\n" + table)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
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
