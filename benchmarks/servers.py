"""Start, probe and stop the benchmarked servers (each pinned to one CPU core)."""

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
# Server families run by default. A family runs as one or more servers per workload (see
# `variants`): uvicorn once per backend, hypercorn on the HTTP/2 workloads only.
SERVERS = ("aserve", "uvicorn", "granian", "hypercorn")
# Not run by default: aserve on the Python source of its hot path, to measure what compiling
# it (setup.py) buys in the same run.
OPTIONAL_SERVERS = ("aserve-py",)
# uvicorn's backends: each is a server of its own in a run, and aserve is compared with the
# best of them on each workload.
UVICORN_HTTP = ("httptools", "zttp")
UVICORN_WS = ("websockets-sansio", "websockets", "wsproto")
UVICORN_VARIANTS = tuple(f"uvicorn-{b}" for b in (*UVICORN_HTTP, *UVICORN_WS))
HTTP2_KINDS = ("h2",)
KEEP_ALIVE_SECONDS = "120"  # memory test: idle connections must survive the measurement


class ServerError(RuntimeError):
    """The server could not be started (or died); the message says why."""


class Unsupported(ServerError):
    """The server cannot run this kind of workload (aserve before it speaks HTTP/2)."""


@dataclass
class RunningServer:
    name: str
    app: str
    port: int
    process: subprocess.Popen
    log_path: Path
    command: list = field(default_factory=list)


@dataclass(frozen=True)
class TlsFiles:
    """A server certificate for 127.0.0.1 and the CA that signed it (trustme)."""

    certfile: str
    keyfile: str
    cafile: str


def family(name):
    """`uvicorn` for each of its backends, the name itself otherwise."""
    return "uvicorn" if name.startswith("uvicorn-") else name


def variants(name, kind):
    """The servers that `name` (a family, or one uvicorn backend) runs on a workload of
    `kind`: uvicorn with each HTTP backend (zttp alone speaks HTTP/2), or with each
    WebSocket backend; hypercorn only on HTTP/2. An empty list: not run there."""
    if name == "uvicorn":
        if kind == "ws":
            return [f"uvicorn-{b}" for b in UVICORN_WS]
        if kind in HTTP2_KINDS:
            return ["uvicorn-zttp"]
        return [f"uvicorn-{b}" for b in UVICORN_HTTP]
    if name.startswith("uvicorn-"):
        backend = name.removeprefix("uvicorn-")
        if kind == "ws":
            return [name] if backend in UVICORN_WS else []
        if kind in HTTP2_KINDS:
            return [name] if backend == "zttp" else []
        return [name] if backend in UVICORN_HTTP else []
    if name == "hypercorn":
        return [name] if kind in HTTP2_KINDS else []
    return [name]


def _uvicorn(name, kind):
    """uvicorn's backend flags: `uvicorn` alone is httptools and websockets-sansio."""
    backend = name.removeprefix("uvicorn").removeprefix("-")
    http = backend if backend in UVICORN_HTTP else "httptools"
    flags = ["--http", "zttp", "--http2"] if kind in HTTP2_KINDS else ["--http", http]
    if kind == "ws":
        flags += ["--ws", backend if backend in UVICORN_WS else "websockets-sansio"]
    return flags


def server_command(name, app, port, *, kind="http", idle_connections=0, tls=None, extra=()):
    """Command line for one server process: one worker, access log off, uvloop + httptools.

    `kind` is the workload's: "ws" picks the WebSocket implementation, "h2" HTTP/2 (h2c by
    prior knowledge, or ALPN with `tls`). `idle_connections` > 0 (memory test) lets idle
    keep-alive connections live long enough (uvicorn-style servers close them after 5 s by
    default) and lifts granian's default cap of 1024 concurrent connections (--backpressure).
    """
    python = sys.executable
    common = ["--host", HOST, "--port", str(port)]
    quiet = ["--log-level", "warning"]
    if name in ("aserve", "aserve-py"):
        cmd = [python, "-m", "aserve", app, *common, "--no-access-log", *quiet]
        if kind == "ws":
            cmd += ["--ws", "websockets"]
        if kind in HTTP2_KINDS:
            cmd += ["--http2"]
        if tls:
            cmd += ["--ssl-certfile", tls.certfile, "--ssl-keyfile", tls.keyfile]
    elif name == "uvicorn" or name in UVICORN_VARIANTS:
        cmd = [python, "-m", "uvicorn", app, *common, *_uvicorn(name, kind)]
        cmd += ["--loop", "uvloop", "--no-access-log", *quiet]
        if tls:
            cmd += ["--ssl-certfile", tls.certfile, "--ssl-keyfile", tls.keyfile]
    elif name == "granian":
        cmd = [python, "-m", "granian", "--interface", "asgi", *common, "--workers", "1"]
        cmd += ["--loop", "uvloop", "--no-access-log", *quiet]
        if kind in HTTP2_KINDS:
            cmd += ["--http", "2"]
        if tls:
            cmd += ["--ssl-certificate", tls.certfile, "--ssl-keyfile", tls.keyfile]
        cmd.append(app)
    elif name == "hypercorn":
        # h2c by prior knowledge needs no flag; its access log is off unless asked for.
        cmd = [python, "-m", "hypercorn", "--bind", f"{HOST}:{port}", "--workers", "1"]
        cmd += ["--worker-class", "uvloop", *quiet]
        if tls:
            cmd += ["--certfile", tls.certfile, "--keyfile", tls.keyfile]
        cmd.append(app)
    else:
        raise ValueError(f"unknown server {name!r}")
    if idle_connections and family(name) in ("aserve", "aserve-py", "uvicorn"):
        cmd += ["--timeout-keep-alive", KEEP_ALIVE_SECONDS]
    if idle_connections and name == "granian":
        cmd[-1:-1] = ["--backpressure", str(idle_connections + 1024)]
    return cmd + list(extra)


