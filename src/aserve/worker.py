"""One worker process under the supervisor: today's `Server` on inherited sockets, plus a channel.

The channel is a pipe to the supervisor. The worker writes to it from its event loop only:
"ready" once lifespan startup is done and it accepts, a heartbeat every interval from the
moment its loop runs (lifespan startup included; a blocked loop stops beating, which is the
point: a side thread would keep beating), "retire" when it has served its request limit,
"stopped accepting" once it drains (until then a new connection may still reach it: a rolling
restart is complete only after that), and its start-up error when it cannot start. A second
pipe receives the stack dump when the supervisor sends SIGUSR1 to a worker whose loop stopped
beating or that did not start in time: `faulthandler`'s, registered before the app is imported
so an import that hangs can be shown, then, if the event loop runs, where each of its tasks
waits (a lifespan startup stuck in an `await` shows in no thread's stack).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import faulthandler
import logging
import os
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Iterator
from typing import Any

from aserve.balance import AcceptSlot
from aserve.config import Config, ConfigError
from aserve.importer import load_app
from aserve.lifespan import LifespanFailure
from aserve.logging import error_logger
from aserve.server import RESTART_SIGNAL, Server, run
from aserve.tls import TLSInfo

# Message kinds on the channel: one byte, then a 4-byte length and that many bytes of text.
READY = b"R"
HEARTBEAT = b"H"
RETIRE = b"M"
FAILED = b"E"
STOPPED_ACCEPTING = b"S"
_HEADER = struct.Struct("!cI")

# Exit status of a worker that could not start (import error, lifespan startup failure).
EXIT_STARTUP_FAILURE = 3

# How long a draining worker keeps idle keep-alive connections open (see `WorkerServer`).
DRAIN_IDLE_GRACE = 1.0
# How long a draining worker waits for accepted connections to reach their protocol (TLS).
HANDOVER_WAIT = 5.0


def encode(kind: bytes, text: str = "") -> bytes:
    payload = text.encode("utf-8", "replace")
    return _HEADER.pack(kind, len(payload)) + payload


def decode(buffer: bytearray) -> Iterator[tuple[bytes, str]]:
    """Complete messages from the front of `buffer`, which keeps any partial one."""
    size = _HEADER.size
    while len(buffer) >= size:
        kind, length = _HEADER.unpack_from(buffer)
        if len(buffer) < size + length:
            return
        text = bytes(buffer[size : size + length]).decode("utf-8", "replace")
        del buffer[: size + length]
        yield kind, text


class Channel:
    """The worker's end of its pipe to the supervisor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken = False
        os.set_blocking(fd, False)

    def send(self, kind: bytes, text: str = "") -> None:
        """Best effort and never blocking: a full pipe drops a heartbeat, nothing worse."""
        try:
            os.write(self.fd, encode(kind, text))
        except BlockingIOError:
            pass
        except OSError:
            self.broken = True  # the supervisor is gone

    def send_all(self, kind: bytes, text: str) -> None:
        """A message that must arrive whole (the start-up error), even if it is long."""
        os.set_blocking(self.fd, True)
        with contextlib.suppress(OSError):
            os.write(self.fd, encode(kind, text))


class _RequestCounter:
    """The app, counting the requests it is called for (only with --limit-max-requests).

    At the limit it tells the supervisor once, at the request that reached it; the worker
    serves on until its replacement is ready.
    """

    __slots__ = ("app", "channel", "count", "limit")

    def __init__(self, app: Any, limit: int, channel: Channel) -> None:
        self.app = app
        self.limit = limit
        self.channel = channel
        self.count = 0

    def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] != "lifespan":
            self.count += 1
            if self.count == self.limit:
                self.channel.send(RETIRE, f"served {self.count} requests")
        return self.app(scope, receive, send)  # the app's own coroutine: no extra frame


class _StartupErrors(logging.Filter):
    """Holds back error records until the worker is ready.

    If start-up fails they become the error the supervisor prints once, instead of every
    restarted worker printing the same traceback; if it succeeds they are logged as usual.
    """

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.records.append(record)
            return False
        return True

    def text(self) -> str:
        formatter = logging.Formatter("%(message)s")
        return "\n".join(formatter.format(record) for record in self.records)

    def release(self) -> None:
        error_logger.removeFilter(self)
        for record in self.records:
            error_logger.handle(record)
        self.records.clear()


class _PidPrefix(logging.Filter):
    """Puts the worker's pid in front of each line it logs (default log config only)."""

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"[{os.getpid()}] "

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_aserve_pid", False):
            record.msg = self.prefix + str(record.msg)
            record._aserve_pid = True
        return True


