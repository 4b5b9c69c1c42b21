"""Prometheus metrics: real traffic through a real server, then a scrape of its own listener."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tests.conftest import read_response, read_until_close, serve
from tests.processes import AserveProcess
from websockets.sync.client import connect

from aserve.balance import RESTART_REASONS
from aserve.config import Config, ConfigError
from aserve.metrics import DURATION_BUCKETS, Metrics
from aserve.supervisor import START_KILLED, Worker

SAMPLE = re.compile(r"^([a-z_][a-z0-9_]*)(\{[^}]*\})? (\S+)$")

release = threading.Event()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            echo = {"bytes": message["bytes"]} if text is None else {"text": text}
            await send({"type": "websocket.send", **echo})
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/wait":
        while not release.is_set():  # held until the test lets it go
            await asyncio.sleep(0.01)
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    status = 404 if path == "/missing" else 200
    answer = b"app:" + path.encode() + b":" + str(len(body)).encode()
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": answer})


def scrape(port: int) -> dict[str, float]:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples: dict[str, float] = {}
    for line in response.text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def wait_for(port: int, name: str, value: float, timeout: float = 10) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if samples[name] == value or time.monotonic() > deadline:
            assert samples[name] == value, f"{name} = {samples[name]}, expected {value}"
            return samples
        time.sleep(0.02)


def test_counters_follow_real_traffic() -> None:
    release.clear()
    with serve(app, metrics_port=0, access_log=False) as server:
        port = server.server.metrics_port
        assert port is not None and port != server.port
        base = server.url
        with httpx.Client(base_url=base) as client:
            assert client.get("/ok").status_code == 200  # body "app:/ok:0", 9 bytes
            assert client.get("/missing").status_code == 404  # "app:/missing:0", 14
            assert client.post("/upload", content=b"x" * 1000).text == "app:/upload:1000"
            assert client.get("/boom").status_code == 500  # "Internal Server Error", 21
            # The app's port serves the app, never the metrics.
            assert client.get("/metrics").text == "app:/metrics:0"  # 14 bytes
        # A malformed request: answered 400 by the server itself.
        assert server.request(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n").startswith(
            b"HTTP/1.1 400"
        )
        samples = scrape(port)
        assert samples["aserve_http_requests_total"] == 5
        assert samples['aserve_http_responses_total{status="2xx"}'] == 3
        assert samples['aserve_http_responses_total{status="4xx"}'] == 2
        assert samples['aserve_http_responses_total{status="5xx"}'] == 1
        assert samples['aserve_http_responses_total{status="1xx"}'] == 0
        assert samples["aserve_http_requests_in_flight"] == 0
        assert samples["aserve_http_requests_aborted_total"] == 0
        assert samples["aserve_http_request_body_bytes_total"] == 1000
        assert samples["aserve_http_response_body_bytes_total"] == 9 + 14 + 16 + 21 + 14
        assert samples["aserve_http_request_duration_seconds_count"] == 5
        buckets = [
            samples[f'aserve_http_request_duration_seconds_bucket{{le="{b}"}}']
            for b in DURATION_BUCKETS
        ]
        assert buckets == sorted(buckets)
        assert samples['aserve_http_request_duration_seconds_bucket{le="+Inf"}'] == 5
        assert 0 < time.time() - samples["process_start_time_seconds"] < 60

        # In flight: a request the app holds, on a keep-alive connection that stays open.
        with server.connect() as sock:
            sock.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
            samples = wait_for(port, "aserve_http_requests_in_flight", 1)
            assert samples["aserve_connections_open"] == 1
            release.set()
            assert read_response(sock).endswith(b"app:/wait:0")
            wait_for(port, "aserve_http_requests_in_flight", 0)
        wait_for(port, "aserve_connections_open", 0)

        # A client that leaves while its request is in flight: aborted, no longer in flight.
        release.clear()
        with server.connect() as sock:
            sock.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(port, "aserve_http_requests_in_flight", 1)
        samples = wait_for(port, "aserve_http_requests_aborted_total", 1)
        assert samples["aserve_http_requests_in_flight"] == 0
        assert samples["aserve_http_requests_total"] == 7
        release.set()

        # WebSockets: counted while open, and not as HTTP requests.
        with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            ws.send("hé")  # 3 bytes as UTF-8
            assert ws.recv() == "hé"
            ws.send([b"ab", b"cde"])  # one message in two frames
            assert ws.recv() == b"abcde"
            samples = scrape(port)
            assert samples["aserve_websockets_open"] == 1
            assert samples["aserve_websockets_total"] == 1
            assert samples["aserve_connections_open"] == 1
            assert samples['aserve_websocket_messages_total{direction="received"}'] == 2
            assert samples['aserve_websocket_messages_total{direction="sent"}'] == 2
            assert samples['aserve_websocket_bytes_total{direction="received"}'] == 3 + 5
            assert samples['aserve_websocket_bytes_total{direction="sent"}'] == 3 + 5
        samples = wait_for(port, "aserve_websockets_open", 0)
        assert samples["aserve_websockets_total"] == 1
        assert samples["aserve_http_requests_total"] == 7
        # Without a supervisor there are no worker restarts to count: no such series.
        assert not [name for name in samples if name.startswith("aserve_worker")]


def test_the_metrics_listener_answers_only_get_metrics() -> None:
    with serve(app, metrics_port=0) as server:
        port = server.server.metrics_port
        assert port is not None
        assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 404
        assert httpx.post(f"http://127.0.0.1:{port}/metrics").status_code == 405
        head = httpx.head(f"http://127.0.0.1:{port}/metrics")
        assert head.status_code == 200 and head.content == b""
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"x" * 10_000)  # no head end in sight
            assert read_until_close(sock).startswith(b"HTTP/1.1 431")


def test_metrics_are_off_by_default() -> None:
    with serve(app) as server:
        assert server.server.metrics_port is None
        assert server.server.state is not None and server.server.state.metrics is None


def test_metrics_port_must_not_be_the_apps_port() -> None:
    with pytest.raises(ConfigError, match="metrics_port must differ from port"):
        Config(app=app, port=8000, metrics_port=8000)
    with pytest.raises(ConfigError, match="metrics_port must be between 0 and 65535"):
        Config(app=app, metrics_port=70000)


def test_a_busy_metrics_port_fails_before_the_app_starts() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        expected = f"cannot listen on 127.0.0.1:{taken} for metrics"
        with pytest.raises(ConfigError, match=expected), serve(app, metrics_port=taken):
            pass


def test_exposition_format() -> None:
    metrics = Metrics(connections=[1, 2, 3])
    metrics.request_received()
    metrics.response_complete(201, 10, 5, 0.003)
    metrics.request_received()
    metrics.response_complete(503, 1, 0, 7.0)
    text = metrics.render()
    assert text.endswith("\n")
    assert "# TYPE aserve_http_request_duration_seconds histogram" in text
    assert 'aserve_http_request_duration_seconds_bucket{le="0.005"} 1\n' in text
    assert 'aserve_http_request_duration_seconds_bucket{le="5.0"} 1\n' in text
    assert 'aserve_http_request_duration_seconds_bucket{le="10.0"} 2\n' in text
    assert "aserve_http_request_duration_seconds_sum 7.003\n" in text
    assert "aserve_connections_open 3\n" in text
    for line in text.splitlines():
        assert line.startswith("#") or SAMPLE.match(line), line


def test_the_command_line_flags() -> None:
    from tests.test_cli import APPS, one_line_error, run_cli

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    server = AserveProcess(
        "lifespan_apps:hello", "--app-dir", str(APPS), "--port", "0",
        "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1",
    )  # fmt: skip
    try:
        port = server.wait_for_port()
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
        samples = scrape(metrics_port)
        assert samples['aserve_http_responses_total{status="2xx"}'] == 1
        assert f"Metrics on http://127.0.0.1:{metrics_port}/metrics" in server.output
    finally:
        server.stop()
    result = run_cli("lifespan_apps:hello", "--port", "8123", "--metrics-port", "8123")
    assert result.returncode == 1
    assert "metrics_port must differ from port (8123)" in one_line_error(result)


def _two_free_ports() -> int:
    """A port P with P + 1 also free (worker 2's metrics port)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise AssertionError("no two consecutive free ports")


def test_a_worker_serves_on_its_own_port_once_its_predecessor_frees_it() -> None:
    """Worker N of a supervisor listens on --metrics-port + N - 1; in a rolling restart the
    new worker N starts while the old one still drains on that port, and takes it later."""
    from aserve.server import Server, run

    base = _two_free_ports()
    predecessor = socket.socket()
    predecessor.bind(("127.0.0.1", base + 1))
    predecessor.listen()
    server = Server(Config(app=app, port=0, lifespan="off", metrics_port=base))
    server.worker = 2
    thread = threading.Thread(target=run, args=(server.serve(),), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started and server.metrics_port is None  # serving, metrics waiting
        predecessor.close()
        while server.metrics_port is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.metrics_port == base + 1
        assert (
            "aserve_http_requests_total 0" in httpx.get(f"http://127.0.0.1:{base + 1}/metrics").text
        )
        with pytest.raises(httpx.ConnectError):  # worker 1's port is not ours
            httpx.get(f"http://127.0.0.1:{base}/metrics")
    finally:
        predecessor.close()
        server.should_exit = True
        thread.join(15)
    assert not thread.is_alive()


@pytest.mark.once
def test_worker_restarts_are_counted_by_the_supervisor_and_shown_by_every_worker() -> None:
    """The supervisor counts in memory its workers share (balance.py): kill -9 a worker, then
    SIGHUP, and both workers' /metrics show the same supervisor-wide counts."""
    from tests.test_cli import APPS

    base = _two_free_ports()
    server = AserveProcess(
        "supervised:app", "--app-dir", str(APPS), "--port", "0", "--no-access-log",
        "--workers", "2", "--metrics-port", str(base),
    )  # fmt: skip

    def restarts(port: int) -> dict[str, float]:
        samples = scrape(port)
        prefix = "aserve_worker_restarts_total"
        return {name[len(prefix) :]: value for name, value in samples.items() if prefix in name}

    def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except (httpx.HTTPError, KeyError):
                pass  # a worker not listening (yet, or any more)
            assert time.monotonic() < deadline, f"timed out: {what}\n{server.output}"
            time.sleep(0.05)

    try:
        server.wait_for_port(60)
        wait_until(lambda: scrape(base)["aserve_workers"] == 2, "two workers accept")
        wait_until(lambda: scrape(base + 1)["aserve_workers"] == 2, "worker 2's metrics")
        assert set(restarts(base).values()) == {0}
        assert {f'{{reason="{reason}"}}' for reason in RESTART_REASONS} == set(restarts(base))
        pid = int(re.search(r"Started worker 1 \(pid (\d+)\)", server.output).group(1))
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: restarts(base + 1)['{reason="crashed"}'] == 1, "a crash counted")
        wait_until(lambda: scrape(base)["aserve_workers"] == 2, "worker 1 replaced")
        counts = restarts(base)  # the new worker 1 shows what the supervisor counted
        assert counts['{reason="crashed"}'] == 1 and sum(counts.values()) == 1
        server.proc.send_signal(signal.SIGHUP)  # replaces both, one at a time
        wait_until(lambda: restarts(base)['{reason="reload"}'] == 2, "a reload counted")
        wait_until(lambda: restarts(base + 1) == restarts(base), "the same counts in both")
        counts = restarts(base + 1)
        assert counts['{reason="crashed"}'] == 1 and sum(counts.values()) == 3
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("stop_reason", "retire", "state", "expected"),
    [
        (None, None, "serving", "crashed"),
        (None, None, "starting", "start_failed"),
        (START_KILLED, None, "starting", "start_failed"),  # --timeout-worker-startup
        ("blocked", None, "serving", "blocked"),
        ("replaced", "served 1000 requests", "serving", "max_requests"),
        ("replaced", "uses 300 MB, over --limit-worker-memory", "serving", "memory"),
        ("reload", None, "serving", "reload"),
        ("fewer workers", None, "serving", "scaled_down"),
        ("shutdown", None, "serving", None),
    ],
)
def test_restart_reasons(stop_reason, retire, state, expected) -> None:
    worker = Worker(1, 1, -1, -1, "start", 0.0, state=state, retire=retire)
    worker.stop_reason = stop_reason
    assert worker.restart_reason == expected
    assert expected is None or expected in RESTART_REASONS