def make_tls_files(directory):
    """Write a trustme CA and a certificate for 127.0.0.1 into `directory`."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    directory = Path(directory)
    files = TlsFiles(
        str(directory / "server.pem"), str(directory / "server.key"), str(directory / "ca.pem")
    )
    cert.cert_chain_pems[0].write_to_path(files.certfile)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(files.certfile, append=True)
    cert.private_key_pem.write_to_path(files.keyfile)
    ca.cert_pem.write_to_path(files.cafile)
    return files


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


def start_server(
    name, app, *, core=0, kind="http", idle_connections=0, tls=None, extra=(), timeout=10.0
):
    """Start a server pinned to `core` (None: not pinned) and wait until it answers (over
    HTTP/2 for an HTTP/2 workload, over TLS with `tls`); raise ServerError.

    aserve on an HTTP/2 workload must first answer HTTP/1.1, then HTTP/2 (h2c by prior
    knowledge, or ALPN over TLS): until it serves HTTP/2, `Unsupported` says so, and the run
    reports it as not supported instead of a failure.
    """
    http2_pending = family(name) == "aserve" and kind in HTTP2_KINDS
    port = free_port()
    command = server_command(
        name, app, port, kind=kind, idle_connections=idle_connections, tls=tls, extra=extra
    )
    cmd = command if core is None else ["taskset", "-c", str(core), *command]
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
    server = RunningServer(name, app, port, process, Path(log_name), command)
    try:
        if http2_pending:
            _wait_for_http2(server, timeout, tls)
        else:
            wait_until_ready(server, timeout, tls, http2=kind in HTTP2_KINDS)
    except ServerError:
        stop_server(server)  # the error message already carries the log tail
        raise
    return server


def _wait_for_http2(server, timeout, tls):
    """aserve started with --http2: up over HTTP/1.1, then answering HTTP/2, or Unsupported."""
    try:
        wait_until_ready(server, timeout, tls)
    except ServerError as exc:
        if "--http2" in str(exc):  # an aserve without the flag: "No such option: --http2"
            raise Unsupported("aserve has no --http2: HTTP/2 not supported") from None
        raise
    deadline = time.monotonic() + 2.0
    while not _answers_http2(server.port, tls):
        if time.monotonic() > deadline:
            how = "ALPN h2 over TLS" if tls else "h2c by prior knowledge"
            raise Unsupported(f"aserve --http2 answers HTTP/1.1 but not HTTP/2 ({how})")
        time.sleep(0.1)


def _answers_http(port, tls=None):
    if tls:
        context = ssl.create_default_context(cafile=tls.cafile)
        conn = http.client.HTTPSConnection(HOST, port, timeout=1.0, context=context)
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=1.0)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _answers_http2(port, tls=None):
    """Any answer over HTTP/2 (h2c by prior knowledge, or ALPN with `tls`): granian with
    `--http 2` speaks nothing else."""
    import httpx

    url = f"{'https' if tls else 'http'}://{HOST}:{port}/"
    verify = ssl.create_default_context(cafile=tls.cafile) if tls else False
    try:
        with httpx.Client(http1=False, http2=True, verify=verify, timeout=1.0) as client:
            client.get(url)
        return True
    except httpx.HTTPError:
        return False


def wait_until_ready(server, timeout, tls=None, http2=False):
    """Poll until the server gives any HTTP answer on / (404 counts); bounded by `timeout`."""
    answers = _answers_http2 if http2 else _answers_http
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerError(
                f"{server.name} exited with code {server.process.returncode}"
                f"{log_tail(server.log_path)}"
            )
        if answers(server.port, tls):
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