class WorkerServer(Server):
    """`Server` as a worker: signals from the supervisor, ready/heartbeat from its loop."""

    systemd_notify = False  # the supervisor speaks to systemd for the whole service
    serves_health = False  # and answers the health probes (--health-port) for it
    log_notices = False  # and logs the ignored options once
    shared_sockets = True  # a small accept batch, then yield to the siblings (listener.py)

    def __init__(
        self,
        config: Config,
        channel: Channel,
        heartbeat_interval: float,
        startup_errors: _StartupErrors,
    ) -> None:
        super().__init__(config)
        self.channel = channel
        self.heartbeat_interval = heartbeat_interval
        self.startup_errors = startup_errors
        self.supervisor_pid = os.getppid()
        self._heartbeat: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # installed at fork time by `run_worker`; the supervisor decides, not the tty

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        # Beat from the first turn of the loop, so the supervisor tells a slow lifespan
        # startup whose loop runs from one that blocks it.
        self._heartbeat = asyncio.get_running_loop().create_task(self._beat())
        try:
            await super().serve(sockets)
        finally:
            self._heartbeat.cancel()

    def _log_started(self) -> None:
        pass  # the supervisor says where the service listens, once

    async def _main_loop(self) -> None:
        self.startup_errors.release()
        self.channel.send(READY)
        await super()._main_loop()  # the beats go on while it drains: the loop still runs

    async def _beat(self) -> None:
        """The heartbeat, from the event loop itself: if the loop blocks, the beats stop."""
        while True:
            self.channel.send(HEARTBEAT)
            if self.channel.broken or os.getppid() != self.supervisor_pid:
                error_logger.error("The supervisor is gone; shutting down")
                self.should_exit = True
                return
            await asyncio.sleep(self.heartbeat_interval)

    async def _close_connections(self, state: Any) -> None:
        """Stop accepting, then close connections without racing their clients.

        The listening socket is shared: closing our copy leaves queued connections to the
        other workers. Connections already accepted are handed to their protocol first (a
        loop turn, longer for a TLS handshake), so none is dropped unread. Then every response
        says `Connection: close`, and idle keep-alive connections stay open for
        `DRAIN_IDLE_GRACE`: a client that sends its next request in that time gets an answer
        and a clean close, where closing an idle connection at once races a request already
        on its way (the client sees the connection drop and the request fail).
        """
        loop = asyncio.get_running_loop()
        for server in self.servers:
            server.stop_accepting()
        self.channel.send(STOPPED_ACCEPTING)
        deadline = loop.time() + HANDOVER_WAIT
        while any(server.handing_over for server in self.servers) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        for server in self.servers:
            server.close()
        state.shutting_down = True
        timeout = self.config.timeout_graceful_shutdown
        grace = DRAIN_IDLE_GRACE if timeout is None else min(DRAIN_IDLE_GRACE, timeout)
        deadline = loop.time() + grace
        while state.connections and loop.time() < deadline and not self.force_exit:
            await asyncio.sleep(0.02)
        for conn in list(state.connections):
            conn.shutdown()


