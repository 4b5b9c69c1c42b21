"""Start-up time and memory with workers: `aserve --workers 4` (with and without `--preload`)
vs `uvicorn --workers 4` on FastAPI.

    python benchmarks/startup_memory.py [--rounds N] [--workers N] [--requests N]
                                        [--servers aserve,aserve-preload,uvicorn]
    make bench-startup BENCH_ARGS="--rounds 3"

For each launch: the time from starting the command to the first successful answer
(`GET /items/1`, polled every 10 ms), then, once every worker is up and the memory has
settled, the total PSS of the process tree (the sum of `Pss:` in /proc/PID/smaps_rollup of
the launched process and all its descendants). PSS splits a shared page between the
processes sharing it, so pages a forked worker shares with its supervisor are counted once.
Then `--requests` requests over 8 keep-alive connections (spread over the workers) and the
settled PSS again: serving touches inherited objects (reference counts), which copies
their pages, so the idle figure alone flatters a preload. Last, `GET /gc` (a full garbage
collection) in every worker and the settled PSS once more: a worker's first full collection
writes to the header of every object it tracks, inherited ones included, unless the
supervisor froze them (`gc.freeze()`, which `--preload` does). The CPU figures are utime +
stime of the whole process tree, at the first answer and once every worker is up: on a busy
machine they hold steadier than the wall-clock time. Rounds alternate the servers; medians
are reported. The issue's reference for uvicorn --workers 4 on this app: first answer after
3.0 s, 168 MiB PSS for its six processes.
"""

import argparse
import compileall
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import deps
from benchmarks.servers import (
    HOST,
    REPO_ROOT,
    RunningServer,
    _server_env,
    free_port,
    log_tail,
    stop_server,
)
from benchmarks.workers import cpu_seconds, process_tree

APP = "benchmarks.fastapi_app:app"
SERVERS = ("aserve", "aserve-preload", "uvicorn")
CLIENTS = 8
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def command(name, port, workers):
    common = [APP, "--host", HOST, "--port", str(port), "--workers", str(workers)]
    common += ["--no-access-log", "--log-level", "warning"]
    if name == "aserve-preload":
        return [sys.executable, "-m", "aserve", *common, "--preload"]
    return [sys.executable, "-m", name, *common]


def pss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_cpu_seconds(pid):
    """utime + stime of `pid` and its live descendants, in seconds."""
    return sum(cpu_seconds(process_tree(pid)).values())


def tree_pss_kib(pid):
    members = process_tree(pid)
    return sum(pss_kib(member) for member in members), len(members)


