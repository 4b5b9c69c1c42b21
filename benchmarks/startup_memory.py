"""Start-up time and memory with workers: `aserve --workers 4` vs `uvicorn --workers 4` on FastAPI.

    python benchmarks/startup_memory.py [--rounds N] [--workers N] [--servers aserve,uvicorn]
    make bench-startup BENCH_ARGS="--rounds 3"

For each launch: the time from starting the command to the first successful answer
(`GET /items/1`, polled every 10 ms), then, once every worker is up and the memory has
settled, the total PSS of the process tree (the sum of `Pss:` in /proc/PID/smaps_rollup of
the launched process and all its descendants). PSS splits a shared page between the
processes sharing it, so pages a forked worker shares with its supervisor are counted once.
Rounds alternate the servers; medians are reported. The issue's reference for uvicorn
--workers 4 on this app: first answer after 3.0 s, 168 MiB PSS for its six processes.
"""

import argparse
import http.client
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
    _server_env,
    free_port,
    log_tail,
    stop_server,
)
from benchmarks.workers import process_tree

APP = "benchmarks.fastapi_app:app"
SERVERS = ("aserve", "uvicorn")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def command(name, port, workers):
    common = [APP, "--host", HOST, "--port", str(port), "--workers", str(workers)]
    common += ["--no-access-log", "--log-level", "warning"]
    return [sys.executable, "-m", name, *common]


def pss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


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


def launch(name, workers, timeout, settle):
    """One launch: seconds to the first answer, then the settled PSS of the tree."""
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
        # Every worker started (supervisor + workers, at least) and the total steady: PSS
        # sampled every 0.25 s until two samples `settle` seconds apart differ by < 1%.
        samples = []
        while time.monotonic() < deadline:
            pss, count = tree_pss_kib(process.pid)
            samples.append((time.monotonic(), pss, count))
            old = [s for s in samples if s[0] <= samples[-1][0] - settle]
            if count >= workers + 1 and old and abs(pss - old[-1][1]) < 0.01 * pss:
                break
            time.sleep(0.25)
        else:
            return {"ok": False, "error": f"memory did not settle: {samples[-3:]}"}
        _, pss, count = samples[-1]
        return {
            "ok": True,
            "first_answer_s": round(first_answer, 3),
            "settled_after_s": round(samples[-1][0] - started, 2),
            "pss_mib": round(pss / 1024, 1),
            "processes": count,
        }
    finally:
        stop_server(server)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds PSS must hold")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    if set(servers) - set(SERVERS):
        parser.error(f"servers are {', '.join(SERVERS)}")
    deps.ensure_python_packages()
    runs = []
    for round_number in range(1, args.rounds + 1):
        shift = (round_number - 1) % len(servers)
        for name in servers[shift:] + servers[:shift]:
            record = {"round": round_number, "server": name}
            record.update(launch(name, args.workers, args.timeout, args.settle))
            runs.append(record)
            if record["ok"]:
                print(
                    f"  [round {round_number}] {name:<8} first answer "
                    f"{record['first_answer_s']:.2f} s  PSS {record['pss_mib']:.1f} MiB "
                    f"({record['processes']} processes, settled at "
                    f"{record['settled_after_s']:.1f} s)",
                    flush=True,
                )
            else:
                print(f"  [round {round_number}] {name:<8} FAILED: {record['error']}", flush=True)
    summary = {}
    for name in servers:
        good = [r for r in runs if r["server"] == name and r["ok"]]
        if good:
            summary[name] = {
                "first_answer_s": statistics.median(r["first_answer_s"] for r in good),
                "pss_mib": statistics.median(r["pss_mib"] for r in good),
                "processes": statistics.median(r["processes"] for r in good),
                "runs": len(good),
            }
    print(f"\nFastAPI app, --workers {args.workers}, median of {args.rounds} launch(es)")
    print(f"{'server':<9} {'first answer':>13} {'PSS total':>11} {'processes':>10}")
    for name, row in summary.items():
        print(
            f"{name:<9} {row['first_answer_s']:>11.2f} s {row['pss_mib']:>7.1f} MiB "
            f"{row['processes']:>10g}"
        )
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"startup-memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    settings = {k: v for k, v in vars(args).items() if k != "output_dir"}
    path.write_text(json.dumps({"settings": settings, "runs": runs, "summary": summary}, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