def run_worker(
    config: Config,
    sockets: list[socket.socket],
    number: int,
    channel_fd: int,
    stack_fd: int,
    heartbeat_interval: float,
    request_limit: int | None,
    close_fds: list[int],
    balance: AcceptSlot | None = None,
    tls: TLSInfo | None = None,
) -> None:
    """The body of a forked worker process. Never returns: the process exits here."""
    code = 1
    try:
        code = _worker(
            config,
            sockets,
            number,
            channel_fd,
            stack_fd,
            heartbeat_interval,
            request_limit,
            close_fds,
            balance,
            tls,
        )
    except BaseException:  # never unwind into the supervisor's code that forked us
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _worker(
    config: Config,
    sockets: list[socket.socket],
    number: int,
    channel_fd: int,
    stack_fd: int,
    heartbeat_interval: float,
    request_limit: int | None,
    close_fds: list[int],
    balance: AcceptSlot | None,
    tls: TLSInfo | None,
) -> int:
    signal.set_wakeup_fd(-1)

    def exit_now(_sig: int, _frame: Any) -> None:
        os._exit(0)  # told to stop before serving: nothing to finish

    signal.signal(signal.SIGTERM, exit_now)
    signal.signal(signal.SIGQUIT, exit_now)
    signal.signal(RESTART_SIGNAL, exit_now)
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    # Ctrl+C reaches the whole process group; the supervisor turns it into SIGTERM/SIGQUIT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Before the app is imported: an import that hangs can be dumped too. faulthandler writes
    # the threads' stacks from the C handler (even while Python is stuck), then chains to the
    # Python handler, which adds the event loop's tasks when a loop runs.
    signal.signal(signal.SIGUSR1, _task_dumper(stack_fd))
    faulthandler.register(signal.SIGUSR1, file=stack_fd, all_threads=True, chain=True)
    set_title(f"worker {number}", config)
    if config.log_config is None:
        prefix = _PidPrefix()
        for name in ("aserve", "aserve.access"):
            for handler in logging.getLogger(name).handlers:
                handler.addFilter(prefix)
    channel = Channel(channel_fd)
    startup_errors = _StartupErrors()
    error_logger.addFilter(startup_errors)
    try:
        app = load_app(config)
        if request_limit is not None:
            app = _RequestCounter(app, request_limit, channel)
        worker_config = dataclasses.replace(
            config,
            app=app,
            factory=False,
            interface="asgi3",
        )
        server = WorkerServer(worker_config, channel, heartbeat_interval, startup_errors)
        server.worker = number  # its metrics port (--metrics-port + N - 1), kept across restarts
        server.accept_balance = balance
        server.tls = tls  # loaded by the supervisor, the same in every worker
    except ConfigError as exc:
        channel.send_all(FAILED, _failure(startup_errors, str(exc)))
        return EXIT_STARTUP_FAILURE
    except Exception as exc:
        text = "".join(traceback.format_exception(exc)).rstrip()
        channel.send_all(FAILED, _failure(startup_errors, text))
        return EXIT_STARTUP_FAILURE

    def stop(_sig: int, _frame: Any) -> None:
        server.should_exit = True

    def quit_now(_sig: int, _frame: Any) -> None:
        server.should_exit = True
        server.force_exit = True

    def restart(_sig: int, _frame: Any) -> None:
        server.restarting = True
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGQUIT, quit_now)
    signal.signal(RESTART_SIGNAL, restart)
    try:
        run(server.serve(sockets=sockets), loop=config.loop)
    except LifespanFailure as exc:
        # The server has logged "Application startup failed: ..." (held back until now).
        channel.send_all(FAILED, startup_errors.text() or f"application startup failed: {exc}")
        return EXIT_STARTUP_FAILURE
    except Exception as exc:
        if server.started:
            raise
        text = "".join(traceback.format_exception(exc)).rstrip()
        channel.send_all(FAILED, _failure(startup_errors, text))
        return EXIT_STARTUP_FAILURE
    return 0


def _task_dumper(fd: int) -> Any:
    def dump(_sig: int, _frame: Any) -> None:
        text = task_stacks()
        if text:
            with contextlib.suppress(OSError):
                os.write(fd, text.encode("utf-8", "replace"))

    return dump


def task_stacks() -> str:
    """Where each task of the running event loop waits, innermost call first; "" without one.

    Follows each coroutine's `await` chain down to the awaited future (a task's own
    `get_stack()` shows only its outermost frame), in faulthandler's format.
    """
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no running loop: still importing the app
        return ""
    parts = []
    for task in sorted(tasks, key=lambda t: t.get_name()):
        frames = []
        awaitable: Any = task.get_coro()
        while awaitable is not None:
            frame = next(
                (
                    getattr(awaitable, a)
                    for a in ("cr_frame", "gi_frame", "ag_frame")
                    if getattr(awaitable, a, None) is not None
                ),
                None,
            )
            if frame is None:
                break
            frames.append(frame)
            awaitable = next(
                (
                    getattr(awaitable, a)
                    for a in ("cr_await", "gi_yieldfrom", "ag_await")
                    if getattr(awaitable, a, None) is not None
                ),
                None,
            )
        lines = [
            f'  File "{f.f_code.co_filename}", line {f.f_lineno} in {f.f_code.co_name}'
            for f in reversed(frames)
        ]
        parts.append(f"\nTask {task.get_name()!r} (most recent call first):\n" + "\n".join(lines))
    return "".join(parts) + "\n" if parts else ""


def _failure(startup_errors: _StartupErrors, summary: str) -> str:
    logged = startup_errors.text()
    return f"{logged}\n{summary}" if logged else summary


def set_title(role: str, config: Config) -> None:
    """`aserve: worker 2 [main:app]` in ps/top, when setproctitle is installed."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(f"aserve: {role} [{app_name(config.app)}]")


def app_name(app: Any) -> str:
    if isinstance(app, str):
        return app
    module = getattr(app, "__module__", None) or type(app).__module__
    name = getattr(app, "__qualname__", None) or type(app).__qualname__
    return f"{module}:{name}"
