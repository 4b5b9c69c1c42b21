"""Run h2load (HTTP/2 load, pinned to one core) and parse its output and per-request log."""

import os
import re
import statistics
import subprocess
import tempfile


def h2load_command(
    url,
    *,
    connections,
    streams,
    duration,
    core=1,
    warmup=0,
    data_path=None,
    headers=(),
    log_path=None,
):
    """h2load for `duration` seconds: `connections` connections, `streams` in flight on each.

    An `http://` URL is h2c by prior knowledge (h2load's default); `https://` negotiates h2
    by ALPN. h2load does not check certificates.
    """
    cmd = ["taskset", "-c", str(core), "h2load", "--threads", "1"]
    cmd += ["--clients", str(connections), "--max-concurrent-streams", str(streams)]
    cmd += ["--duration", str(duration)]
    if warmup:
        cmd += ["--warm-up-time", str(warmup)]
    if data_path:
        cmd += ["--data", str(data_path)]
    for name, value in headers:
        cmd += ["--header", f"{name}: {value}"]
    if log_path:
        cmd += ["--log-file", str(log_path)]
    cmd.append(url)
    return cmd


def run_h2load(url, *, body_size=0, **options):
    """Run h2load for a fixed time; return the parsed result dict (raises RuntimeError)."""
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        data_path = None
        if body_size:
            data_path = os.path.join(tmp, "body")
            with open(data_path, "wb") as body:
                body.write(b"a" * body_size)
        log_path = os.path.join(tmp, "requests.log")
        cmd = h2load_command(url, data_path=data_path, log_path=log_path, **options)
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            check=False,
            timeout=options["duration"] + options.get("warmup", 0) + 60,
        )
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()[-300:]
            raise RuntimeError(f"h2load failed ({done.returncode}): {output}")
        result = parse_h2load(done.stdout)
        result.update(latency_from_log(log_path))
    return result


_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def parse_h2load(text):
    """req/s, requests done, and the failed ones as h2load counts them: `failed` (no
    complete answer), `errored` (a stream reset or a connection error), `timeout`, and
    answers other than 2xx."""
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    requests = _REQUESTS.search(text)
    if not rps or not requests:
        raise RuntimeError(f"cannot parse h2load output:\n{text[-1000:]}")
    _, _, _, succeeded, failed, errored, timeout = map(int, requests.groups())
    status = _STATUS.search(text)
    codes = list(map(int, status.groups())) if status else [0, 0, 0, 0]
    protocol = re.search(r"Application protocol: (\S+)", text)
    return {
        "value": float(rps.group(1)),
        "requests": succeeded,
        "protocol": protocol.group(1) if protocol else None,
        "errors": {
            "failed": failed,
            "errored": errored,
            "timeout": timeout,
            "non_2xx": codes[1] + codes[2] + codes[3],
        },
        "p50_ms": None,
        "p99_ms": None,
    }


def latency_from_log(path):
    """p50/p99 in ms from h2load's --log-file (start us, status, duration us per request)."""
    durations = []
    try:
        with open(path) as log:
            for line in log:
                fields = line.split("\t")
                if len(fields) >= 3 and fields[2].strip().isdigit():
                    durations.append(int(fields[2]))
    except OSError:
        return {}
    if not durations:
        return {}
    durations.sort()
    p99 = durations[min(len(durations) - 1, int(len(durations) * 0.99))]
    return {"p50_ms": statistics.median(durations) / 1000, "p99_ms": p99 / 1000}
