"""Workers under the supervisor: the real CLI in a subprocess, real signals, real clients."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from aserve import preload as preload_module
from aserve import supervisor as supervisor_module
from aserve.config import Config, ConfigError
from aserve.supervisor import (
    REPLACE_RETRY,
    STARTING,
    STOP_SLACK,
    CrashLoop,
    Supervisor,
    Worker,
    describe_status,
    heartbeat_interval,
    own_memory_bytes,
    request_limit,
    rss_bytes,
    startup_overdue,
    trim_stack,
)
from aserve.worker import FAILED, HEARTBEAT, READY, decode, encode, task_stacks
from processes import AserveProcess, Load

APPS = Path(__file__).parent / "apps"


class Supervised:
    """`python -m aserve tests.apps... --workers N` with its output collected on a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, app: str = "") -> None:
        command = [sys.executable, "-m", "aserve", app or "supervised:app", "--app-dir", str(APPS)]
        self.proc = subprocess.Popen(
            [*command, "--port", "0", "--no-access-log", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_for_log(self, pattern: str, timeout: float = 20, count: int = 1) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matches = list(re.finditer(pattern, self.log))
            if len(matches) >= count:
                return matches[count - 1]
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader catch the last lines
                matches = list(re.finditer(pattern, self.log))
                if len(matches) >= count:
                    return matches[count - 1]
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not logged (x{count}):\n{self.log}")

    def wait_until_running(self, timeout: float = 20) -> int:
        match = self.wait_for_log(r"running on http://127\.0\.0\.1:(\d+) with", timeout)
        self.port = int(match.group(1))
        return self.port

    def worker_pids(self) -> set[int]:
        """Pids of the live worker processes, from the process table."""
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(self.proc.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return {int(pid) for pid in out.split()}

    def send(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        pids = self.worker_pids() if self.proc.poll() is None else set()
        self.proc.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def supervised():
    started: list[Supervised] = []

    def start(*args: str, **kwargs) -> Supervised:
        server = Supervised(*args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.kill()


def get_pid(url: str, path: str = "/", timeout: float = 10) -> int:
    response = httpx.get(url + path, timeout=timeout)
    assert response.status_code == 200
    return int(response.text)


def poll(condition: Callable[[], object], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- unit tests of the pieces ---------------------------------------------------------------


def test_crash_loop_counts_failures_in_a_row_and_resets_on_success():
    loop = CrashLoop(limit=3)
    assert not loop.failed()
    assert loop.backoff() == pytest.approx(0.1)
    assert not loop.failed()
    assert loop.backoff() == pytest.approx(0.2)
    loop.succeeded()  # a worker became ready: the earlier failures were not a loop
    assert not loop.failed()
    assert not loop.failed()
    assert loop.failed()
    for _ in range(20):
        loop.failed()
    assert loop.backoff() == 2.0  # capped


def test_request_limit_jitter_stays_in_range_and_varies():
    rng = random.Random(1)
    limits = [request_limit(100, 10, rng) for _ in range(500)]
    assert min(limits) == 100 and max(limits) == 110
    assert len(set(limits)) == 11
    assert request_limit(100, 0, rng) == 100
    assert request_limit(None, 10, rng) is None


def test_heartbeat_interval_gives_several_beats_per_timeout():
    assert heartbeat_interval(30.0) == 1.0
    assert heartbeat_interval(1.0) == 0.25
    for timeout in (0.2, 1.0, 5.0, 30.0, 300.0):
        assert timeout / heartbeat_interval(timeout) >= 4


def test_exit_status_is_described_for_an_operator():
    assert describe_status(3 << 8) == "exited with status 3"
    assert describe_status(signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_status(signal.SIGSEGV) == "was killed by SIGSEGV"


def test_channel_messages_survive_being_split_anywhere():
    stream = encode(READY) + encode(HEARTBEAT) + encode(FAILED, "Traceback: é\nline 2")
    for cut in range(len(stream) + 1):
        buffer = bytearray()
        messages = []
        for part in (stream[:cut], stream[cut:]):
            buffer += part
            messages += list(decode(buffer))
        assert messages == [(READY, ""), (HEARTBEAT, ""), (FAILED, "Traceback: é\nline 2")]
        assert not buffer


def test_rss_of_this_process_is_read_from_proc():
    rss = rss_bytes(os.getpid())
    assert rss is not None and 1 << 20 < rss < 1 << 34
    assert rss_bytes(2**22 + 12345) is None


def test_own_memory_leaves_out_pages_shared_with_the_parent():
    shared = b"x" * (64 * 1024 * 1024)  # written before the fork: shared by both processes
    reader, writer = os.pipe()
    with warnings.catch_warnings():
        # pytest's threads: the child only touches memory and sleeps, it takes no lock.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # never back into pytest (its xdist channel), whatever happens
        try:
            os.close(reader)
            own = bytearray(32 * 1024 * 1024)  # written after: the child's own
            own[::4096] = b"y" * len(own[::4096])
            os.write(writer, b"1")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(writer)
    try:
        assert os.read(reader, 1) == b"1"
        rss = rss_bytes(pid)
        assert rss is not None and rss > 96 * 1024 * 1024  # both, in RSS
        uss, spent = own_memory_bytes(pid, 1)
        assert uss is not None and 32 * 1024 * 1024 < uss < 64 * 1024 * 1024
        assert spent > 0  # read from smaps_rollup
        assert own_memory_bytes(pid, 1 << 40) == (rss_bytes(pid), 0.0)  # under: RSS, no walk
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(reader)
    assert own_memory_bytes(pid, 1) == (None, 0.0)
    assert len(shared) == 64 * 1024 * 1024


def test_worker_settings_are_validated(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert not Config(app="m:a").supervised
    assert Config(app="m:a", workers=1).supervised
    assert Config(app="m:a", limit_max_requests=10).supervised
    assert Config(app="m:a", limit_worker_memory=100).supervised
    for bad in (
        {"workers": 0},
        {"timeout_worker_healthcheck": 0},
        {"limit_max_requests": 0},
        {"limit_max_requests_jitter": -1},
        {"limit_worker_memory": -5},
    ):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            Config(app="m:a", **bad)
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert Config(app="m:a").workers == 3
    assert Config(app="m:a", workers=2).workers == 2  # the flag wins
    monkeypatch.setenv("WEB_CONCURRENCY", "many")
    with pytest.raises(ConfigError, match="WEB_CONCURRENCY"):
        Config(app="m:a")


def test_only_a_worker_still_starting_and_not_stopped_is_overdue():
    worker = Worker(1, 4242, -1, -1, "start", started_at=100.0)
    assert worker.state == STARTING
    assert not startup_overdue(worker, 5.0, 105.0)
    assert startup_overdue(worker, 5.0, 105.5)
    assert not startup_overdue(worker, None, 1e9)  # --timeout-worker-startup 0: no deadline
    worker.stop_reason = "shutdown"  # told to stop: its stop deadline applies instead
    assert not startup_overdue(worker, 5.0, 200.0)
    worker.stop_reason = None
    worker.state = "serving"
    assert not startup_overdue(worker, 5.0, 200.0)


class FakeSupervisor:
    """A `Supervisor` whose workers are records, not processes: signals are only noted."""

    STACK = '  File "/srv/main.py", line 3 in <module>\n'

    def __init__(self, monkeypatch, **settings) -> None:
        monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
        config = Config(app="m:a", workers=2, timeout_worker_healthcheck=1, **settings)
        self.sup = Supervisor(config, [])
        self.signals: list[tuple[int, int]] = []
        monkeypatch.setattr(self.sup, "_kill", lambda w, sig: self.signals.append((w.pid, sig)))
        monkeypatch.setattr(self.sup, "_read_stack", lambda w: self.STACK)

    def worker(self, pid: int, purpose: str = "start", state: str = STARTING, **kw) -> Worker:
        worker = Worker(pid - 100, pid, -1, -1, purpose, started_at=0.0, state=state, **kw)
        self.sup.workers.append(worker)
        return worker


@pytest.fixture
def fake_supervisor(monkeypatch):
    made: list[FakeSupervisor] = []

    def make(**settings) -> FakeSupervisor:
        made.append(FakeSupervisor(monkeypatch, **settings))
        return made[-1]

    yield make
    for fake in made:
        fake.sup._close()  # its wake-up pipe and selector


def test_a_worker_past_its_start_deadline_is_dumped_killed_and_counted_once(fake_supervisor):
    fake = fake_supervisor(timeout_worker_startup=5)
    sup = fake.sup
    slow = fake.worker(101)
    slow.last_beat = 0.0  # no heartbeat yet (still importing): only the deadline applies
    sup._check_health(4.0)
    assert fake.signals == [] and sup.crash_loop.failures == 0
    sup._check_health(5.5)
    assert fake.signals == [(101, signal.SIGUSR1), (101, signal.SIGKILL)]
    assert sup.crash_loop.failures == 1 and sup.respawn_at[1] > 5.5  # retried after a backoff
    assert fake.STACK.strip() in slow.error and "--timeout-worker-startup" in slow.error
    sup._check_health(9.0)  # killed already: not again
    assert len(fake.signals) == 2
    sup._exited(slow, signal.SIGKILL, 9.0)  # its exit is not a second failure, nor a death
    assert sup.crash_loop.failures == 1 and not sup.deaths and slow not in sup.workers


def test_a_starting_worker_whose_loop_beat_then_went_silent_is_blocked(fake_supervisor):
    fake = fake_supervisor(timeout_worker_startup=60)
    sup = fake.sup
    quiet = fake.worker(101)  # its loop never ran: left to the start deadline
    beating = fake.worker(102, beating=True, last_beat=10.0)
    sup._check_health(11.5)
    assert fake.signals == [(102, signal.SIGUSR1), (102, signal.SIGKILL)]
    assert "blocked during start-up" in beating.error and sup.crash_loop.failures == 1
    assert quiet.stop_reason is None


def test_a_replacement_past_its_deadline_aborts_the_reload_or_retries_recycling(fake_supervisor):
    fake = fake_supervisor(timeout_worker_startup=5)
    sup = fake.sup
    old1 = fake.worker(101, state="serving", last_beat=100.0)
    old2 = fake.worker(102, state="serving", last_beat=100.0)
    sup.reloading, sup.reload_queue = True, [old2]
    fake.worker(201, "reload", replaces=old1)
    sup._check_health(6.0)
    assert not sup.reloading and sup.reload_queue == []  # aborted, old2 not replaced either
    assert old1.stop_reason is None and old2.stop_reason is None  # the old workers serve
    assert sup.crash_loop.failures == 0  # a failed reload is not a crash loop
    old1.retire = "served 1000 requests"
    fake.worker(202, "recycle", replaces=old1)
    sup._check_health(6.0)
    assert old1.retry_at == 6.0 + REPLACE_RETRY and old1.stop_reason is None


def test_giving_up_stops_counting_the_workers_still_starting(fake_supervisor):
    fake = fake_supervisor(timeout_worker_startup=5)
    sup = fake.sup
    sup.crash_loop.failures = sup.crash_loop.limit - 1
    first = fake.worker(101)
    second = fake.worker(102, beating=True, last_beat=4.0)  # its loop is silent too
    sup._check_health(6.0)
    assert sup.stopping == "graceful" and "failed to start 5 times" in sup.failure
    assert first.killed and not second.killed  # asked to stop (SIGTERM), not counted
    assert (102, signal.SIGTERM) in fake.signals
    assert sup.crash_loop.failures == sup.crash_loop.limit


def test_a_worker_stopped_while_starting_has_a_deadline_even_without_a_graceful_one(
    fake_supervisor,
):
    fake = fake_supervisor(timeout_graceful_shutdown=None, timeout_worker_startup=None)
    sup = fake.sup
    starting = fake.worker(101)
    serving = fake.worker(102, state="serving", last_beat=10.0)
    late = fake.worker(103)  # becomes ready just after it is told to stop
    sup._stop_all("graceful", 10.0)
    assert starting.stop_deadline == 10.0 + STOP_SLACK  # nothing in flight to wait for
    assert serving.stop_deadline is None  # no graceful timeout: its requests take their time
    sup._ready(late, 11.0)
    assert late.stop_deadline is None  # it may have taken requests: the graceful rule again
    sup._enforce_deadlines(10.0 + STOP_SLACK - 0.1)
    assert not starting.killed
    sup._enforce_deadlines(10.0 + STOP_SLACK)
    assert starting.killed and (101, signal.SIGKILL) in fake.signals
    assert not serving.killed and not late.killed


def test_memory_checks_of_a_big_worker_are_spaced_by_what_they_cost(fake_supervisor, monkeypatch):
    fake = fake_supervisor(limit_worker_memory=100)
    sup = fake.sup
    small = fake.worker(101, state="serving", last_beat=0.0)
    big = fake.worker(102, state="serving", last_beat=0.0)
    read = {101: (10 << 20, 0.0), 102: (90 << 20, 0.05)}  # big: 50 ms of page walk
    checked: list[int] = []

    def own_memory(pid, limit):
        checked.append(pid)
        return read[pid]

    monkeypatch.setattr(supervisor_module, "own_memory_bytes", own_memory)
    sup._check_memory(100, 10.0)
    assert checked == [101, 102]
    assert small.memory_check_at == 11.0  # every second
    assert big.memory_check_at == 15.0  # 50 ms is 1% of 5 s
    sup._check_memory(100, 11.0)
    assert checked == [101, 102, 101]
    read[102] = (120 << 20, 0.05)
    sup._check_memory(100, 15.0)
    assert big.retire is not None and "120 MB of its own memory (USS)" in big.retire
    assert small.retire is None


def test_timeout_worker_startup_is_validated_and_can_be_turned_off(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert Config(app="m:a").timeout_worker_startup == 60.0
    assert Config(app="m:a", timeout_worker_startup=None).timeout_worker_startup is None
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="timeout_worker_startup must be greater than 0"):
            Config(app="m:a", timeout_worker_startup=bad)


def test_stacks_lose_the_supervisor_frames_below_run_worker():
    stack = (
        "Current thread 0x00007f (most recent call first):\n"
        '  File "/srv/main.py", line 3 in <module>\n'
        '  File "/venv/aserve/worker.py", line 314 in _worker\n'
        '  File "/venv/aserve/worker.py", line 253 in run_worker\n'
        '  File "/venv/aserve/supervisor.py", line 268 in _spawn\n'
        '  File "/venv/aserve/supervisor.py", line 450 in _manage\n'
        "\n"
        "Task 'Task-1' (most recent call first):\n"
        '  File "/srv/main.py", line 9 in startup\n'
    )
    trimmed = trim_stack(stack)
    assert "supervisor.py" not in trimmed
    assert "line 253 in run_worker\n\nTask" in trimmed
    assert trimmed.endswith("line 9 in startup\n")
    assert trim_stack("no frames at all") == "no frames at all"


def test_task_stacks_follow_the_await_chain_to_the_line_that_waits():
    async def connect() -> None:
        await asyncio.sleep(60)  # waits here

    async def startup() -> None:
        await connect()

    async def main() -> str:
        task = asyncio.get_running_loop().create_task(startup(), name="startup")
        await asyncio.sleep(0.01)
        text = task_stacks()
        task.cancel()
        return text

    assert task_stacks() == ""  # no running loop (a worker still importing the app)
    text = asyncio.run(main())
    block = text.split("Task 'startup' (most recent call first):\n")[1].split("\nTask ")[0]
    names = re.findall(r'File "[^"]+", line \d+ in (\w+)', block)
    assert names == ["sleep", "connect", "startup"], text  # innermost first, as faulthandler
    line = connect.__code__.co_firstlineno + 1
    assert f"line {line} in connect" in block


# -- the real thing ------------------------------------------------------------------------


@pytest.mark.once
def test_workers_serve_and_sigterm_stops_them_gracefully(supervised, tmp_path):
    server = supervised("--workers", "2", env={"ASERVE_TEST_SHUTDOWN_DIR": str(tmp_path)})
    server.wait_until_running()
    workers = server.worker_pids()
    assert len(workers) == 2
    result: dict[str, httpx.Response] = {}
    in_flight = threading.Thread(
        target=lambda: result.setdefault("r", httpx.get(server.url + "/slow?1", timeout=10))
    )
    in_flight.start()
    poll(lambda: list(tmp_path.glob("arrived-*")), what="the request to arrive")
    assert server.stop(signal.SIGTERM) == 0
    in_flight.join(10)
    assert result["r"].status_code == 200  # the in-flight request finished
    assert int(result["r"].text) in workers
    shut_down = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("shutdown-*"))
    assert shut_down == sorted(workers)  # lifespan shutdown ran in every worker
    for pid in workers:
        assert f"[{pid}] Application shutdown complete." in server.log  # worker lines carry pids
    assert "Stopped supervisor process" in server.log


@pytest.mark.once
def test_a_burst_of_connections_is_shared_between_two_workers(supervised):
    server = supervised("--workers", "2")
    port = server.wait_until_running()
    request = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    counts: collections.Counter[int] = collections.Counter()
    for _round in range(4):
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(256)]
        for sock in socks:
            sock.sendall(request)
        for sock in socks:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            sock.close()
            counts[int(data.rpartition(b"\r\n\r\n")[2])] += 1
    assert sum(counts.values()) == 1024 and len(counts) == 2
    for pid, served in counts.items():
        assert 0.35 <= served / 1024 <= 0.65, f"worker {pid} served {served} of 1024: {counts}"


@pytest.mark.once
def test_a_killed_worker_is_replaced_and_the_log_says_which(supervised):
    server = supervised("--workers", "2")
    server.wait_until_running()
    before = server.worker_pids()
    victim = get_pid(server.url)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    poll(lambda: len(server.worker_pids() - before) == 1, 10, "a new worker")
    match = server.wait_for_log(r"Worker (\d) \(pid (\d+)\) is ready", count=3)
    replaced_in = time.monotonic() - killed_at
    assert replaced_in < 3, replaced_in  # about a second, with room for a busy machine
    died = server.wait_for_log(r"Worker (\d) \(pid (\d+)\) was killed by SIGKILL.*\n")
    assert int(died.group(2)) == victim
    assert "has died 1 time" in died.group(0)
    assert match.group(1) == died.group(1)  # the same worker number came back
    new = (server.worker_pids() - before).pop()
    poll(lambda: new in {get_pid(server.url) for _ in range(20)}, what="the new worker serving")
    os.kill(new, signal.SIGKILL)
    died = server.wait_for_log(r"Worker \d \(pid \d+\) was killed by SIGKILL.*\n", count=2)
    assert f"pid {new}" in died.group(0) and "has died 2 times" in died.group(0)
    assert server.stop() == 0


@pytest.mark.once
@pytest.mark.parametrize(
    ("app", "error"),
    [
        ("tests_missing_module:app", "could not import module 'tests_missing_module'"),
        ("supervised:failing_startup", "the database is unreachable"),
    ],
)
def test_a_worker_that_cannot_start_ends_in_exit_3_with_the_error_once(supervised, app, error):
    server = supervised("--workers", "2", app=app)
    code = server.proc.wait(30)
    server._reader.join(5)
    assert code == 3, server.log
    assert server.log.count(error) == 2, server.log  # printed once, then the final summary
    assert "failed to start 5 times in a row" in server.log
    assert server.log.strip().splitlines()[-1].startswith("Error: workers failed to start")


@pytest.mark.once
def test_a_blocked_event_loop_is_detected_its_stack_logged_and_the_worker_replaced(supervised):
    server = supervised("--workers", "1", "--timeout-worker-healthcheck", "1")
    server.wait_until_running()
    blocked = get_pid(server.url)
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/block", timeout=15)  # its worker is killed under it
    log = server.wait_for_log(
        r"Worker 1 \(pid \d+\) has not answered its heartbeat(.|\n)*?\n(?=[A-Z]+:)"
    ).group(0)
    assert f"Worker 1 (pid {blocked}) has not answered its heartbeat" in log
    assert "supervised.py" in log and "in app" in log
    line = next(
        n
        for n, text in enumerate((APPS / "supervised.py").read_text().splitlines(), 1)
        if "time.sleep(60)" in text
    )
    assert f'supervised.py", line {line} in app' in log  # the very line that blocks
    server.wait_for_log(r"after its event loop blocked")
    poll(lambda: get_pid(server.url) != blocked, what="a new worker serving")


@pytest.mark.once
def test_sighup_restarts_every_worker_under_load_without_a_failed_request(supervised):
    server = supervised("--workers", "2")
    server.wait_until_running()
    before = server.worker_pids()
    with Load(server.url) as load:
        load.wait_for(200)
        server.send(signal.SIGHUP)
        server.wait_for_log("Reload complete")
        # Complete means no old worker accepts any more, though they may still drain.
        fresh = {get_pid(server.url) for _ in range(30)}  # a new connection each
        assert not fresh & before, fresh
        poll(lambda: not (server.worker_pids() & before), what="the old workers to exit")
        load.wait_for(200)
    assert load.failures == [], load.failures[:5]
    after = server.worker_pids()
    assert len(after) == 2 and not after & before
    assert set(load.pids) >= after  # the new workers served the load
    assert server.stop() == 0


@pytest.mark.once
@pytest.mark.parametrize("path", ["/", "/slow?0.05"])
def test_sighup_under_http2_load_loses_no_request(supervised, path):
    """Each draining worker ends its HTTP/2 connections with GOAWAY once none of their
    streams is in flight (docs/http2.md): httpx clients (with /slow, each has a request in
    flight whenever the restart reaches it) go on to the new workers, none failing."""
    server = supervised("--workers", "2")
    server.wait_until_running()
    before = server.worker_pids()
    with Load(server.url, keep_alive=6, new_connections=2, http2=True, path=path) as load:
        load.wait_for(200)
        server.send(signal.SIGHUP)
        server.wait_for_log("Reload complete")
        poll(lambda: not (server.worker_pids() & before), what="the old workers to exit")
        load.wait_for(200)
    assert load.failures == [], load.failures[:5]
    assert set(load.pids) >= server.worker_pids()  # the new workers served the load
    assert server.stop() == 0


@pytest.mark.once
def test_max_requests_recycles_workers_under_http2_load_without_a_failed_request(supervised):
    """Recycling (--limit-max-requests, counting streams) ends a worker's HTTP/2 connections
    as a restart does: each worker replaced several times, no request lost."""
    server = supervised(
        "--workers", "2", "--limit-max-requests", "150", "--limit-max-requests-jitter", "20"
    )
    server.wait_until_running()
    first = server.worker_pids()
    with Load(server.url, keep_alive=4, new_connections=1, http2=True) as load:
        poll(lambda: server.log.count("requests: replacing it") >= 4 or load.failures, 60)
        poll(lambda: len(load.pids) >= 6 or load.failures, 40)
        load.wait_for(50)
    assert load.failures == [], load.failures[:5]
    assert not (server.worker_pids() & first)
    served = [int(n) for n in re.findall(r"served (\d+) requests: replacing it", server.log)]
    assert served and all(150 <= n <= 170 for n in served), served
    assert server.stop() == 0


@pytest.mark.once
def test_sigterm_under_http2_load_answers_every_request_in_flight():
    """One process stopped (SIGTERM) under httpx HTTP/2 load (/slow: requests always in
    flight): every request sent before the GOAWAY is answered; one sent after it is named
    as not processed, which httpx sends again on a new connection, and only that fails, to
    connect (no server listens any more), never with a connection lost or a response cut."""
    server = AserveProcess(
        "supervised:app", "--app-dir", str(APPS), "--port", "0", "--no-access-log"
    )
    try:
        port = server.wait_for_port()
        load = Load(
            f"http://127.0.0.1:{port}",
            keep_alive=6,
            new_connections=0,
            http2=True,
            path="/slow?0.1",
        )
        with load:
            load.wait_for(60)
            at_signal = load.ok
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(20) == 0
        assert load.ok >= at_signal + 6  # the six in flight, at least, were answered
        assert all(failure.startswith("ConnectError") for failure in load.failures), load.failures
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(5)


_H2LOAD_SUMMARY = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored"
)


@pytest.mark.once
@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) missing")
@pytest.mark.parametrize("streams", [10, 1])
def test_sighup_under_h2load_answers_every_request_processed(supervised, tmp_path, streams):
    """h2load (`-c 8 -m 10`, and `-m 1`, whose connections are often idle when the restart
    reaches them) against `--workers 2` through a SIGHUP: every request the server processed
    is answered 200; none is reset or lost with its connection.

    h2load gives up the requests the GOAWAY names as not processed, at most its streams per
    connection (docs/http2.md, Graceful shutdown): those that crossed the GOAWAY, and with
    `-m 10`, whose streams keep each connection busy past GOAWAY_GRACE, those it opened after
    it. Its nghttp2 counts them as failed (REFUSED_STREAM, no start time in --log-file) and
    h2load never opens a new HTTP/2 connection to send them again, as curl, browsers and
    httpx do.
    """
    server = supervised("--workers", "2")
    server.wait_until_running()
    before = server.worker_pids()
    log = tmp_path / "h2load.log"
    connections = 8
    options = ["-D", "4", "-c", str(connections), "-m", str(streams), f"--log-file={log}"]
    h2load = subprocess.Popen(
        ["h2load", *options, server.url + "/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        poll(lambda: log.exists() and log.stat().st_size > 20_000, what="h2load's requests")
        server.send(signal.SIGHUP)
        server.wait_for_log("Reload complete")
        poll(lambda: not (server.worker_pids() & before), what="the old workers to exit")
        # Every connection was ended by the restart while h2load ran: none of its requests
        # was still in flight when its run ended.
        assert h2load.poll() is None, "the restart took longer than h2load's run"
        output, _ = h2load.communicate(timeout=30)
    finally:
        if h2load.poll() is None:
            h2load.kill()
            h2load.wait(5)
    summary = _H2LOAD_SUMMARY.search(output)
    assert summary is not None, output
    _, started, done, succeeded, failed, errored = map(int, summary.groups())
    assert "0 4xx, 0 5xx" in output, output
    entries = [line.split("\t") for line in log.read_text().splitlines()]
    sent = [status for start, status, _ in entries if start != "0"]
    refused = [status for start, status, _ in entries if start == "0"]
    assert succeeded > 0 and sent == ["200"] * succeeded, output
    assert failed == errored == len(refused), output
    # Started and never done: dropped when the connection ended (h2load's -D summary counts
    # those nowhere else). With the refused ones, at most h2load's streams per connection.
    assert refused == ["-1"] * len(refused), output
    assert (started - done) + len(refused) <= connections * streams, output
    assert server.stop() == 0


@pytest.mark.once
def test_sighup_with_one_worker_keeps_serving_and_aborts_on_broken_code(supervised, tmp_path):
    broken = tmp_path / "broken"
    server = supervised("--workers", "1", env={"ASERVE_TEST_BREAK_IMPORT": str(broken)})
    server.wait_until_running()
    with Load(server.url, keep_alive=2, new_connections=1) as load:
        load.wait_for(100)
        first = server.worker_pids()
        server.send(signal.SIGHUP)
        server.wait_for_log("Reload complete")
        poll(lambda: server.worker_pids() and not (server.worker_pids() & first), what="exit")
        load.wait_for(100)
        second = server.worker_pids()
        broken.write_text("x")  # the code on disk no longer imports
        server.send(signal.SIGHUP)
        aborted = server.wait_for_log(r"Reload aborted: .*\n").group(0)
        load.wait_for(100)
    assert load.failures == [], load.failures[:5]
    assert "the new code is broken" in aborted and "keeping the running workers" in aborted
    assert server.worker_pids() == second  # the old worker still serves
    assert get_pid(server.url) in second
    assert server.stop() == 0


def line_of(app_file: str, text: str) -> int:
    """The number of the line in tests/apps/`app_file` that contains `text`."""
    lines = (APPS / app_file).read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if text in line)


def wait_for_exit(server: Supervised, timeout: float = 60) -> int:
    code = server.proc.wait(timeout)
    server._reader.join(5)
    return code


@pytest.mark.once
def test_an_app_hanging_at_import_is_killed_with_its_stack_and_ends_in_exit_3(supervised, tmp_path):
    hang = tmp_path / "hang"
    hang.write_text("x")
    server = supervised(
        "--workers",
        "2",
        "--timeout-worker-startup",
        "1",
        app="stuck:app",
        env={"ASERVE_TEST_HANG_IMPORT": str(hang)},
    )
    assert wait_for_exit(server) == 3, server.log
    log = server.log
    line = line_of("stuck.py", "time.sleep(1e6)  # the import hangs here")
    # The stack names the line that hangs, once however many workers hung there.
    assert log.count(f'stuck.py", line {line} in <module>') == 1, log
    assert "supervisor.py" not in log  # the frames below the fork are left out
    assert "not ready after 1 s, the --timeout-worker-startup" in log
    assert "failed to start 5 times in a row" in log
    assert log.strip().splitlines()[-1] == (
        "Error: workers failed to start 5 times in a row: not ready after 1 s, the "
        "--timeout-worker-startup (raise it if the app needs longer to start)"
    )


@pytest.mark.once
@pytest.mark.parametrize(
    ("app", "flags", "hangs_at", "why"),
    [
        (
            "stuck:hanging_startup",
            ("--timeout-worker-startup", "2"),
            ("await asyncio.sleep(1e6)", "hanging_startup"),
            "not ready after 2 s, the --timeout-worker-startup",
        ),
        (
            "stuck:blocking_startup",
            ("--timeout-worker-healthcheck", "1", "--timeout-worker-startup", "120"),
            ("time.sleep(1e6)  # the startup blocks", "blocking_startup"),
            "its event loop blocked during start-up: no heartbeat for 1 s",
        ),
    ],
)
def test_a_lifespan_startup_that_hangs_or_blocks_is_killed_as_a_startup_failure(
    supervised, app, flags, hangs_at, why
):
    server = supervised("--workers", "1", *flags, app=app)
    assert wait_for_exit(server) == 3, server.log
    line = line_of("stuck.py", hangs_at[0])
    # Awaiting (its loop runs): the waiting task's stack shows the line; blocked: the thread's.
    assert f'stuck.py", line {line} in {hangs_at[1]}' in server.log, server.log
    assert why in server.log
    assert "failed to start 5 times in a row" in server.log


@pytest.mark.once
@pytest.mark.parametrize(
    ("app", "ends"),
    [
        # Awaiting: the worker cancels its startup and exits at once, its cleanup run.
        ("stuck:hanging_startup", r"Stopped worker 1 \(pid \d+\) \(shutdown\)"),
        # Blocking its loop: it cannot give up by itself; killed after STOP_SLACK.
        ("stuck:blocking_startup", r"Worker 1 \(pid \d+\) did not stop in time; killing it"),
    ],
)
def test_a_worker_told_to_stop_while_its_startup_hangs_is_not_waited_for_forever(
    supervised, tmp_path, app, ends
):
    cancelled = tmp_path / "cancelled"
    server = supervised(
        "--workers",
        "1",
        "--timeout-worker-startup",
        "0",  # no start deadline: only the stop deadline can end it
        "--timeout-worker-healthcheck",
        "300",
        app=app,
        # No --timeout-graceful-shutdown: a serving worker would be waited for as long as
        # its requests take.
        env={"ASERVE_TIMEOUT_GRACEFUL_SHUTDOWN": "none", "ASERVE_TEST_CANCELLED": str(cancelled)},
    )
    server.wait_for_log(r"Waiting for application startup\.", timeout=30)
    time.sleep(0.3)  # into the startup's sleep
    server.send(signal.SIGTERM)
    began = time.monotonic()
    assert wait_for_exit(server, timeout=30) == 0, server.log
    took = time.monotonic() - began
    assert re.search(ends, server.log), server.log
    if app == "stuck:hanging_startup":
        assert cancelled.read_text().startswith("cancelled"), server.log
        assert "did not stop in time" not in server.log
        assert took < STOP_SLACK, server.log
    else:
        assert took >= STOP_SLACK - 0.5, server.log


@pytest.mark.once
def test_a_slow_lifespan_startup_whose_loop_runs_is_not_killed(supervised):
    server = supervised(
        "--workers",
        "1",
        "--timeout-worker-healthcheck",
        "0.5",
        app="stuck:slow_startup",
        env={"ASERVE_TEST_STARTUP_DELAY": "3"},  # six health-check timeouts
    )
    server.wait_until_running(60)
    assert get_pid(server.url) in server.worker_pids()
    assert "could not start" not in server.log and "blocked" not in server.log
    assert server.stop() == 0


@pytest.mark.once
def test_sighup_while_the_new_code_hangs_at_import_keeps_the_old_workers(supervised, tmp_path):
    hang = tmp_path / "hang"
    server = supervised(
        "--workers",
        "2",
        "--timeout-worker-startup",
        "2",
        app="stuck:app",
        env={"ASERVE_TEST_HANG_IMPORT": str(hang)},
    )
    server.wait_until_running()
    before = server.worker_pids()
    with Load(server.url, keep_alive=2, new_connections=1) as load:
        load.wait_for(100)
        hang.write_text("x")  # the code on disk now hangs when imported
        server.send(signal.SIGHUP)
        aborted = server.wait_for_log(r"Reload aborted: .*\n", timeout=40).group(0)
        load.wait_for(100)
        assert server.worker_pids() == before  # the hung replacement is gone, the old serve
        hang.unlink()  # fixed: the next SIGHUP goes through
        server.send(signal.SIGHUP)
        server.wait_for_log("Reload complete", timeout=40)
        poll(lambda: not (server.worker_pids() & before), 40, "the old workers to exit")
        load.wait_for(100)
    assert load.failures == [], load.failures[:5]
    assert "not ready after 2 s, the --timeout-worker-startup" in aborted
    assert "keeping the running workers" in aborted
    line = line_of("stuck.py", "time.sleep(1e6)  # the import hangs here")
    assert f'stuck.py", line {line} in <module>' in server.log
    assert server.stop() == 0


@pytest.mark.once
def test_a_recycling_replacement_that_hangs_leaves_the_old_worker_serving(supervised, tmp_path):
    hang = tmp_path / "hang"
    server = supervised(
        "--workers",
        "1",
        "--limit-max-requests",
        "20",
        "--timeout-worker-startup",
        "1",
        app="stuck:app",
        env={"ASERVE_TEST_HANG_IMPORT": str(hang)},
    )
    server.wait_until_running()
    hang.write_text("x")
    old = get_pid(server.url)
    pids = {get_pid(server.url) for _ in range(25)}  # past its limit
    server.wait_for_log(r"Could not replace worker 1: .*not ready after 1 s.*\n", timeout=40)
    pids |= {get_pid(server.url) for _ in range(10)}
    assert pids == {old}  # the old worker kept serving
    assert server.worker_pids() == {old}
    assert server.proc.poll() is None  # a failed replacement is not a crash loop
    assert server.stop() == 0


@pytest.mark.once
def test_max_requests_recycles_workers_under_load_without_a_failed_request(supervised):
    server = supervised(
        "--workers", "1", "--limit-max-requests", "150", "--limit-max-requests-jitter", "20"
    )
    server.wait_until_running()
    with Load(server.url) as load:
        poll(lambda: server.log.count("requests: replacing it") >= 3 or load.failures, 40)
        # The third worker serves on until its replacement is ready: wait for that one's answers.
        poll(lambda: len(load.pids) >= 4 or load.failures, 40)
        load.wait_for(50)
    assert load.failures == [], load.failures[:5]
    assert len(load.pids) >= 4  # one worker at a time, several generations
    # Each said so at its limit (it serves on until its replacement is ready).
    served = [int(n) for n in re.findall(r"served (\d+) requests: replacing it", server.log)]
    assert served and all(150 <= n <= 170 for n in served), served
    assert server.stop() == 0


@pytest.mark.once
def test_memory_limit_recycles_a_worker(supervised):
    server = supervised("--workers", "1", "--limit-worker-memory", "60")
    server.wait_until_running()
    hog = get_pid(server.url, "/grow")  # 64 MiB more
    server.wait_for_log(
        rf"Worker 1 \(pid {hog}\) uses \d+ MB of its own memory \(USS\), over --limit-worker-memory"
    )
    poll(lambda: hog not in server.worker_pids(), what="the worker to be replaced")
    assert get_pid(server.url) != hog
    assert server.stop() == 0


@pytest.mark.once
def test_memory_limit_counts_a_workers_own_memory_not_its_preloaded_pages(supervised):
    server = supervised(
        "--workers",
        "1",
        "--preload",
        "--limit-worker-memory",
        "60",
        env={"ASERVE_TEST_PRELOAD_MB": "100"},  # imported once, by the supervisor
    )
    server.wait_until_running()
    pid = get_pid(server.url)
    rss = rss_bytes(pid)
    assert rss is not None and rss > 100 * 1024 * 1024  # RSS counts the shared 100 MB
    time.sleep(3)  # three checks, each over the limit in RSS
    assert "over --limit-worker-memory" not in server.log, server.log
    assert get_pid(server.url) == pid
    hog = get_pid(server.url, "/grow")  # 64 MiB of its own
    assert hog == pid
    server.wait_for_log(rf"Worker 1 \(pid {hog}\) uses \d+ MB of its own memory \(USS\)")
    poll(lambda: hog not in server.worker_pids(), what="the worker to be replaced")
    assert get_pid(server.url) != hog
    assert server.stop() == 0


@pytest.mark.once
def test_sigttin_and_sigttou_grow_and_shrink_but_keep_one(supervised):
    server = supervised("--workers", "1")
    server.wait_until_running()
    server.send(signal.SIGTTIN)
    server.wait_for_log(r"Worker 2 \(pid \d+\) is ready")
    assert len(server.worker_pids()) == 2
    with Load(server.url, keep_alive=2, new_connections=1) as load:
        load.wait_for(100)
        server.send(signal.SIGTTOU)
        server.wait_for_log(r"Stopped worker 2 \(pid \d+\) \(fewer workers\)")
        server.send(signal.SIGTTOU)
        server.wait_for_log("keeping the last worker")
        load.wait_for(100)
    assert load.failures == [], load.failures[:5]
    assert len(server.worker_pids()) == 1
    assert server.stop() == 0


@pytest.mark.once
def test_a_second_sigint_stops_at_once(supervised, tmp_path):
    server = supervised(
        "--workers",
        "1",
        "--timeout-graceful-shutdown",
        "60",
        env={"ASERVE_TEST_SHUTDOWN_DIR": str(tmp_path)},
    )
    server.wait_until_running()

    def slow_request() -> None:
        with contextlib.suppress(httpx.HTTPError):  # cut off by the quick stop
            httpx.get(server.url + "/slow?30", timeout=40)

    client = threading.Thread(target=slow_request, daemon=True)
    client.start()
    poll(lambda: list(tmp_path.glob("arrived-*")), what="the request to arrive")
    server.send(signal.SIGINT)
    server.wait_for_log("stopping the workers")
    time.sleep(0.3)
    assert server.proc.poll() is None  # still waiting for the slow request
    started = time.monotonic()
    server.send(signal.SIGINT)
    assert server.proc.wait(10) == 0
    assert time.monotonic() - started < 5


@pytest.mark.once
def test_web_concurrency_sets_the_worker_count(supervised):
    server = supervised(env={"WEB_CONCURRENCY": "2"})
    server.wait_until_running()
    assert "with 2 workers" in server.log
    assert len(server.worker_pids()) == 2
    assert server.stop() == 0


@pytest.mark.once
def test_serve_with_an_app_object_and_workers(tmp_path):
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            import aserve

            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": str(os.getpid()).encode()})

            if __name__ == "__main__":
                aserve.serve(app, port=0, workers=2, lifespan="off")
                print("serve returned in", os.getpid(), flush=True)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        poll(lambda: "running on" in "".join(lines), what="the server to start")
        port = int(re.search(r"127\.0\.0\.1:(\d+)", "".join(lines)).group(1))
        pids = {get_pid(f"http://127.0.0.1:{port}") for _ in range(30)}
        assert pids and proc.pid not in pids
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0
    returned = [line for line in out.splitlines() if line.startswith("serve returned")]
    assert returned == [f"serve returned in {proc.pid}"]  # only the supervisor returns


class NotifySocket:
    """A NOTIFY_SOCKET stand-in: collects sd_notify datagrams with the sender's pid."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.1)
        self.received: list[tuple[int, str]] = []

    def collect(self) -> None:
        size = struct.calcsize("3i")
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(size))
            except TimeoutError:
                return
            pid = next(
                struct.unpack("3i", cdata[:size])[0]
                for level, kind, cdata in ancillary
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
            )
            self.received.append((pid, data.decode()))

    def wait_for(self, state: str, after: int = 0, timeout: float = 20) -> int:
        """Index of the first datagram at or after `after` that contains `state`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.collect()
            for index in range(after, len(self.received)):
                if state in self.received[index][1].splitlines():
                    return index
        raise AssertionError(f"{state} never sent: {self.received}")


@pytest.mark.once
def test_systemd_hears_from_the_supervisor_only(supervised, tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    server = supervised(
        "--workers",
        "2",
        env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"},
    )
    server.wait_until_running()
    ready = notify.wait_for("READY=1")
    watchdog = notify.wait_for("WATCHDOG=1", after=ready)
    notify.wait_for("WATCHDOG=1", after=watchdog + 1)  # every 0.2 s, from the loop
    server.send(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1")
    assert "MONOTONIC_USEC=" in notify.received[reloading][1]
    server.wait_for_log("Reload complete")
    notify.wait_for("READY=1", after=reloading)
    assert server.stop() == 0
    stopping = notify.wait_for("STOPPING=1")
    assert stopping > reloading
    senders = {pid for pid, _ in notify.received}
    assert senders == {server.proc.pid}  # never a worker: the supervisor speaks for the service


# -- --preload: the supervisor imports the app once, before forking ---------------------------


def test_preload_is_a_setting_refused_with_reload(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert not Config(app="m:a").preload
    assert Config(app="m:a", preload=True).preload  # without workers: accepted, harmless
    with pytest.raises(ConfigError, match=r"preload .* reload .* one or the other"):
        Config(app="m:a", preload=True, reload=True)


def test_preload_calls_a_factory_once_and_hands_workers_the_object(monkeypatch, tmp_path):
    log = tmp_path / "imports"
    monkeypatch.setenv("ASERVE_TEST_IMPORT_LOG", str(log))
    monkeypatch.setattr(preload_module, "freeze", lambda: None)  # not in the test process
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "supervised", raising=False)
    config = Config(app="supervised:make_app", factory=True, app_dir=str(APPS), preload=True)
    worker_config = preload_module.preload(config)
    assert log.read_text() == f"{os.getpid()}\nfactory {os.getpid()}\n"
    assert worker_config.app is sys.modules["supervised"].app
    assert not worker_config.factory and worker_config.app_dir is None
    assert worker_config.preload  # the supervisor still knows (SIGHUP's note)


def test_preload_failure_of_a_factory_is_one_line_after_its_traceback(
    monkeypatch, tmp_path, caplog
):
    (tmp_path / "failing_factory.py").write_text(
        "def make_app():\n    raise RuntimeError('no database configured')\n"
    )
    monkeypatch.setattr(preload_module, "freeze", lambda: None)
    monkeypatch.setattr(sys, "path", list(sys.path))
    config = Config(app="failing_factory:make_app", factory=True, app_dir=str(tmp_path))
    try:
        with pytest.raises(preload_module.PreloadFailure) as failure:
            preload_module.preload(config)
    finally:
        sys.modules.pop("failing_factory", None)
    assert str(failure.value) == (
        "could not load the app (--preload): RuntimeError: no database configured"
    )
    assert "Traceback" in caplog.text and "failing_factory.py" in caplog.text


def test_preload_warns_about_threads_the_import_started(monkeypatch, tmp_path, caplog):
    (tmp_path / "threaded_app.py").write_text(
        "import threading\n"
        "stop = threading.Event()\n"
        "threading.Thread(target=stop.wait, daemon=True).start()\n"
        "async def app(scope, receive, send): pass\n"
    )
    monkeypatch.setattr(preload_module, "freeze", lambda: None)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        preload_module.preload(Config(app="threaded_app:app", app_dir=str(tmp_path)))
        assert "started 1 thread(s) in the supervisor" in caplog.text
    finally:
        sys.modules.pop("threaded_app").stop.set()


def test_sighup_note_names_the_files_changed_since_the_preload(monkeypatch, tmp_path):
    module = tmp_path / "changing_app.py"
    module.write_text("async def app(scope, receive, send): pass\n")
    monkeypatch.setattr(preload_module, "freeze", lambda: None)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        preload_module.preload(Config(app="changing_app:app", app_dir=str(tmp_path)))
        assert "Changed since then" not in preload_module.sighup_note()
        stat = module.stat()
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        note = preload_module.sighup_note()
    finally:
        sys.modules.pop("changing_app")
    assert "does not import the app again" in note
    assert note.endswith(f"Changed since then, not loaded: {module}")


@pytest.mark.once
def test_preload_imports_once_in_the_supervisor_and_lifespan_runs_in_each_worker(
    supervised, tmp_path
):
    log = tmp_path / "imports"
    env = {"ASERVE_TEST_IMPORT_LOG": str(log), "ASERVE_TEST_SHUTDOWN_DIR": str(tmp_path)}
    server = supervised("--workers", "3", "--preload", env=env)
    server.wait_until_running()
    workers = server.worker_pids()
    assert len(workers) == 3
    assert "Loaded the app in the supervisor" in server.log
    served: set[int] = set()
    poll(lambda: served.update(get_pid(server.url) for _ in range(10)) or served == workers)
    assert log.read_text() == f"{server.proc.pid}\n"  # imported once, by the supervisor only
    started = {int(p.name.split("-")[1]) for p in tmp_path.glob("startup-*")}
    assert started == workers  # lifespan startup ran in every worker, never in the supervisor
    assert server.stop() == 0
    shut_down = {int(p.name.split("-")[1]) for p in tmp_path.glob("shutdown-*")}
    assert shut_down == workers


@pytest.mark.once
@pytest.mark.parametrize(
    ("app", "env", "error"),
    [
        ("tests_missing_module:app", {}, "could not import module 'tests_missing_module'"),
        ("supervised:app", {"ASERVE_TEST_BREAK_IMPORT": __file__}, "the new code is broken"),
    ],
)
def test_preload_import_error_is_one_line_and_exit_3_before_any_worker(supervised, app, env, error):
    server = supervised("--workers", "2", "--preload", app=app, env=env)
    code = server.proc.wait(30)
    server._reader.join(5)
    assert code == 3, server.log
    assert server.log.count(error) == 1, server.log
    assert server.log.strip().splitlines() == [
        next(line for line in server.log.splitlines() if error in line)
    ]
    assert server.log.startswith("Error: could not load the app (--preload): ")
    assert "worker" not in server.log.lower()


@pytest.mark.once
def test_sighup_with_preload_rolls_the_workers_on_the_loaded_code_without_failures(
    supervised, tmp_path
):
    module = tmp_path / "preloaded.py"
    module.write_text((APPS / "supervised.py").read_text())
    log = tmp_path / "imports"
    server = supervised(
        "--workers",
        "2",
        "--preload",
        "--app-dir",
        str(tmp_path),
        app="preloaded:app",
        env={"ASERVE_TEST_IMPORT_LOG": str(log)},
    )
    server.wait_until_running()
    before = server.worker_pids()
    stat = module.stat()
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "new code" on disk
    with Load(server.url) as load:
        load.wait_for(200)
        server.send(signal.SIGHUP)
        note = server.wait_for_log(r"WARNING: .*--preload: .*\n").group(0)
        server.wait_for_log("Reload complete")
        poll(lambda: not (server.worker_pids() & before), what="the old workers to exit")
        load.wait_for(200)
    assert load.failures == [], load.failures[:5]
    after = server.worker_pids()
    assert len(after) == 2 and not after & before
    assert set(load.pids) >= after
    assert "does not import the app again" in note and str(module) in note
    assert log.read_text() == f"{server.proc.pid}\n"  # the new workers did not import it
    assert server.stop() == 0


@pytest.mark.once
def test_preload_without_workers_serves_from_one_process(supervised, tmp_path):
    log = tmp_path / "imports"
    server = supervised("--preload", env={"ASERVE_TEST_IMPORT_LOG": str(log)})
    match = server.wait_for_log(r"running on http://127\.0\.0\.1:(\d+)")
    server.port = int(match.group(1))
    assert get_pid(server.url) == server.proc.pid
    assert log.read_text() == f"{server.proc.pid}\n"
    assert server.stop() == 0
