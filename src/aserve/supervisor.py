"""The supervisor: binds the sockets once, forks the workers, keeps them healthy and replaces them.

It forks from a process with no event loop and no threads, so an app object (not only an
import string) reaches every worker, and what the supervisor imported is shared copy-on-write.
Its main loop follows gunicorn's arbiter: signal handlers only queue the signal (and
`signal.set_wakeup_fd` wakes the wait), one `selectors` wait reads the workers' pipes with a
short timeout, and everything else happens in the loop. Requests never pass through it: the
workers accept on the inherited listening sockets themselves.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import selectors
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aserve import systemd
from aserve.balance import AcceptShares
from aserve.config import Config, ConfigError
from aserve.health import SelectorHealth, bind_health_socket, listener_url
from aserve.logging import error_logger
from aserve.preload import PreloadFailure, preload, sighup_note
from aserve.server import RESTART_SIGNAL, loop_factory
from aserve.sockets import bind_sockets, describe, describe_listener, remove_unix_files
from aserve.tls import TLSInfo, load_tls, reload_tls
from aserve.worker import (
    FAILED,
    HEARTBEAT,
    READY,
    RETIRE,
    STOPPED_ACCEPTING,
    app_name,
    decode,
    run_worker,
    set_title,
)

# Start-up failures in a row (no worker became ready in between) before giving up.
CRASH_LOOP_LIMIT = 5
# A worker asked to stop gets the graceful timeout plus this for lifespan shutdown and exit;
# one still starting (nothing in flight, its startup cancelled: server.py) gets this alone.
STOP_SLACK = 5.0
# After a failed replacement (recycling), the old worker keeps serving; try again after this.
REPLACE_RETRY = 10.0
# How long to wait for a blocked worker's stack after SIGUSR1.
STACK_WAIT = 1.0
# The main loop's longest sleep: how quickly a dead worker is noticed at worst.
_WAIT = 0.1
# How often a worker's memory is compared with --limit-worker-memory, at most.
_MEMORY_CHECK_INTERVAL = 1.0
# The share of a core the supervisor may spend walking one worker's pages for that check
# (`own_memory_bytes`): a big worker over the limit in RSS is checked less often.
_MEMORY_WALK_SHARE = 0.01
# The lines of /proc/PID/smaps_rollup that add up to the memory only that process maps (USS).
_PRIVATE = (b"Private_Clean:", b"Private_Dirty:", b"Private_Hugetlb:")
# /livez fails once a worker has missed this many heartbeats (and at least LIVEZ_MIN_SILENCE
# seconds): its event loop is blocked now, as a single process's /livez would go unanswered.
LIVEZ_MISSED_BEATS = 3
LIVEZ_MIN_SILENCE = 2.0

_HANDLED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)

STARTING = "starting"
SERVING = "serving"
# The stop reason of a worker killed because it did not start (too slow, or its loop blocked):
# the failure is handled when it is killed, so its exit is not reported again.
START_KILLED = "did not start"


class WorkerStartupFailure(RuntimeError):
    """Workers kept failing during start-up; the message names the app's error."""


def heartbeat_interval(timeout: float) -> float:
    """How often a worker beats: several beats per timeout, at most one a second."""
    return min(1.0, timeout / 4)


def request_limit(limit: int | None, jitter: int, rng: random.Random) -> int | None:
    """One worker's --limit-max-requests: N + randint(0, J), so workers do not retire together."""
    if limit is None:
        return None
    return limit + (rng.randint(0, jitter) if jitter else 0)


class CrashLoop:
    """Counts start-up failures in a row; a worker becoming ready resets the count."""

    def __init__(self, limit: int = CRASH_LOOP_LIMIT) -> None:
        self.limit = limit
        self.failures = 0

    def failed(self) -> bool:
        """Record a failure; True when the limit is reached and the supervisor should give up."""
        self.failures += 1
        return self.failures >= self.limit

    def succeeded(self) -> None:
        self.failures = 0

    def backoff(self) -> float:
        """Seconds to wait before starting the failed worker again: 0.1, 0.2, 0.4... up to 2."""
        return min(0.1 * 2 ** max(self.failures - 1, 0), 2.0)


