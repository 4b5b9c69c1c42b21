"""The `aserve` command as a user runs it: a real process, real signals, real exit codes."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from aserve.cli import cli
from aserve.protocols import http
from conftest import read_response
from processes import ASERVE, AserveProcess

APPS = Path(__file__).parent / "apps"
DOCS = Path(__file__).parent.parent / "docs"


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ASERVE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_serves_and_shuts_down_gracefully_on_sigterm(tmp_path):
    marker = tmp_path / "shutdown"
    arrived = tmp_path / "arrived"
    server = AserveProcess(
        "lifespan_apps:slow",
        "--app-dir",
        str(APPS),
        "--port",
        "0",
        env={
            "ASERVE_TEST_SHUTDOWN_MARKER": str(marker),
            "ASERVE_TEST_REQUEST_MARKER": str(arrived),
        },
    )
    try:
        port = server.wait_for_port()
        result = {}

        def in_flight() -> None:
            result["response"] = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)

        client = threading.Thread(target=in_flight)
        client.start()
        deadline = time.monotonic() + 10
        while not arrived.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert arrived.exists(), "the request never reached the app"
        code = server.stop(signal.SIGTERM)
        client.join(10)
    finally:
        server.proc.kill()
    assert code == 0
    assert result["response"].text == "finished"  # the in-flight request completed
    assert marker.read_text() == "shutdown ran"  # then lifespan shutdown ran
    assert "Application shutdown complete." in server.output


@pytest.mark.once
def test_a_connection_accepted_as_shutdown_begins_does_not_hold_it(tmp_path):
    """The `--reload` child that once waited 30 s to stop: a connection accepted in the loop
    turn before the one where shutdown began was closed without its protocol hearing of it,
    so the server waited its whole --timeout-graceful-shutdown for a connection that was
    gone. Here the app lines the two up on purpose: the loop is held while a new connection
    queues behind a request that sends SIGTERM."""
    release = tmp_path / "release"
    server = AserveProcess(
        "shutdown_race:app",
        "--app-dir",
        str(APPS),
        "--port",
        "0",
        "--timeout-graceful-shutdown",
        "30",
        env={"ASERVE_TEST_RELEASE": str(release)},
    )
    clients: list[socket.socket] = []
    try:
        port = server.wait_for_port()
        keep_alive = socket.create_connection(("127.0.0.1", port))
        clients.append(keep_alive)
        keep_alive.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(keep_alive).endswith(b"ok")
        holder = socket.create_connection(("127.0.0.1", port))
        clients.append(holder)
        holder.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        server.wait_until(lambda: Path(f"{release}.held").exists(), "the loop to be held")
        clients.append(socket.create_connection(("127.0.0.1", port)))  # queued: accepted next
        keep_alive.sendall(b"GET /term HTTP/1.1\r\nHost: x\r\n\r\n")  # read after it
        time.sleep(0.2)
        release.touch()
        began = time.monotonic()
        code = server.proc.wait(timeout=45)
        took = time.monotonic() - began
    finally:
        for client in clients:
            client.close()
        server.stop()
    assert code == 0, server.output
    assert "Graceful shutdown timed out" not in server.output
    assert took < 10, f"shutdown took {took:.1f} s:\n{server.output}"


@pytest.mark.once
def test_sigterm_during_a_lifespan_startup_that_hangs_stops_the_server(tmp_path):
    cancelled = tmp_path / "cancelled"
    server = AserveProcess(
        "stuck:hanging_startup",
        "--app-dir",
        str(APPS),
        "--port",
        "0",
        env={"ASERVE_TEST_CANCELLED": str(cancelled)},
    )
    try:
        server.wait_until(
            lambda: "Waiting for application startup." in server.output, "the startup to begin"
        )
        time.sleep(0.3)  # into the startup's sleep
        code = server.stop(signal.SIGTERM, timeout=15)
    finally:
        server.proc.kill()
    assert code == 0, server.output
    assert cancelled.read_text().startswith("cancelled")  # the app's cleanup ran
    assert "Stopped before application startup was complete" in server.output
    assert "Traceback" not in server.output


def test_sigint_stops_the_server():
    server = AserveProcess("lifespan_apps:hello", "--app-dir", str(APPS), "--port", "0")
    try:
        port = server.wait_for_port()
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
        assert server.stop(signal.SIGINT) == 0
    finally:
        server.proc.kill()


def test_access_log_and_factory():
    server = AserveProcess(
        "lifespan_apps:factory", "--factory", "--app-dir", str(APPS), "--port", "0"
    )
    try:
        port = server.wait_for_port()
        httpx.get(f"http://127.0.0.1:{port}/path?x=1")
        server.stop()
        out = server.proc.stdout.read() if server.proc.stdout else ""
    finally:
        server.proc.kill()
    assert re.search(r'INFO: +127\.0\.0\.1:\d+ - "GET /path\?x=1 HTTP/1\.1" 200 OK', out), out


def test_env_file_is_loaded(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nexport ASERVE_TEST_ENV_VALUE='from env file'\n")
    server = AserveProcess(
        "lifespan_apps:env_app",
        "--app-dir",
        str(APPS),
        "--port",
        "0",
        "--env-file",
        str(env_file),
    )
    try:
        port = server.wait_for_port()
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "from env file"
    finally:
        server.stop()
        server.proc.kill()


def test_startup_failure_exits_non_zero_with_the_apps_message():
    result = run_cli("lifespan_apps:failing_startup", "--app-dir", str(APPS), "--port", "0")
    assert result.returncode == 3
    assert "database unreachable" in one_line_error(result)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nosuchmodule:app"], "could not import module 'nosuchmodule'"),
        (["broken:app", "--app-dir", str(APPS)], "this_module_does_not_exist"),
        (["lifespan_apps:nope", "--app-dir", str(APPS)], "attribute 'nope' not found"),
        (["no_colon"], 'app must be given as "module:attribute"'),
        (["lifespan_apps:factory", "--app-dir", str(APPS)], "use --factory"),
        (["lifespan_apps:hello", "--app-dir", str(APPS), "--bogus"], "No such option '--bogus'"),
        (["lifespan_apps:hello", "--port", "http"], "'http' is not a valid integer"),
        (["lifespan_apps:hello", "--loop", "tokio"], "loop must be one of auto, asyncio,"),
        (["lifespan_apps:hello", "--header", "novalue"], "must be given as NAME:VALUE"),
        (["lifespan_apps:hello", "--access-log-format", "{nope}"], "unknown field {nope}"),
        (["lifespan_apps:hello", "--forwarded-allow-ips", "10.0.0.0/99"], "10.0.0.0/99"),
        (["lifespan_apps:hello", "--port", "70000"], "port must be between 0 and 65535"),
        (["lifespan_apps:hello", "--ssl-certfile", "/nonexistent.pem"], "'/nonexistent.pem'"),
        (["lifespan_apps:hello", "--ssl-keyfile", "k.pem"], "ssl_keyfile is given but TLS is off"),
    ],
)
def test_bad_input_is_one_line_error_exit_1(args, expected):
    if "--port" not in args:
        args = [*args, "--port", "0"]  # the default 8000 may be taken (make demo, another run)
    result = run_cli(*args)
    assert result.returncode == 1, result.stderr
    assert expected in one_line_error(result)


def test_port_in_use_is_one_line_error():
    server = AserveProcess("lifespan_apps:hello", "--app-dir", str(APPS), "--port", "0")
    try:
        port = server.wait_for_port()
        result = run_cli("lifespan_apps:hello", "--app-dir", str(APPS), "--port", str(port))
    finally:
        server.stop()
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in one_line_error(result)


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("aserve 0.1.0")
    assert ("compiled hot path" if http.COMPILED else "pure-Python hot path") in result.stdout


def test_cli_reference_matches_help():
    """docs/cli.md documents exactly the options `aserve --help` has."""
    documented = set()
    for row in re.findall(r"^\| (`--.*?) \|", (DOCS / "cli.md").read_text(), re.M):
        documented.update(re.findall(r"`(--[a-z0-9-]+)", row))
    actual = {
        opt
        for param in cli.params
        for opt in (*param.opts, *param.secondary_opts)
        if opt.startswith("--") and opt != "--help"
    }
    assert sorted(actual - documented) == [], "options missing from docs/cli.md"
    assert sorted(documented - actual) == [], "docs/cli.md lists options that do not exist"
