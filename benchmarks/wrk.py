"""Run wrk (pinned to one core) and parse its --latency text output."""

import re
import subprocess
from pathlib import Path

LUA_DIR = Path(__file__).resolve().parent / "lua"
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_LATENCY = r"\s+([\d.]+)(us|ms|s|m|h)"


def wrk_command(url, *, connections, duration, core=1, script=None, script_args=()):
    cmd = [
        "taskset",
        "-c",
        str(core),
        "wrk",
        "--threads",
        "1",
        "--connections",
        str(connections),
        "--duration",
        f"{duration}s",
        "--timeout",
        "5s",
        "--latency",
    ]
    if script:
        cmd += ["--script", str(LUA_DIR / script)]
    cmd.append(url)
    if script_args:
        cmd += ["--", *map(str, script_args)]
    return cmd


def run_wrk(url, **options):
    """Run wrk for a fixed time and return the parsed result dict (raises RuntimeError)."""
    cmd = wrk_command(url, **options)
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=False, timeout=options["duration"] + 60
    )
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-300:]
        raise RuntimeError(f"wrk failed ({done.returncode}): {output}")
    return parse_wrk(done.stdout)


def _to_ms(value, unit):
    return float(value) * _UNITS_MS[unit]


def parse_wrk(text):
    """Extract req/s, p50/p99 latency (ms), request count and error counts."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not rps:
        raise RuntimeError(f"cannot parse wrk output:\n{text}")
    result = {"value": float(rps.group(1)), "p50_ms": None, "p99_ms": None}
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        match = re.search(rf"^\s+{pct}%{_LATENCY}", text, re.MULTILINE)
        if match:
            result[key] = _to_ms(*match.groups())
    total = re.search(r"(\d+) requests in", text)
    result["requests"] = int(total.group(1)) if total else 0
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    names = ("connect", "read", "write", "timeout")
    result["errors"] = dict(zip(names, map(int, errors.groups()), strict=True)) if errors else {}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result["errors"]["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    return result
