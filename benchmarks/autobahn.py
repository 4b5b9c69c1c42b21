"""WebSocket conformance: run the Autobahn TestSuite cases (via ``kosoku``) against a server.

Starts an ASGI echo server (``benchmarks/autobahn_app.py``) on a free 127.0.0.1 port, drives
it with kosoku's fuzzing client, writes the Autobahn HTML/JSON report plus ``summary.json``
under ``benchmarks/results/autobahn/<name>/``, prints counts per verdict, and always stops
the server.

Usage (from the repository root)::

    python benchmarks/autobahn.py                  # all cases, 1.* .. 13.*, against aserve
    python benchmarks/autobahn.py --quick          # all but 9.* (limits/perf), 12.*, 13.*
    python benchmarks/autobahn.py --cases '7.*' --cases 5.1
    python benchmarks/autobahn.py --name uvicorn --server-cmd \\
        'python -m uvicorn benchmarks.autobahn_app:app --port {port} \\
         --ws websockets-sansio --ws-max-size 20000000 --ws-ping-interval 0'

Disable the server's keepalive pings (``--ws-ping-interval 0``): Autobahn treats an unsolicited
ping as an unexpected event and aborts the long cases (12.*.15/16 run > 20 s, the default
interval). ``--server-cmd`` is split with shlex; ``{port}`` and ``{python}`` are substituted and a
leading ``python``/``python3`` means this interpreter. ``src/`` and the repository root are put
on the server's PYTHONPATH and it runs from the repository root.

Verdicts: a case passes when its behavior is OK, NON-STRICT or INFORMATIONAL and its close
behavior is not FAILED/UNCLEAN (WRONG CODE / FAILED BY CLIENT only fail with
``--strict-close``, which matches kosoku's own ``CaseResult.passed``). UNIMPLEMENTED is reported
only by the permessage-deflate cases (12.*, 13.*) when the server declined compression; that
is "compression not negotiated", not a failure, unless ``--require-compression``. Any other
UNIMPLEMENTED, FAILED or ERROR (case could not run) is a failure.

Exit status: 0 all passed, 1 some case failed, 2 harness error (server did not start, run
timed out, no case matched).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results" / "autobahn"
HOST = "127.0.0.1"

DEFAULT_SERVER_CMD = (
    "{python} -m aserve benchmarks.autobahn_app:app --port {port} --host 127.0.0.1"
    " --no-access-log --log-level warning --ws-max-size 20000000 --ws-ping-interval 0"
)
#: The quick subset skips the slow limits/performance (9.*) and compression (12.*, 13.*) cases.
QUICK_EXCLUDE = ("9.*", "12.*", "13.*")
COMPRESSION_CASE_PREFIXES = ("12.", "13.")

BEHAVIOR_ORDER = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR")
CLOSE_ORDER = ("OK", "INFORMATIONAL", "WRONG CODE", "FAILED BY CLIENT", "UNCLEAN", "FAILED")
PASSING_BEHAVIORS = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})
FAILING_CLOSES = frozenset({"FAILED", "UNCLEAN"})
LENIENT_CLOSES = frozenset({"WRONG CODE", "FAILED BY CLIENT"})

# Report files kosoku writes (plus ours); cleared before a run so stale cases don't linger.
_REPORT_GLOBS = ("*_case_*.json", "*_case_*.html", "index.json", "index.html", "summary.json")


class HarnessError(RuntimeError):
    """The run could not produce results (server did not start, timeout, bad selection)."""


# --------------------------------------------------------------------------- server process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def build_command(template: str, port: int) -> list[str]:
    """Split a server command line and substitute ``{port}`` / ``{python}``."""
    if "{port}" not in template:
        raise HarnessError(f"server command has no {{port}} placeholder: {template!r}")
    argv = [
        arg.replace("{port}", str(port)).replace("{python}", sys.executable)
        for arg in shlex.split(template)
    ]
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT / "src"), str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_for_port(proc: subprocess.Popen[bytes], port: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise HarnessError(
                f"server exited with status {proc.returncode} before listening on port {port}"
                f"; log tail:\n{_log_tail(log)}"
            )
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise HarnessError(
                f"server did not listen on {HOST}:{port} within {timeout:.0f}s"
                f"; log tail:\n{_log_tail(log)}"
            )
        time.sleep(0.05)


def stop_server(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGINT (graceful), then SIGTERM, then SIGKILL the server's own process group."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # the server was started in its own session
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)


@contextlib.contextmanager
def running_server(
    argv: Sequence[str], port: int, log: Path, startup_timeout: float = 20.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Run the server (stdout+stderr to ``log``) until the block exits; always stop it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port(proc, port, startup_timeout, log)
            yield proc
        finally:
            stop_server(proc)


# --------------------------------------------------------------------------- running kosoku


async def run_cases(
    url: str,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    parallelism: int = 1,
    timeout: float | None = None,
) -> list[Any]:
    """Run the selected cases; returns every ``kosoku.CaseResult``, pass or fail."""
    from kosoku import FailureError, run_fuzzingclient

    run = run_fuzzingclient(
        url,
        list(include) if include else None,
        list(exclude) if exclude else None,
        concurrency=parallelism,
    )
    try:
        return await asyncio.wait_for(run, timeout)
    except FailureError as failure:  # raised when any case did not pass; holds all results
        return list(failure.results)
    except TimeoutError:
        raise HarnessError(f"kosoku run did not finish within {timeout:.0f}s") from None
    except ValueError as exc:  # e.g. "no cases match pattern: 99.*"
        raise HarnessError(str(exc)) from None


# --------------------------------------------------------------------------- verdicts


@dataclass
class CaseVerdict:
    id: str
    behavior: str
    behavior_close: str
    remote_close_code: int | None
    duration_ms: int
    failed: bool
    note: str = ""


@dataclass
class Summary:
    agent: str
    url: str
    server_cmd: list[str]
    include: list[str] | None
    exclude: list[str] | None
    elapsed_s: float
    total: int
    behavior_counts: dict[str, int]
    close_counts: dict[str, int]
    compression_not_negotiated: int
    failing: list[CaseVerdict]
    cases: list[CaseVerdict] = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.total > 0 and not self.failing


def _compression_negotiated(result: Any) -> bool:
    return "permessage-deflate" in (result.http_response or "").lower()


def classify(
    result: Any, *, require_compression: bool = False, strict_close: bool = False
) -> CaseVerdict:
    behavior = result.behavior.value
    close = result.behavior_close.value
    notes: list[str] = []
    if behavior in PASSING_BEHAVIORS:
        failed = close in FAILING_CLOSES or (strict_close and close in LENIENT_CLOSES)
        if close not in ("OK", "INFORMATIONAL"):
            notes.append(f"close: {result.result_close}")
    elif behavior == "UNIMPLEMENTED" and result.case_id.startswith(COMPRESSION_CASE_PREFIXES):
        failed = require_compression or _compression_negotiated(result)
        notes.append("permessage-deflate not negotiated")
    else:  # FAILED, ERROR, or UNIMPLEMENTED outside the compression cases
        failed = True
        notes.append(result.result)
        if close not in ("OK", "INFORMATIONAL") and result.result_close != result.result:
            notes.append(f"close: {result.result_close}")
    if any(event[0] == "ping" for event in result.received or ()):
        # The echo app never pings, so this is the server's keepalive; Autobahn counts it as
        # an unexpected event and closes the case early.
        notes.append("server sent an unsolicited ping (disable its keepalive ping interval)")
    if result.remote_close_code is not None and behavior not in PASSING_BEHAVIORS:
        reason = f" {result.remote_close_reason!r}" if result.remote_close_reason else ""
        notes.append(f"server closed with {result.remote_close_code}{reason}")
    return CaseVerdict(
        id=result.case_id,
        behavior=behavior,
        behavior_close=close,
        remote_close_code=result.remote_close_code,
        duration_ms=result.duration,
        failed=failed,
        note="; ".join(notes),
    )


def _ordered_counts(values: Sequence[str], order: Sequence[str]) -> dict[str, int]:
    counts = Counter(values)
    ordered = {kind: counts.pop(kind) for kind in order if kind in counts}
    return ordered | dict(sorted(counts.items()))


def summarize(
    results: Sequence[Any],
    *,
    url: str,
    server_cmd: Sequence[str],
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    elapsed_s: float,
    require_compression: bool = False,
    strict_close: bool = False,
) -> Summary:
    verdicts = [
        classify(r, require_compression=require_compression, strict_close=strict_close)
        for r in results
    ]
    agents = sorted({r.agent for r in results if r.agent})
    return Summary(
        agent=", ".join(agents) or "unknown",
        url=url,
        server_cmd=list(server_cmd),
        include=list(include) if include else None,
        exclude=list(exclude) if exclude else None,
        elapsed_s=round(elapsed_s, 2),
        total=len(verdicts),
        behavior_counts=_ordered_counts([v.behavior for v in verdicts], BEHAVIOR_ORDER),
        close_counts=_ordered_counts([v.behavior_close for v in verdicts], CLOSE_ORDER),
        compression_not_negotiated=sum(
            1 for v in verdicts if v.behavior == "UNIMPLEMENTED" and not v.failed
        ),
        failing=[v for v in verdicts if v.failed],
        cases=verdicts,
    )


def write_outputs(results: Sequence[Any], summary: Summary, outdir: Path) -> Path:
    """Write kosoku's Autobahn report (index.html + per-case files) and summary.json."""
    from kosoku._report import write_reports  # what the `kosoku` CLI uses

    outdir.mkdir(parents=True, exist_ok=True)
    for pattern in _REPORT_GLOBS:
        for stale in outdir.glob(pattern):
            stale.unlink()
    write_reports(results, str(outdir))
    data = asdict(summary) | {"ok": summary.ok}
    (outdir / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
    return outdir / "index.html"


def format_summary(summary: Summary) -> str:
    def counts(mapping: dict[str, int]) -> str:
        return ", ".join(f"{kind} {n}" for kind, n in mapping.items()) or "-"

    lines = [
        f"Autobahn/kosoku vs {summary.agent} ({summary.url}): "
        f"{summary.total} cases in {summary.elapsed_s:.1f}s",
        f"  behavior: {counts(summary.behavior_counts)}",
        f"  close:    {counts(summary.close_counts)}",
    ]
    if summary.compression_not_negotiated:
        lines.append(
            f"  ({summary.compression_not_negotiated} compression cases UNIMPLEMENTED: "
            "permessage-deflate not negotiated; not counted as failures)"
        )
    lenient = [v for v in summary.cases if not v.failed and v.behavior_close in LENIENT_CLOSES]
    if lenient:
        lines.append(f"  lenient close verdicts (pass): {', '.join(v.id for v in lenient)}")
    lines.append(f"FAILED ({len(summary.failing)}):")
    lines += [
        f"  {v.id:<9} {v.behavior}/{v.behavior_close}: {v.note}" for v in summary.failing
    ] or ["  none"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def _default_name(template: str) -> str:
    argv = shlex.split(template)
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1].split(".")[0]
    return Path(argv[0]).name if argv else "server"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the Autobahn TestSuite cases (kosoku) against an ASGI echo server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--server-cmd",
        default=DEFAULT_SERVER_CMD,
        help="server command line; {port} and {python} are substituted",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"skip {', '.join(QUICK_EXCLUDE)} (limits/performance and compression)",
    )
    parser.add_argument(
        "--cases",
        action="append",
        metavar="PATTERN",
        help="case id or glob to run, e.g. 7.* (repeatable; default: all cases)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN",
        default=[],
        help="case id or glob to skip (repeatable)",
    )
    parser.add_argument("--name", help="report name (default: the server module, e.g. aserve)")
    parser.add_argument(
        "--outdir",
        type=Path,
        help=f"report directory (default: {RESULTS_DIR.relative_to(ROOT)}/<name>[-quick])",
    )
    parser.add_argument("-p", "--parallelism", type=int, default=1, help="cases run at once")
    parser.add_argument("--timeout", type=float, default=1800.0, help="whole-run limit, s")
    parser.add_argument("--startup-timeout", type=float, default=20.0, help="server start, s")
    parser.add_argument(
        "--require-compression",
        action="store_true",
        help="count UNIMPLEMENTED compression cases (no permessage-deflate) as failures",
    )
    parser.add_argument(
        "--strict-close",
        action="store_true",
        help="also fail on close verdicts WRONG CODE and FAILED BY CLIENT",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exclude = list(args.exclude) + (list(QUICK_EXCLUDE) if args.quick else [])
    name = args.name or _default_name(args.server_cmd)
    if args.quick:
        name += "-quick"
    elif args.cases:
        name += "-subset"
    outdir = args.outdir or RESULTS_DIR / name

    try:
        import kosoku  # noqa: F401
    except ImportError:
        print("kosoku is not installed: pip install kosoku", file=sys.stderr)
        return 2

    port = free_port()
    url = f"ws://{HOST}:{port}"
    try:
        server_argv = build_command(args.server_cmd, port)
        print(f"starting: {shlex.join(server_argv)}", flush=True)
        with running_server(server_argv, port, outdir / "server.log", args.startup_timeout):
            started = time.monotonic()
            results = asyncio.run(
                run_cases(url, args.cases, exclude, args.parallelism, args.timeout)
            )
            elapsed = time.monotonic() - started
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    summary = summarize(
        results,
        url=url,
        server_cmd=server_argv,
        include=args.cases,
        exclude=exclude,
        elapsed_s=elapsed,
        require_compression=args.require_compression,
        strict_close=args.strict_close,
    )
    report = write_outputs(results, summary, outdir)
    print(format_summary(summary))
    print(f"report: {report}  (summary: {outdir / 'summary.json'})")
    print("RESULT:", "PASS" if summary.ok else f"FAIL ({len(summary.failing)} failing cases)")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