def answers(port):
    conn = http.client.HTTPConnection(HOST, port, timeout=1.0)
    try:
        conn.request("GET", "/items/1")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def load(port, requests):
    """`requests` GETs over CLIENTS keep-alive connections; the number that failed."""
    failed = []

    def client(count):
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            for _ in range(count):
                conn.request("GET", "/items/1?q=x")
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failed.append(response.status)
        except OSError as exc:
            failed.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(requests // CLIENTS,)) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(failed)


def collect_everywhere(port, workers):
    """GET /gc (a full garbage collection) until every worker has answered; True if all did."""
    pids = set()
    for _ in range(50 * workers):
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        try:
            conn.request("GET", "/gc", headers={"connection": "close"})
            pids.add(json.loads(conn.getresponse().read())["pid"])
        except (OSError, ValueError, KeyError):
            return False
        finally:
            conn.close()
        if len(pids) >= workers:
            return True
    return False


def settled_pss(pid, workers, deadline, settle):
    """PSS of the tree once every process is up and two samples `settle` s apart agree (1%)."""
    samples = []
    while time.monotonic() < deadline:
        pss, count = tree_pss_kib(pid)
        samples.append((time.monotonic(), pss, count))
        old = [s for s in samples if s[0] <= samples[-1][0] - settle]
        if count >= workers + 1 and old and abs(pss - old[-1][1]) < 0.01 * pss:
            return samples[-1]
        time.sleep(0.25)
    return None


def launch(name, workers, timeout, settle, requests):
    """One launch: seconds to the first answer, the settled PSS of the tree, and after load."""
    port = free_port()
    fd, log_name = tempfile.mkstemp(prefix=f"bench-startup-{name}-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(
            command(name, port, workers),
            cwd=REPO_ROOT,
            env=_server_env(name),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(name, APP, port, process, Path(log_name))
    try:
        deadline = started + timeout
        while not answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                return {"ok": False, "error": f"no answer{log_tail(server.log_path)}"}
            time.sleep(0.01)
        first_answer = time.monotonic() - started
        cpu_first = tree_cpu_seconds(process.pid)
        # Every worker started (supervisor + workers, at least) and the total steady: PSS
        # sampled every 0.25 s until two samples `settle` seconds apart differ by < 1%.
        idle = settled_pss(process.pid, workers, deadline, settle)
        if idle is None:
            return {"ok": False, "error": "memory did not settle"}
        record = {
            "ok": True,
            "first_answer_s": round(first_answer, 3),
            "cpu_first_answer_s": round(cpu_first, 2),
            "cpu_all_started_s": round(tree_cpu_seconds(process.pid), 2),
            "settled_after_s": round(idle[0] - started, 2),
            "pss_mib": round(idle[1] / 1024, 1),
            "processes": idle[2],
        }
        if requests:
            failed = load(port, requests)
            loaded = settled_pss(process.pid, workers, time.monotonic() + timeout, settle)
            if failed or loaded is None:
                return {"ok": False, "error": f"{failed} failed requests, or no settled PSS"}
            record["pss_loaded_mib"] = round(loaded[1] / 1024, 1)
            if not collect_everywhere(port, workers):
                return {"ok": False, "error": "GET /gc did not reach every worker"}
            collected = settled_pss(process.pid, workers, time.monotonic() + timeout, settle)
            if collected is None:
                return {"ok": False, "error": "no settled PSS after the collections"}
            record["pss_collected_mib"] = round(collected[1] / 1024, 1)
        return record
    finally:
        stop_server(server)


# (key, heading, format) of each figure, as the table shows them.
COLUMNS = (
    ("first_answer_s", "first answer", "{:.2f} s"),
    ("cpu_first_answer_s", "CPU to it", "{:.2f} s"),
    ("cpu_all_started_s", "CPU, all up", "{:.2f} s"),
    ("pss_mib", "PSS idle", "{:.1f} MiB"),
    ("pss_loaded_mib", "after load", "{:.1f} MiB"),
    ("pss_collected_mib", "after gc", "{:.1f} MiB"),
    ("processes", "processes", "{:g}"),
)


def _header():
    return " ".join(f"{heading:>12}" for _, heading, _ in COLUMNS)


def _cells(row):
    return " ".join(f"{fmt.format(row[key]) if key in row else '-':>12}" for key, _, fmt in COLUMNS)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds PSS must hold")
    parser.add_argument(
        "--requests",
        type=int,
        default=4000,
        help="requests before the second PSS (0: no second and third PSS)",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    if set(servers) - set(SERVERS):
        parser.error(f"servers are {', '.join(SERVERS)}")
    deps.ensure_python_packages()
    # Bytecode for aserve's source and the app, as a wheel install has it (pip compiles what it
    # installs, uvicorn and FastAPI included). An editable install under PYTHONDONTWRITEBYTECODE
    # would compile every aserve module again at each launch: 25-30% of aserve's import time.
    for directory in (REPO_ROOT / "src", REPO_ROOT / "benchmarks"):
        compileall.compile_dir(directory, quiet=1)
    runs = []
    for round_number in range(1, args.rounds + 1):
        shift = (round_number - 1) % len(servers)
        for name in servers[shift:] + servers[:shift]:
            record = {"round": round_number, "server": name}
            record.update(launch(name, args.workers, args.timeout, args.settle, args.requests))
            runs.append(record)
            if record["ok"]:
                print(f"  [round {round_number}] {name:<14} {_cells(record)}", flush=True)
            else:
                print(f"  [round {round_number}] {name:<14} FAILED: {record['error']}", flush=True)
    summary = {}
    for name in servers:
        good = [r for r in runs if r["server"] == name and r["ok"]]
        if good:
            summary[name] = {
                key: statistics.median(r[key] for r in good)
                for key, _, _ in COLUMNS
                if key in good[0]
            }
            summary[name]["runs"] = len(good)
    print(f"\nFastAPI app, --workers {args.workers}, median of {args.rounds} launch(es)")
    print(f"{'':<15} {_header()}")
    for name, row in summary.items():
        print(f"{name:<15} {_cells(row)}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"startup-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    settings = {k: v for k, v in vars(args).items() if k != "output_dir"}
    path.write_text(json.dumps({"settings": settings, "runs": runs, "summary": summary}, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
