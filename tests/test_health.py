"""Health for orchestrators (--health-port: /livez, /readyz) and the drain (--drain-delay).

The answers and the supervisor's view of its workers are tested as units; the behaviours an
orchestrator relies on are tested through the real CLI, with real signals and sockets.
"""

from __future__ import annotations

import re
import selectors
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.processes import AserveProcess, wait_for

from aserve.config import Config, ConfigError
from aserve.health import SelectorHealth, respond
from aserve.supervisor import SERVING, STARTING, Supervisor, Worker

APPS = Path(__file__).parent / "apps"

PASS = lambda: (True, "fine")  # noqa: E731
FAIL = lambda: (False, "not now")  # noqa: E731


# -- the answers -----------------------------------------------------------------------------


def status_and_body(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head and b"cache-control: no-store" in head
    return int(head.split()[1]), body


@pytest.mark.parametrize(
    ("request_line", "live", "ready", "status", "body"),
    [
        (b"GET /livez HTTP/1.1", PASS, FAIL, 200, b"fine\n"),
        (b"GET /livez HTTP/1.1", FAIL, PASS, 503, b"not now\n"),
        (b"GET /readyz HTTP/1.1", FAIL, PASS, 200, b"fine\n"),
        (b"GET /readyz?verbose HTTP/1.0", PASS, FAIL, 503, b"not now\n"),
        (b"HEAD /readyz HTTP/1.1", PASS, PASS, 200, b""),
        (b"GET /healthz HTTP/1.1", PASS, PASS, 404, b"not found: "),
        (b"POST /livez HTTP/1.1", PASS, PASS, 405, b"method not allowed: use GET\n"),
    ],
)
def test_probe_answers(request_line, live, ready, status, body):
    got_status, got_body = status_and_body(
        respond(request_line + b"\r\nHost: x\r\n\r\n", live, ready)
    )
    assert got_status == status
    assert got_body.startswith(body)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"health_port": 70000}, "health_port must be between 0 and 65535"),
        ({"health_port": 8000}, "health_port must differ from the app's and the metrics' ports"),
        (
            {"health_port": 9100, "metrics_port": 9100},
            "health_port must differ from the app's and the metrics' ports",
        ),
        (
            {"health_port": 9000, "bind": ["unix:/tmp/a.sock", "[::]:9000"]},
            "health_port must differ",
        ),
        ({"drain_delay": -1}, "drain_delay must be 0 or more seconds"),
    ],
)
def test_health_settings_are_checked(settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config("x:y", **settings)


def test_the_supervisor_answers_probes_from_its_selector_without_blocking():
    """SelectorHealth: accept, a head split over reads, the answer, close; a silent client
    is dropped at its deadline."""
    listening = socket.create_server(("127.0.0.1", 0))
    listening.setblocking(False)
    selector = selectors.DefaultSelector()
    health = SelectorHealth(listening, selector, PASS, FAIL)

    def turn() -> None:
        for key, _ in selector.select(0.05):
            key.data()

    try:
        with socket.create_connection(listening.getsockname(), timeout=5) as client:
            client.sendall(b"GET /readyz HTTP/1.1\r\n")
            wait_for(lambda: turn() or len(health.fds()) == 2, "the connection to be accepted")
            client.sendall(b"Host: x\r\n\r\n")
            client.settimeout(0.05)
            answer = b""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until the supervisor's side closes
                turn()
                try:
                    chunk = client.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                answer += chunk
            assert status_and_body(answer) == (503, b"not now\n")
        assert health.fds() == [listening.fileno()]  # the connection is closed
        with socket.create_connection(listening.getsockname(), timeout=5) as silent:
            wait_for(lambda: turn() or len(health.fds()) == 2, "the silent one to be accepted")
            health.expire(time.monotonic() + 60)
            assert health.fds() == [listening.fileno()]
            assert silent.recv(10) == b""  # closed, unanswered
    finally:
        health.close()
        selector.close()


def test_the_supervisor_is_live_while_every_running_loop_beats_and_ready_once_all_serve(
    monkeypatch,
):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    supervisor = Supervisor(Config("m:a", workers=2), [])
    try:
        now = time.monotonic()
        first = Worker(1, 101, -1, -1, "start", now, state=SERVING, last_beat=now, beating=True)
        importing = Worker(2, 102, -1, -1, "start", now, state=STARTING, last_beat=now - 60)
        supervisor.workers += [first, importing]
        assert supervisor._livez()[0]  # an import that has not started a loop yet: not counted
        assert supervisor._readyz() == (False, "starting: not every worker is ready yet")
        supervisor.announced = True
        assert supervisor._readyz() == (True, "ready: 1 worker serving")
        first.last_beat = now - supervisor.livez_silence - 1
        live, why = supervisor._livez()
        assert not live and why.startswith("worker 1 (pid 101) has sent no heartbeat for ")
        first.killed = True  # being replaced: the supervisor already acts on it
        assert supervisor._livez()[0]
        first.stop_reason = "blocked"
        assert supervisor._readyz() == (False, "no worker is serving (they are being replaced)")
        supervisor.drain_until = now + 5
        assert supervisor._readyz() == (False, "draining: shutting down")
    finally:
        supervisor._close()


# -- through the CLI -------------------------------------------------------------------------


class Served(AserveProcess):
    """`aserve listeners:app --port 0 --health-port 0 ...`, its log merged with stdout."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(
            "listeners:app",
            "--app-dir",
            str(APPS),
            "--port",
            "0",
            "--health-port",
            "0",
            *args,
            env=env,
            merge_output=True,
        )
        self.port = 0
        self.health = 0

    def wait_for_health(self) -> int:
        found: list[int] = []

        def logged() -> bool:
            match = re.search(r"Health checks on http://127\.0\.0\.1:(\d+) ", self.output)
            if match:
                found.append(int(match.group(1)))
            return bool(match)

        self.wait_until(logged, "the health listener")
        self.health = found[0]
        return self.health

    def wait_until_serving(self) -> None:
        self.wait_for_health()
        self.port = self.wait_for_port()

    def probe(self, path: str, timeout: float = 10) -> tuple[int, str]:
        response = httpx.get(f"http://127.0.0.1:{self.health}{path}", timeout=timeout)
        return response.status_code, response.text

    def get(self, path: str = "/", timeout: float = 10) -> httpx.Response:
        return httpx.get(
            f"http://127.0.0.1:{self.port}{path}",
            timeout=timeout,
            headers={"connection": "close"},  # each on a new connection: it must be accepted
        )

    def wait_for_probe(self, path: str, status: int, timeout: float = 30) -> str:
        seen: list[tuple[int, str]] = []
        self.wait_until(
            lambda: seen.append(self.probe(path)) or seen[-1][0] == status,
            f"{path} to answer {status}",
            timeout,
            diagnose=lambda: f"last answer: {seen[-1:]}\n{self.output}",
        )
        return seen[-1][1]


@pytest.fixture
def served():
    started: list[Served] = []

    def start(*args: str, **kwargs) -> Served:
        server = Served(*args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL)  # a supervisor's workers follow it out on their own


ONE_OR_TWO = pytest.mark.parametrize(
    "workers",
    [
        pytest.param([], id="one-process"),
        pytest.param(["--workers", "2"], id="workers-2", marks=pytest.mark.once),
    ],
)


@ONE_OR_TWO
def test_readyz_is_503_during_a_slow_lifespan_startup_then_200(served, tmp_path, workers):
    gate = tmp_path / "startup-may-finish"
    server = served(*workers, env={"ASERVE_TEST_STARTUP_GATE": str(gate)})
    server.wait_for_health()
    server.wait_until(lambda: "Waiting for application startup" in server.output, "startup")
    status, text = server.probe("/readyz")
    assert status == 503 and text.startswith("starting: "), text
    assert server.probe("/livez")[0] == 200  # starting, not stuck: the loop answers
    gate.touch()
    server.wait_for_probe("/readyz", 200)
    server.port = server.wait_for_port()
    assert server.get().status_code == 200
    assert server.stop() == 0
    assert '"GET /readyz' not in server.output and '"GET /livez' not in server.output


def test_livez_goes_unanswered_while_the_event_loop_of_one_process_is_blocked(served):
    server = served()
    server.wait_until_serving()
    assert server.probe("/livez") == (200, "ok: the event loop answers\n")
    blocked = threading.Thread(target=lambda: server.get("/block?4", timeout=30))
    blocked.start()
    try:
        # The first probe may slip in before the request blocks the loop; soon none answers.
        def unanswered() -> bool:
            try:
                server.probe("/livez", timeout=1)
            except httpx.TimeoutException:
                return True
            return False

        server.wait_until(unanswered, "a /livez probe to go unanswered", timeout=10)
    finally:
        blocked.join(30)
    assert server.probe("/livez")[0] == 200  # the loop runs again
    assert server.stop() == 0


@pytest.mark.once
def test_livez_fails_under_workers_while_a_worker_sends_no_heartbeat(served):
    server = served("--workers", "2", "--timeout-worker-healthcheck", "60")
    server.wait_until_serving()
    assert server.probe("/livez")[0] == 200
    blocked = threading.Thread(target=lambda: server.get("/block?6", timeout=30))
    blocked.start()
    try:
        text = server.wait_for_probe("/livez", 503, timeout=20)
        assert re.fullmatch(
            r"worker [12] \(pid \d+\) has sent no heartbeat for \d+\.\d s: its event loop is "
            r"blocked\n",
            text,
        )
        assert server.probe("/readyz")[0] == 200  # the other worker serves
    finally:
        blocked.join(30)
    server.wait_for_probe("/livez", 200)  # it beats again, and was never killed
    assert "blocked" not in server.output.replace("/block?6", "")
    assert server.stop() == 0


def test_probes_call_no_app_count_toward_no_limit_and_log_no_access_line(served, tmp_path):
    server = served("--limit-concurrency", "1")
    server.wait_until_serving()
    held = threading.Thread(target=lambda: server.get(f"/hold?{tmp_path}", timeout=30))
    held.start()
    try:
        server.wait_until((tmp_path / "arrived").exists, "the request to be in the app")
        assert server.get().status_code == 503  # the app's one place is taken
        for _ in range(5):
            assert server.probe("/livez")[0] == 200
            assert server.probe("/readyz")[0] == 200
    finally:
        (tmp_path / "release").touch()
        held.join(30)
    server.wait_until(lambda: '"GET /hold?' in server.output, "its access line")
    assert server.stop() == 0
    assert '"GET /readyz' not in server.output and '"GET /livez' not in server.output


@ONE_OR_TWO
def test_drain_delay_keeps_serving_with_readyz_503_then_stops(served, workers):
    server = served("--drain-delay", "5", *workers)  # room for the checks on a busy machine
    server.wait_until_serving()
    assert server.probe("/readyz")[0] == 200
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.wait_for_probe("/readyz", 503, timeout=10) == "draining: shutting down\n"
    assert server.probe("/livez")[0] == 200
    # Still accepting new connections and answering, readyz 503 or not.
    responses = [server.get() for _ in range(3)] + [server.get("/slow?0.5")]
    assert [response.status_code for response in responses] == [200] * 4
    assert server.proc.poll() is None
    assert server.stop(signal.SIGTERM) == 0  # a second SIGTERM does not cut the drain short
    assert time.monotonic() - signalled >= 5
    assert "Received SIGTERM: draining, /readyz answers 503" in server.output


@ONE_OR_TWO
def test_a_second_sigint_during_the_drain_stops_at_once(served, workers):
    server = served("--drain-delay", "60", *workers)
    server.wait_until_serving()
    server.proc.send_signal(signal.SIGINT)
    server.wait_for_probe("/readyz", 503, timeout=10)
    signalled = time.monotonic()
    assert server.stop(signal.SIGINT) == 0
    assert time.monotonic() - signalled < 30


def test_without_a_drain_delay_sigterm_stops_at_once(served):
    server = served()
    server.wait_until_serving()
    signalled = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - signalled < 20
    assert "draining" not in server.output


@pytest.mark.parametrize(
    "workers", [pytest.param([], id="one-process"), pytest.param(["--workers", "1"], id="workers")]
)
def test_a_health_port_in_use_is_one_line(workers):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = AserveProcess(
            "listeners:app",
            "--app-dir",
            str(APPS),
            "--port",
            "0",
            "--health-port",
            str(port),
            *workers,
        )
        code = server.proc.wait(30)
        server.stop()  # reaps it and collects its last lines
    assert code == 1, server.output
    errors = [line for line in server.lines if not line.startswith("INFO:")]
    message = f"Error: cannot listen on 127.0.0.1:{port} for health checks: Address already in use"
    assert errors == [message + "\n"]