def describe_status(status: int) -> str:
    """A wait status as an operator reads it: "exited with status 3", "was killed by SIGKILL"."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a process from /proc/PID/statm (None if it is gone or not Linux)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def own_memory_bytes(pid: int, limit: float) -> tuple[int | None, float]:
    """A worker's own memory, as far as comparing it with `limit` needs, and the seconds spent.

    Its own: the pages no other process maps (USS), clean or dirty, and not the pages it
    shares with the supervisor and its siblings (a --preload app, the interpreter), which RSS
    counts in full in every worker and which recycling would not give back. PSS would charge
    each worker a share of those, a share that changes with the number of workers. RSS
    (statm, a few microseconds) bounds USS from above, so under `limit` it is the answer;
    above, /proc/PID/smaps_rollup is read, which walks the page tables (about 70 ns a page:
    35 ms for 500 MB on a busy machine), hence the time it took, to space the checks out.
    Without smaps_rollup (Linux before 4.14) RSS is all there is. None: the process is gone.
    """
    rss = rss_bytes(pid)
    if rss is None or rss <= limit:
        return rss, 0.0
    began = time.perf_counter()
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as file:
            rollup = file.read()
    except FileNotFoundError:
        return (rss if os.path.exists(f"/proc/{pid}") else None), 0.0
    except OSError:
        return None, 0.0
    private = sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith(_PRIVATE))
    return private * 1024, time.perf_counter() - began


@dataclass(eq=False)
class Worker:
    """What the supervisor knows about one worker process."""

    number: int
    pid: int
    channel: int  # read end of the worker's message pipe
    stacks: int  # read end of the pipe faulthandler writes the stack to
    purpose: str  # why it was started: "start", "respawn", "reload", "recycle"
    started_at: float
    state: str = STARTING
    last_beat: float = 0.0
    beating: bool = False  # its event loop runs: it has sent a heartbeat (from start-up on)
    buffer: bytearray = field(default_factory=bytearray)
    error: str | None = None
    replaces: Worker | None = None  # the worker to drain once this one is ready
    retire: str | None = None  # why this worker should be replaced (max requests, memory)
    retry_at: float = 0.0
    stop_reason: str | None = None  # why we stopped it; None while it should be serving
    stop_deadline: float | None = None
    killed: bool = False
    accepting: bool = True  # False once it says it closed its listeners (draining)
    slot: int | None = None  # its accept count in `Supervisor.shares` (balance.py)
    memory_check_at: float = 0.0  # when to compare its memory with --limit-worker-memory

    @property
    def name(self) -> str:
        return f"worker {self.number} (pid {self.pid})"

    @property
    def restart_reason(self) -> str | None:
        """Why it exited, as /metrics counts it (balance.RESTART_REASONS); None: shut down."""
        stopped = {
            "reload": "reload",
            "fewer workers": "scaled_down",
            "blocked": "blocked",
            START_KILLED: "start_failed",
        }
        if self.stop_reason == "replaced":
            return "memory" if "--limit-worker-memory" in (self.retire or "") else "max_requests"
        if self.stop_reason is not None:
            return stopped.get(self.stop_reason)
        return "start_failed" if self.state == STARTING else "crashed"


class Supervisor:
    """Runs `config.workers` workers on `sockets` until told to stop (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        sockets: list[socket.socket],
        from_systemd: bool = False,
        health_socket: socket.socket | None = None,
        tls: TLSInfo | None = None,
    ) -> None:
        self.config = config
        # The TLS context every worker forked from now on uses, loaded here: a new worker
        # (reload, respawn, recycling) starts on the last certificate that loaded, never on
        # files that do not (see `_reload_tls`).
        self.tls = tls
        self.sockets = sockets
        self.from_systemd = from_systemd
        self.target = config.workers or 1
        self.workers: list[Worker] = []
        self.deaths: Counter[int] = Counter()
        self.crash_loop = CrashLoop()
        self.respawn_at: dict[int, float] = {}
        self.signals: list[int] = []
        self.stopping: str | None = None  # "graceful" or "quick"
        self.reload_queue: list[Worker] = []
        self.reloading = False
        self.failure: str | None = None
        self.printed_errors: set[str] = set()
        self.announced = False
        self.rng = random.Random()
        self.interval = heartbeat_interval(config.timeout_worker_healthcheck)
        self.watchdog = systemd.watchdog_period()
        self.next_watchdog = 0.0
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self.shares = AcceptShares()  # mapped before the first fork: every worker shares it
        # Health and drain (health.py): the supervisor answers /livez and /readyz for all.
        self.health_socket = health_socket
        self.health: SelectorHealth | None = None
        self.livez_silence = max(LIVEZ_MISSED_BEATS * self.interval, LIVEZ_MIN_SILENCE)
        self.drain_until: float | None = None  # when a --drain-delay ends (SIGTERM/SIGINT)

    # -- the main loop ---------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM; raises `WorkerStartupFailure` on a crash loop."""
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        if self.health_socket is not None:
            self.health = SelectorHealth(
                self.health_socket, self.selector, self._livez, self._readyz
            )
        previous = {sig: signal.signal(sig, self._queue_signal) for sig in _HANDLED_SIGNALS}
        previous_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        set_title("supervisor", self.config)
        error_logger.info(
            "Started supervisor process [%d] for %d worker%s",
            os.getpid(),
            self.target,
            "s" if self.target != 1 else "",
        )
        if self.health_socket is not None:
            where = listener_url(self.health_socket)
            error_logger.info("Health checks on %s (/livez, /readyz)", where)
        try:
            for number in range(1, self.target + 1):
                self._spawn(number, "start")
            while True:
                now = time.monotonic()
                self._handle_signals(now)
                self._end_drain(now)
                self._reap(now)
                if self.stopping is not None:
                    if not self.workers:
                        break
                else:
                    self._check_health(now)
                    self._manage(now)
                self._enforce_deadlines(now)
                self._systemd(now)
                if self.health is not None:
                    self.health.expire(now)
                self._wait(_WAIT)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close()
        if self.failure is not None:
            raise WorkerStartupFailure(self.failure)
        error_logger.info("Stopped supervisor process [%d]", os.getpid())

    def _queue_signal(self, sig: int, _frame: Any) -> None:
        self.signals.append(sig)  # all the work happens in the loop

    def _wait(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(OSError):
                    while os.read(self.wake_r, 4096):
                        pass
            elif isinstance(key.data, Worker):
                self._read(key.data)
            else:
                key.data()  # a health probe's socket (SelectorHealth)

    def _close(self) -> None:
        if self.health is not None:
            self.health.close()
        elif self.health_socket is not None:
            self.health_socket.close()
        for sock in self.sockets:
            sock.close()
        if not self.from_systemd:
            remove_unix_files(self.config)
        self.selector.close()
        for fd in (self.wake_r, self.wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- starting and stopping workers -----------------------------------------------------

    def _spawn(self, number: int, purpose: str, replaces: Worker | None = None) -> Worker:
        channel_r, channel_w = os.pipe()
        stacks_r, stacks_w = os.pipe()
        limit = request_limit(
            self.config.limit_max_requests, self.config.limit_max_requests_jitter, self.rng
        )
        inherited = [self.wake_r, self.wake_w, self.selector.fileno(), channel_r, stacks_r]
        for other in self.workers:
            inherited += [other.channel, other.stacks]
        if self.health is not None:
            inherited += self.health.fds()  # the probes are the supervisor's to answer
        used = {w.slot for w in self.workers}
        slot = next((i for i in range(self.shares.slots) if i not in used), None)
        for stream in (sys.stdout, sys.stderr):  # or the child would write them out again
            with contextlib.suppress(Exception):
                stream.flush()
        pid = os.fork()
        if pid == 0:
            run_worker(
                self.config,
                self.sockets,
                number,
                channel_w,
                stacks_w,
                self.interval,
                limit,
                inherited,
                None if slot is None else self.shares.slot(slot),
                self.tls,
            )  # never returns
        os.close(channel_w)
        os.close(stacks_w)
        os.set_blocking(channel_r, False)
        os.set_blocking(stacks_r, False)
        now = time.monotonic()
        worker = Worker(
            number, pid, channel_r, stacks_r, purpose, now, replaces=replaces, slot=slot
        )
        worker.last_beat = now
        self.workers.append(worker)
        self.selector.register(channel_r, selectors.EVENT_READ, worker)
        error_logger.info("Started %s", worker.name)
        return worker

    def _stop(self, worker: Worker, reason: str, now: float) -> None:
        """Ask a worker to drain and exit (SIGTERM), bounded by the graceful timeout. A worker
        being replaced (`reason` "replaced" or "reload") gets `RESTART_SIGNAL` instead, the
        same stop, which tells it why: its WebSockets are closed with 1012, not 1001.

        A worker not ready yet has no request in flight: it gives up its startup at once
        (server.py), so it gets `STOP_SLACK` whatever the graceful timeout, which may be
        off: a startup that hangs in a blocking call, or ignores its cancellation, would
        otherwise hold the supervisor forever.
        """
        if worker.stop_reason is None:
            worker.stop_reason = reason
        worker.stop_deadline = self._stop_deadline(worker, now)
        restart = reason in ("replaced", "reload")
        self._kill(worker, RESTART_SIGNAL if restart else signal.SIGTERM)

    def _stop_deadline(self, worker: Worker, now: float) -> float | None:
        if worker.state == STARTING:
            return now + STOP_SLACK
        timeout = self.config.timeout_graceful_shutdown
        return None if timeout is None else now + timeout + STOP_SLACK

    def _kill(self, worker: Worker, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, sig)

    def _reap(self, now: float) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is not None:
                self._read(worker)  # what it wrote before exiting (its start-up error)
                self._exited(worker, status, now)

    def _exited(self, worker: Worker, status: int, now: float) -> None:
        self.workers.remove(worker)
        if worker.slot is not None:
            self.shares.release(worker.slot)  # a crashed worker cannot say it left
        if worker.restart_reason is not None:
            self.shares.restarted(worker.restart_reason)  # every worker's /metrics shows it
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(worker.channel)
        for fd in (worker.channel, worker.stacks):
            with contextlib.suppress(OSError):
                os.close(fd)
        how = describe_status(status)
        if worker.stop_reason == START_KILLED:
            return  # reported, and counted as a start-up failure, when it was killed
        if worker.stop_reason not in (None, "blocked"):
            if status == 0:
                error_logger.info("Stopped %s (%s)", worker.name, worker.stop_reason)
            else:
                error_logger.warning("%s %s while stopping", worker.name.capitalize(), how)
            return
        if worker.state == STARTING and worker.stop_reason is None:
            self._failed_to_start(worker, how, now)
            return
        self.deaths[worker.number] += 1
        count = self.deaths[worker.number]
        error_logger.error(
            "%s %s%s; starting a new one (worker %d has died %d time%s)",
            worker.name.capitalize(),
            how,
            " after its event loop blocked" if worker.stop_reason == "blocked" else "",
            worker.number,
            count,
            "s" if count != 1 else "",
        )

    def _failed_to_start(self, worker: Worker, how: str, now: float) -> None:
        error = worker.error or f"the worker {how} before it was ready"
        self._print_error(worker, error)
        summary = error.strip().splitlines()[-1] if error.strip() else error
        if worker.purpose == "reload":
            error_logger.error(
                "Reload aborted: the new %s could not start (%s); keeping the running workers",
                worker.name,
                summary,
            )
            self.reload_queue.clear()
            self._end_reload(aborted=True)
            return
        old = worker.replaces
        if worker.purpose == "recycle" and old is not None:
            error_logger.error(
                "Could not replace worker %d: the new %s could not start (%s); "
                "the old one keeps serving, trying again in %.0f s",
                old.number,
                worker.name,
                summary,
                REPLACE_RETRY,
            )
            old.retry_at = now + REPLACE_RETRY
            return
        if self.crash_loop.failed():
            self.failure = (
                f"workers failed to start {self.crash_loop.failures} times in a row: {summary}"
            )
            error_logger.error(
                "Giving up after %d start-up failures in a row; stopping", self.crash_loop.failures
            )
            self._stop_all("graceful", now)
            return
        delay = self.crash_loop.backoff()
        self.respawn_at[worker.number] = now + delay
        error_logger.warning(
            "%s failed to start (%d of %d); trying again in %.1f s",
            worker.name.capitalize(),
            self.crash_loop.failures,
            self.crash_loop.limit,
            delay,
        )

    def _print_error(self, worker: Worker, error: str) -> None:
        """The app's start-up error, once, however many workers hit it."""
        if error in self.printed_errors:
            return
        self.printed_errors.add(error)
        error_logger.error("%s could not start:\n%s", worker.name.capitalize(), error)

    # -- messages from workers -------------------------------------------------------------

    def _read(self, worker: Worker) -> None:
        while True:
            try:
                data = os.read(worker.channel, 65536)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(worker.channel)
                break
            worker.buffer += data
        now = time.monotonic()
        for kind, text in decode(worker.buffer):
            if kind == HEARTBEAT:
                worker.last_beat = now
                worker.beating = True
            elif kind == READY:
                self._ready(worker, now)
            elif kind == RETIRE:
                if worker.retire is None and worker.stop_reason is None:
                    worker.retire = text
                    error_logger.info("%s %s: replacing it", worker.name.capitalize(), text)
            elif kind == FAILED:
                worker.error = text
            elif kind == STOPPED_ACCEPTING:
                worker.accepting = False

    def _ready(self, worker: Worker, now: float) -> None:
        if worker.killed:
            return  # too late: it was killed for not starting in time
        worker.state = SERVING
        worker.last_beat = now
        if (
            worker.stop_reason is not None
            and worker.stop_deadline is not None
            and self.stopping != "quick"
        ):
            # Told to stop just as it became ready: it may have accepted requests, which get
            # the graceful timeout after all.
            worker.stop_deadline = self._stop_deadline(worker, now)
        self.crash_loop.succeeded()
        error_logger.info("%s is ready", worker.name.capitalize())
        old = worker.replaces
        worker.replaces = None
        if old is not None and old in self.workers and self.stopping is None:
            self._stop(old, "replaced" if worker.purpose == "recycle" else "reload", now)

    # -- keeping the right workers running -------------------------------------------------

    def _manage(self, now: float) -> None:
        if self.stopping is not None:
            return  # a start-up failure just now may have given up: start nothing more
        serving = [w for w in self.workers if w.stop_reason is None]
        covered = {w.number for w in serving}
        for number in range(1, self.target + 1):
            if number not in covered and now >= self.respawn_at.get(number, 0.0):
                self._spawn(number, "respawn" if self.announced else "start")
        for worker in serving:
            if worker.number > self.target:
                self._stop(worker, "fewer workers", now)
        replacing = {w.replaces for w in self.workers if w.replaces is not None}
        if self.reloading and not any(w.purpose == "reload" for w in replacing_workers(self)):
            while self.reload_queue:
                old = self.reload_queue.pop(0)
                if old in self.workers and old.stop_reason is None and old.number <= self.target:
                    self._spawn(old.number, "reload", replaces=old)
                    break
            else:
                if not any(w.stop_reason == "reload" and w.accepting for w in self.workers):
                    # Complete once no old worker can take a new connection any more.
                    self._end_reload(aborted=False)
        for worker in self.workers:
            if (
                worker.retire is not None
                and worker.state == SERVING
                and worker.stop_reason is None
                and worker not in replacing
                and now >= worker.retry_at
            ):
                self._spawn(worker.number, "recycle", replaces=worker)
        if not self.announced and self._all_ready():
            self.announced = True
            self._log_running()
            systemd.notify("READY=1", f"STATUS={self.target} workers")

    def _all_ready(self) -> bool:
        ready = {w.number for w in self.workers if w.state == SERVING and w.stop_reason is None}
        return all(number in ready for number in range(1, self.target + 1))

    def _log_running(self) -> None:
        for where in self._where():
            error_logger.info(
                "aserve running on %s with %d worker%s (Press CTRL+C to quit)",
                where,
                self.target,
                "s" if self.target != 1 else "",
            )

    def _where(self) -> list[str]:
        """Each listening socket, as configured (the host as given, the port as bound)."""
        config = self.config
        tls = config.ssl_certfile is not None or config.ssl_context_factory is not None
        scheme = "https" if tls else "http"
        if self.from_systemd:
            return [f"{describe(sock, scheme)} (socket from systemd)" for sock in self.sockets]
        return [
            describe_listener(address, sock, scheme)
            for address, sock in zip(self.config.listeners, self.sockets, strict=True)
        ]

    def _check_health(self, now: float) -> None:
        timeout = self.config.timeout_worker_healthcheck
        for worker in list(self.workers):
            if worker.killed or self.stopping is not None:  # a failure may just have given up
                continue
            # A starting worker beats as soon as its event loop runs (lifespan startup): from
            # then on a silent loop is blocked, starting or not.
            if (worker.state == SERVING or worker.beating) and now - worker.last_beat > timeout:
                self._blocked(worker, now - worker.last_beat, now)
            elif startup_overdue(worker, self.config.timeout_worker_startup, now):
                self._start_timed_out(worker, now)
        if self.config.limit_worker_memory is not None:
            self._check_memory(self.config.limit_worker_memory, now)

    def _check_memory(self, megabytes: float, now: float) -> None:
        """Recycle a worker whose own memory (USS: `own_memory_bytes`) passes the limit."""
        limit = megabytes * 1024 * 1024
        for worker in self.workers:
            if (
                worker.state != SERVING
                or worker.stop_reason
                or worker.retire
                or now < worker.memory_check_at
            ):
                continue
            used, spent = own_memory_bytes(worker.pid, limit)
            worker.memory_check_at = now + max(_MEMORY_CHECK_INTERVAL, spent / _MEMORY_WALK_SHARE)
            if used is not None and used > limit:
                worker.retire = (
                    f"uses {used / 1048576:.0f} MB of its own memory (USS), "
                    "over --limit-worker-memory"
                )
                error_logger.warning(
                    "%s %s (%g MB): replacing it",
                    worker.name.capitalize(),
                    worker.retire,
                    megabytes,
                )

    def _blocked(self, worker: Worker, silent: float, now: float) -> None:
        """Log where a worker's event loop is stuck, then kill it (it is replaced at once)."""
        self._kill(worker, signal.SIGUSR1)  # faulthandler dumps every thread's stack
        stack = self._read_stack(worker)
        if worker.state == STARTING:
            timeout = self.config.timeout_worker_healthcheck
            self._kill_starting(
                worker,
                stack,
                f"its event loop blocked during start-up: no heartbeat for {timeout:g} s, "
                "the --timeout-worker-healthcheck",
                now,
            )
            return
        error_logger.error(
            "%s has not answered its heartbeat for %.1f s: its event loop is blocked. "
            "Its stack:\n%s",
            worker.name.capitalize(),
            silent,
            stack.rstrip() or "(no stack received)",
        )
        worker.stop_reason = "blocked"
        worker.killed = True
        self._kill(worker, signal.SIGKILL)

    def _start_timed_out(self, worker: Worker, now: float) -> None:
        """A worker still starting past --timeout-worker-startup: log where, kill, count it."""
        self._kill(worker, signal.SIGUSR1)  # its stack, and its tasks' if its loop runs
        stack = self._read_stack(worker)
        timeout = self.config.timeout_worker_startup
        self._kill_starting(
            worker,
            stack,
            f"not ready after {timeout:g} s, the --timeout-worker-startup (raise it if the app "
            "needs longer to start)",
            now,
        )

    def _kill_starting(self, worker: Worker, stack: str, why: str, now: float) -> None:
        """Kill a worker that did not start and count it as a start-up failure right away.

        Handled now, not when it is reaped, so that nothing (the next reload step, a respawn)
        happens in between as if it had merely stopped.
        """
        # The same text for every worker stuck the same way: printed once (`_print_error`).
        worker.error = (
            f"Its stack when it was killed:\n{stack.rstrip() or '(none received)'}\n{why}"
        )
        worker.stop_reason = START_KILLED
        worker.killed = True
        self._kill(worker, signal.SIGKILL)
        self._failed_to_start(worker, "was killed", now)

    def _read_stack(self, worker: Worker) -> str:
        chunks: list[bytes] = []
        deadline = time.monotonic() + STACK_WAIT
        with selectors.DefaultSelector() as selector:
            selector.register(worker.stacks, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                # Once the dump has started, a pause means it is complete.
                if left <= 0 or not selector.select(min(left, 0.2) if chunks else left):
                    if chunks or left <= 0:
                        break
                    continue
                try:
                    data = os.read(worker.stacks, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    break
                chunks.append(data)
        return trim_stack(b"".join(chunks).decode("utf-8", "replace"))

    def _enforce_deadlines(self, now: float) -> None:
        for worker in self.workers:
            if (
                worker.stop_deadline is not None
                and now >= worker.stop_deadline
                and not worker.killed
            ):
                error_logger.warning(
                    "%s did not stop in time; killing it", worker.name.capitalize()
                )
                worker.killed = True
                self._kill(worker, signal.SIGKILL)

    # -- signals ---------------------------------------------------------------------------

    def _handle_signals(self, now: float) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGCHLD:
                continue  # reaping happens every turn
            if sig in (signal.SIGINT, signal.SIGTERM):
                if self.stopping is None and self.drain_until is None:
                    if self.config.drain_delay > 0 and self.announced:
                        self._begin_drain(sig, now)
                    else:
                        name = signal.Signals(sig).name
                        error_logger.info("Received %s: stopping the workers", name)
                        self._stop_all("graceful", now)
                elif sig == signal.SIGINT and self.stopping != "quick":
                    error_logger.info("Received SIGINT again: stopping at once")
                    self._stop_all("quick", now)
            elif sig == signal.SIGQUIT:
                if self.stopping != "quick":
                    error_logger.info("Received SIGQUIT: stopping at once")
                    self._stop_all("quick", now)
            elif self.stopping is not None or self.drain_until is not None:
                continue
            elif sig == signal.SIGHUP:
                self._start_reload()
            elif sig == signal.SIGTTIN:
                self.target += 1
                error_logger.info("Received SIGTTIN: %d workers", self.target)
            elif sig == signal.SIGTTOU:
                if self.target > 1:
                    self.target -= 1
                    error_logger.info(
                        "Received SIGTTOU: %d worker%s", self.target, "s"[: self.target - 1]
                    )
                else:
                    error_logger.info("Received SIGTTOU: keeping the last worker")

    # -- health and drain ------------------------------------------------------------------

    def _begin_drain(self, sig: int, now: float) -> None:
        """/readyz turns 503 now; the workers serve on until --drain-delay is up."""
        delay = self.config.drain_delay
        self.drain_until = now + delay
        systemd.notify("STOPPING=1")
        error_logger.info(
            "Received %s: draining, /readyz answers 503; the workers serve on for %gs "
            "(--drain-delay), then stop",
            signal.Signals(sig).name,
            delay,
        )

    def _end_drain(self, now: float) -> None:
        if self.drain_until is not None and self.stopping is None and now >= self.drain_until:
            error_logger.info("Drain delay over: stopping the workers")
            self._stop_all("graceful", now)

    def _readyz(self) -> tuple[bool, str]:
        if self.stopping is not None or self.drain_until is not None:
            return False, "draining: shutting down"
        if not self.announced:
            return False, "starting: not every worker is ready yet"
        serving = sum(1 for w in self.workers if w.state == SERVING and w.stop_reason is None)
        if not serving:
            return False, "no worker is serving (they are being replaced)"
        return True, f"ready: {serving} worker{'s' if serving != 1 else ''} serving"

    def _livez(self) -> tuple[bool, str]:
        """Every worker whose event loop runs has sent a heartbeat lately."""
        now = time.monotonic()
        beating = [w for w in self.workers if not w.killed and (w.beating or w.state == SERVING)]
        for worker in beating:
            silent = now - worker.last_beat
            if silent > self.livez_silence:
                return False, (
                    f"{worker.name} has sent no heartbeat for {silent:.1f} s: its event loop "
                    "is blocked"
                )
        return (
            True,
            f"ok: {len(beating)} worker event loop{'s' if len(beating) != 1 else ''} answer",
        )

    def _stop_all(self, how: str, now: float) -> None:
        self.stopping = how
        self.reload_queue.clear()
        systemd.notify("STOPPING=1")
        for worker in self.workers:
            if how == "graceful":
                if worker.stop_deadline is None or worker.stop_reason is None:
                    self._stop(worker, "shutdown", now)
            else:
                if worker.stop_reason is None:
                    worker.stop_reason = "shutdown"
                worker.stop_deadline = now + STOP_SLACK
                self._kill(worker, signal.SIGQUIT)

    def _start_reload(self) -> None:
        old = [w for w in self.workers if w.stop_reason is None and w.replaces is None]
        error_logger.info(
            "Received SIGHUP: restarting %d worker%s one at a time",
            len(old),
            "s" if len(old) != 1 else "",
        )
        if self.config.preload:
            error_logger.warning(sighup_note())
        self._reload_tls()
        self.reload_queue = old
        self.reloading = True
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def _reload_tls(self) -> None:
        """SIGHUP: read the certificate files again, for the workers the restart starts.

        Workers do not reload in place: each old one drains and a new one, forked with the
        new context, takes its place. Files that do not load leave the last good context to
        the new workers (one error line); the restart goes on (it may carry new code).
        """
        if self.tls is None:
            return
        try:
            tls = reload_tls(self.config)
        except ConfigError as exc:
            error_logger.error(
                "TLS certificate not reloaded, the new workers keep the one in use: %s", exc
            )
            return
        self.tls = tls
        error_logger.info("TLS certificate reloaded; the new workers use it")

    def _end_reload(self, aborted: bool) -> None:
        if not self.reloading:
            return
        self.reloading = False
        if not aborted:
            error_logger.info("Reload complete")
        systemd.notify("READY=1", f"STATUS={self.target} workers")

    def _systemd(self, now: float) -> None:
        """WATCHDOG=1 from this loop while every serving worker answers its heartbeat."""
        if self.watchdog is None or now < self.next_watchdog or self.stopping is not None:
            return
        timeout = self.config.timeout_worker_healthcheck
        healthy = any(w.state == SERVING for w in self.workers) and all(
            now - w.last_beat <= timeout for w in self.workers if w.state == SERVING
        )
        if healthy:
            systemd.notify("WATCHDOG=1")
            self.next_watchdog = now + self.watchdog


_RUN_WORKER_FRAME = re.compile(r'  File ".*aserve.worker\.py", line \d+ in run_worker')


def trim_stack(stack: str) -> str:
    """A worker's stack without the frames below `run_worker`: the supervisor's, from the fork.

    They say nothing about the worker, and differ with where it was forked from, which would
    make the same hang look like a new error each time.
    """
    lines: list[str] = []
    skipping = False
    for line in stack.splitlines():
        if skipping and line.startswith("  File "):
            continue
        skipping = bool(_RUN_WORKER_FRAME.match(line))
        lines.append(line)
    return "\n".join(lines) + ("\n" if stack.endswith("\n") else "")


def startup_overdue(worker: Worker, timeout: float | None, now: float) -> bool:
    """Whether a worker still starting (import, lifespan startup) has passed its deadline.

    A worker already told to stop is left to its stop deadline instead.
    """
    return (
        timeout is not None
        and worker.state == STARTING
        and worker.stop_reason is None
        and not worker.killed
        and now - worker.started_at > timeout
    )


def replacing_workers(supervisor: Supervisor) -> list[Worker]:
    """Workers started to replace another one and not ready yet."""
    return [w for w in supervisor.workers if w.replaces is not None and w.stop_reason is None]


def supervise(config: Config) -> None:
    """Bind the sockets once, then run the workers under a supervisor until stopped."""
    loop_factory(config.loop)  # a missing uvloop is a config error now; imported once for all
    if config.preload:
        try:
            config = preload(config)  # before binding: an app that cannot load holds no port
        except PreloadFailure as exc:
            raise WorkerStartupFailure(str(exc)) from None
    tls = load_tls(config)  # a bad certificate is one line, before binding
    sockets, from_systemd = bind_sockets(config)
    health = None
    if config.health_port is not None:
        try:
            health = bind_health_socket(config.health_host, config.health_port)
        except ConfigError:
            for sock in sockets:
                sock.close()
            if not from_systemd:
                remove_unix_files(config)
            raise
    Supervisor(config, sockets, from_systemd, health, tls).run()


__all__ = ["Supervisor", "WorkerStartupFailure", "app_name", "supervise"]
