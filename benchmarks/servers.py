"""Start, probe and stop the benchmarked servers (each pinned to one CPU core)."""

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("aserve", "uvicorn", "granian")
# Not run by default: aserve on the Python source of its hot path, to measure what compiling
# it (setup.py) buys in the same run.
OPTIONAL_SERVERS = ("aserve-py",)
KEEP_ALIVE_SECONDS = "120"  # memory test: idle connections must survive the measurement


class ServerError(RuntimeError):
    """The server could not be started (or died); the message says why."""


@dataclass
class RunningServer:
    name: str
    app: str
    port: int
    process: subprocess.Popen
    log_path: Path


def server_command(name, app, port, *, websocket=False, idle_connections=0):
    """Command line for one server process: one worker, access log off, uvloop + httptools.

    `idle_connections` > 0 (memory test) lets idle keep-alive connections live long enough
    (uvicorn-style servers close them after 5 s by default) and lifts granian's default
    cap of 1024 concurrent connections (--backpressure).
    """
    python = sys.executable
    common = ["--host", HOST, "--port", str(port)]
    if name in ("aserve", "aserve-py"):
        cmd = [python, "-m", "aserve", app, *common, "--no-access-log", "--log-level", "warning"]
        if websocket:
            cmd += ["--ws", "websockets"]
    elif name == "uvicorn":
        cmd = [
            python,
            "-m",
            "uvicorn",
            app,
            *common,
            "--http",
            "httptools",
            "--loop",
            "uvloop",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        if websocket:
            cmd += ["--ws", "websockets-sansio"]
    elif name == "granian":
        cmd = [
            python,
            "-m",
            "granian",
            "--interface",
            "asgi",
            *common,
            "--workers",
            "1",
            "--loop",
            "uvloop",
            "--no-access-log",
            "--log-level",
            "warning",
            app,
        ]
    else:
        raise ValueError(f"unknown server {name!r}")
    if idle_connections and name in ("aserve", "aserve-py", "uvicorn"):
        cmd += ["--timeout-keep-alive", KEEP_ALIVE_SECONDS]
    if idle_connections and name == "granian":
        cmd[-1:-1] = ["--backpressure", str(idle_connections + 1024)]
    return cmd


def free_port():
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _server_env(name):
    paths = [str(REPO_ROOT), str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    env.pop("ASERVE_NO_EXTENSIONS", None)
    if name == "aserve-py":
        env["ASERVE_NO_EXTENSIONS"] = "1"
    return env


def start_server(name, app, *, core=0, websocket=False, idle_connections=0, timeout=10.0):
    """Start a server pinned to `core` and wait until it answers HTTP; raise ServerError."""
    port = free_port()
    command = server_command(
        name, app, port, websocket=websocket, idle_connections=idle_connections
    )
    cmd = ["taskset", "-c", str(core), *command]
    fd, log_name = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        process = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=_server_env(name),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = RunningServer(name, app, port, process, Path(log_name))
    try:
        wait_until_ready(server, timeout)
    except ServerError:
        stop_server(server)  # the error message already carries the log tail
        raise
    return server


def _answers_http(port):
    conn = http.client.HTTPConnection(HOST, port, timeout=1.0)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def wait_until_ready(server, timeout):
    """Poll until the server gives any HTTP answer on / (404 counts); bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(
                f"{server.name} exited with code {server.process.returncode}"
                f"{log_tail(server.log_path)}"
            )
        if _answers_http(server.port):
            return
        time.sleep(0.1)
    raise ServerError(
        f"{server.name} did not answer within {timeout:.0f}s{log_tail(server.log_path)}"
    )


def log_tail(path, lines=15):
    try:
        text = Path(path).read_text(errors="replace").strip()
    except OSError:
        return ""
    if not text:
        return ""
    return "\n    | " + "\n    | ".join(text.splitlines()[-lines:])


def stop_server(server, *, grace=5.0):
    """SIGTERM the whole process group, SIGKILL it if still alive after `grace` seconds."""
    _signal_group(server.process, signal.SIGTERM)
    try:
        server.process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal_group(server.process, signal.SIGKILL)
        server.process.wait(timeout=grace)
    _signal_group(server.process, signal.SIGKILL)  # leftover workers, if any
    server.log_path.unlink(missing_ok=True)


def _signal_group(process, sig):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _children(pid):
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(child) for child in task.read_text().split()]
        except OSError:
            continue
    return children


def _vmrss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(pid):
    """VmRSS of a process plus all its descendants (granian runs its worker in a child)."""
    total, pending, seen = 0, [pid], set()
    while pending and len(seen) < 256:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        total += _vmrss_kib(current)
        pending += _children(current)
    return total
