"""The server: event loop choice, listening sockets, signals, lifespan, drain and graceful shutdown.

`Server` embeds in a running event loop (`await server.serve()`); `serve()` is the blocking
entry point used by the CLI and by scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from aserve import compat, systemd
from aserve.balance import AcceptSlot
from aserve.config import Config
from aserve.edge import Edge
from aserve.errors import ConfigError
from aserve.health import bind_health_socket, listener_url, start_health_server
from aserve.importer import load_app
from aserve.lifespan import Lifespan, LifespanFailure
from aserve.listener import Listener
from aserve.logging import configure_logging, error_logger, set_log_level
from aserve.metrics import bind_metrics_socket, start_metrics_server
from aserve.protocols.http import HttpProtocol
from aserve.proxy import parse_trusted
from aserve.sockets import bind_sockets, describe, describe_listener, remove_unix_files
from aserve.state import ServerState
from aserve.tls import TLSInfo, load_tls, reload_tls

_TICK = 0.1  # how often the main loop looks at should_exit and refreshes the Date header

# The stop for a process being replaced (a supervisor's worker in a SIGHUP rolling restart or
# recycling, the --reload child on a change): as SIGTERM, but open WebSockets are closed with
# 1012 (service restart) instead of 1001 (going away). Sent by the supervisor and the
# reloader only; a single server leaves it alone.
RESTART_SIGNAL = signal.SIGUSR2


class StoppedWhileStarting(Exception):
    """Told to stop before lifespan startup was done: the startup was cancelled."""


class Server:
    """One server in the current event loop.

    Stop it with `server.stop()` (or, as with uvicorn, `server.should_exit = True`, which also
    works from another thread); `await server.serve()` then returns once shutdown is done.

    Under systemd it tells the service manager READY=1 once it accepts, STOPPING=1 when it
    begins shutting down, and pings the watchdog from its event loop, so a blocked loop is
    noticed. A supervisor's workers set `systemd_notify = False`: the supervisor speaks for
    the service.
    """

    systemd_notify = True
    # Whether this server logs the config's ignored-option lines (compat.py): not a worker's.
    log_notices = True
    # Whether the listening sockets are shared with other processes (workers): see listener.py.
    shared_sockets = False
    # This worker's slot in the supervisor's accept counts, to share bursts (balance.py).
    accept_balance: AcceptSlot | None = None
    # The TLS context a supervisor loaded before the fork (its workers use it as it is).
    tls: TLSInfo | None = None
    # Whether it serves --health-port itself: a supervisor's workers leave it to the supervisor.
    serves_health = True

    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = False
        self.should_exit = False
        self.force_exit = False
        # Stopping to be replaced (set by a supervisor's worker, the --reload child): open
        # WebSockets are closed with 1012 (service restart) instead of 1001 (going away).
        self.restarting = False
        self.state: ServerState | None = None
        self.servers: list[Listener] = []
        self.metrics_server: asyncio.Server | None = None
        # A supervisor's worker number (1, 2, ...): worker N serves its metrics on
        # --metrics-port + N - 1, each process its own scrape target (docs/metrics.md).
        self.worker: int | None = None
        self._metrics_waiting: asyncio.Task[None] | None = None
        # Health and drain (health.py): /readyz says 503 from the moment a drain begins.
        self.health_server: asyncio.Server | None = None
        self.draining = False
        self._drain_until: float | None = None
        self._drain_signal: int | None = None
        self._lifespan: Lifespan | None = None
        self._from_systemd = False
        self._edge: Edge | None = None
        self._reload_tls = False  # SIGHUP: re-read the certificate files (`reload_tls`)
        self._unlink_on_exit = False  # it bound the config's unix sockets: remove their files

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (to learn the port when the config asked for port 0)."""
        return [sock for server in self.servers for sock in server.sockets]

    def stop(self) -> None:
        self.should_exit = True

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        """Blocking: serve in a new event loop (the config's `loop`) until stopped."""
        run(self.serve(sockets), loop=self.config.loop)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._set_up_logging()
        with self.capture_signals():
            try:
                await self._serve(sockets)
            except StoppedWhileStarting:
                error_logger.info("Stopped before application startup was complete")

    async def _serve(self, sockets: list[socket.socket] | None) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        error_logger.info("Started server process [%d]", os.getpid())
        if self.log_notices:
            compat.log_notices(config)
        base_context = contextvars.copy_context()
        owned = sockets is None
        # A bad certificate fails before binding; a supervisor loaded it before the fork.
        tls = self.tls if self.tls is not None else load_tls(config)
        ssl_context = None if tls is None else tls.context
        if sockets is None:  # fail fast, before the app starts up
            sockets, self._from_systemd = bind_sockets(config)
            self._unlink_on_exit = not self._from_systemd
        metrics_sock = None
        try:
            metrics_sock = self.bind_metrics_socket()
            await self._start_health()  # /readyz says "starting" during lifespan startup
            app = load_app(config)
            lifespan_state: dict[str, Any] = {}
            self._lifespan = Lifespan(app, config.lifespan, lifespan_state)
            if config.lifespan != "off":
                error_logger.info("Waiting for application startup.")
            await self._start_up(self._lifespan, base_context.copy())
        except BaseException as exc:
            if isinstance(exc, LifespanFailure):
                error_logger.error("Application startup failed: %s", exc)
            if metrics_sock is not None:
                metrics_sock.close()
            self._close_health()
            if owned:  # we bound it: do not leak the socket (or a unix socket file)
                for sock in sockets:
                    sock.close()
                if self._unlink_on_exit:
                    remove_unix_files(config)
            raise
        if config.lifespan != "off" and not self._lifespan.unsupported:
            error_logger.info("Application startup complete.")
        state = ServerState(config, app, loop, base_context, lifespan_state)
        self.state = state
        if state.metrics is not None:  # a supervisor's worker shows the supervisor's counts
            state.metrics.supervisor = self.accept_balance
        edge = None
        state.tls_info = tls
        if config.proxy_protocol or ssl_context is not None:
            edge = self._edge = Edge(
                loop,
                lambda addresses=None: HttpProtocol(state, addresses),
                ssl_context,
                config.timeout_ssl_handshake,
                parse_trusted(config.forwarded_allow_ips) if config.proxy_protocol else None,
                config.timeout_request_header,
            )
        try:
            if metrics_sock is not None:
                await self._start_metrics(state, metrics_sock)
            elif state.metrics is not None:  # a worker whose predecessor holds the port
                self._metrics_waiting = loop.create_task(self._metrics_when_free(state))
            for sock in sockets:
                listener = Listener(
                    loop,
                    sock,
                    lambda: HttpProtocol(state),
                    config.backlog,
                    edge=edge,
                    shared=self.shared_sockets,
                    balance=self.accept_balance,
                )
                self.servers.append(listener)
                listener.start()
            self._log_started()
            self.started = True
            if self.systemd_notify:
                systemd.notify("READY=1", f"STATUS=Serving on {describe(self.sockets[0])}")
            await self._main_loop()
        finally:
            await self.shutdown()

    async def _start_up(self, lifespan: Lifespan, context: contextvars.Context) -> None:
        """Lifespan startup, given up when the server is told to stop before it is done.

        A startup that hangs (a database connect without a timeout) would otherwise hold a
        SIGTERM forever. The app's lifespan call is cancelled, so its `finally` blocks and
        context managers clean up; the server then stops without serving
        (`StoppedWhileStarting`). A startup that blocks the loop, or ignores the
        cancellation, is left to whoever waits for this process (a supervisor kills its
        worker: docs/deployment.md).
        """
        startup = asyncio.ensure_future(lifespan.startup(context))
        try:
            while not startup.done() and not self.should_exit:
                await asyncio.wait((startup,), timeout=_TICK)
        finally:
            given_up = not startup.done()
            if given_up:
                startup.cancel()  # told to stop (or this very task was cancelled)
        if not given_up:
            startup.result()  # LifespanFailure, as the app reported it
            return
        task = lifespan.cancel()
        while task is not None and not task.done() and not self.force_exit:
            await asyncio.wait((task,), timeout=_TICK)
        raise StoppedWhileStarting

    def _set_up_logging(self) -> None:
        """As uvicorn's embedding API does, unless the process has its own logging set up.

        aserve's default config (or the config's `log_config`) is applied when nothing is
        configured yet, so an embedded server prints what the CLI prints. A process that set up
        logging itself (root handlers: `basicConfig`, a framework, pytest) keeps it, and aserve's
        records reach it through the root logger; only `log_level` applies then.
        """
        config = self.config
        if logging.getLogger("aserve").handlers:  # the CLI, `aserve.run` or the app did it
            pass
        elif config.log_config is not None or not logging.getLogger().handlers:
            configure_logging(
                config.log_config,
                config.log_level,
                config.access_log,
                config.log_format,
                use_colors=config.use_colors,
            )
            return
        if config.log_level is not None:
            set_log_level(config.log_level)

    def _log_started(self) -> None:
        config = self.config
        if self._from_systemd:
            for sock in self.sockets:
                error_logger.info("aserve running on %s (socket from systemd)", describe(sock))
            return
        scheme = "https" if self.state and self.state.tls_info else "http"
        for address, sock in zip(config.listeners, self.sockets, strict=False):
            where = describe_listener(address, sock, scheme)
            error_logger.info("aserve running on %s (Press CTRL+C to quit)", where)

    def bind_metrics_socket(self) -> socket.socket | None:
        """The metrics listener's socket, when metrics are on; None for a worker whose port
        is still held by its predecessor (it retries in the background)."""
        config = self.config
        port = config.metrics_port
        if port is None:
            return None
        if self.worker is None:
            return bind_metrics_socket(config.metrics_host, port)
        worker_port = port + self.worker - 1 if port else 0
        return bind_metrics_socket(config.metrics_host, worker_port, wait_if_in_use=True)

    async def _start_metrics(self, state: ServerState, sock: socket.socket) -> None:
        assert state.metrics is not None
        self.metrics_server = await start_metrics_server(state.metrics.render, sock)
        host, port = sock.getsockname()[:2]
        error_logger.info("Metrics on http://%s:%d/metrics", host, port)

    async def _metrics_when_free(self, state: ServerState) -> None:
        error_logger.info("Metrics port in use (a draining predecessor?): retrying")
        while not self.should_exit:
            await asyncio.sleep(0.5)
            sock = self.bind_metrics_socket()
            if sock is not None:
                await self._start_metrics(state, sock)
                return

    async def _start_health(self) -> None:
        config = self.config
        if config.health_port is None or not self.serves_health:
            return
        sock = bind_health_socket(config.health_host, config.health_port)
        self.health_server = await start_health_server(sock, self._livez, self._readyz)
        error_logger.info("Health checks on %s (/livez, /readyz)", listener_url(sock))

    def _close_health(self) -> None:
        if self.health_server is not None:
            self.health_server.close()
            self.health_server = None

    def _livez(self) -> tuple[bool, str]:
        return True, "ok: the event loop answers"  # a blocked loop answers nothing at all

    def _readyz(self) -> tuple[bool, str]:
        if self.draining or self.should_exit:
            return False, "draining: shutting down"
        if not self.started:
            return False, "starting: lifespan startup is not complete"
        return True, "ready"

    @property
    def health_port(self) -> int | None:
        """The health listener's port (to learn it when the config asked for port 0)."""
        if self.health_server is None:
            return None
        port: int = self.health_server.sockets[0].getsockname()[1]
        return port

    @property
    def metrics_port(self) -> int | None:
        """The metrics listener's port (to learn it when the config asked for port 0)."""
        if self.metrics_server is None:
            return None
        port: int = self.metrics_server.sockets[0].getsockname()[1]
        return port

    async def _main_loop(self) -> None:
        state = self.state
        assert state is not None
        second = int(time.time())
        # Pinged from this loop, not a thread: a blocked event loop stops the pings.
        watchdog = systemd.watchdog_period() if self.systemd_notify else None
        next_ping = 0.0
        notify = self.config.callback_notify  # uvicorn's: an embedder's heartbeat
        next_notify = time.monotonic() + self.config.timeout_notify
        while not self.should_exit:
            if self._reload_tls:
                self._reload_tls = False
                self.reload_tls()
            if self._drain_signal is not None:
                self._drain_step()
                if self.should_exit:
                    break
            if watchdog is not None and time.monotonic() >= next_ping:
                systemd.notify("WATCHDOG=1")
                next_ping = time.monotonic() + watchdog
            if notify is not None and time.monotonic() >= next_notify:
                next_notify = time.monotonic() + self.config.timeout_notify
                await notify()
            await asyncio.sleep(_TICK)
            now = int(time.time())
            if now != second:
                second = now
                state.update_date()

    def _drain_step(self) -> None:
        """A drain (--drain-delay) under way: say so once, and end it when the delay is up."""
        if self._drain_until is None:
            delay = self.config.drain_delay
            self._drain_until = time.monotonic() + delay
            if self.systemd_notify:
                systemd.notify("STOPPING=1")
            name = signal.Signals(self._drain_signal or signal.SIGTERM).name
            error_logger.info(
                "Received %s: draining, /readyz answers 503; still serving for %gs "
                "(--drain-delay), then shutting down",
                name,
                delay,
            )
        elif time.monotonic() >= self._drain_until:
            self.should_exit = True

    async def shutdown(self) -> None:
        """Stop accepting, finish what is in flight (bounded), then run lifespan shutdown."""
        state = self.state
        if state is not None:
            if self.systemd_notify:
                systemd.notify("STOPPING=1")
            error_logger.info("Shutting down")
            state.restarting = self.restarting
            await self._close_connections(state)
            await self._drain(state)
        if self._lifespan is not None:
            if self.config.lifespan != "off":
                error_logger.info("Waiting for application shutdown.")
            try:
                await self._lifespan.shutdown()
            except LifespanFailure as exc:
                error_logger.error("Application shutdown failed: %s", exc)
            else:
                if self.config.lifespan != "off":
                    error_logger.info("Application shutdown complete.")
            self._lifespan = None
        if self._metrics_waiting is not None:
            self._metrics_waiting.cancel()
            self._metrics_waiting = None
        if self.metrics_server is not None:  # kept until now: a scrape can watch the drain
            self.metrics_server.close()
            self.metrics_server = None
        self._close_health()  # the same: /readyz says 503 until the very end
        # Sockets handed in (by a supervisor, the reloader, systemd) belong to whoever bound
        # them: their socket file stays for the next server.
        if self._unlink_on_exit:
            remove_unix_files(self.config)

    async def _close_connections(self, state: ServerState) -> None:
        """Stop accepting; close idle connections, the others after what they already read."""
        state.shutting_down = True
        for server in self.servers:
            server.close()
        for conn in list(state.connections):
            conn.shutdown()

    async def _drain(self, state: ServerState) -> None:
        timeout = self.config.timeout_graceful_shutdown
        deadline = None if timeout is None else time.monotonic() + timeout
        if state.connections or state.tasks:
            error_logger.info("Waiting for connections to close. (CTRL+C to force quit)")
        while (state.connections or state.tasks) and not self.force_exit:
            if deadline is not None and time.monotonic() >= deadline:
                error_logger.warning(
                    "Graceful shutdown timed out after %ss: cancelling %d request(s), "
                    "closing %d connection(s)",
                    timeout,
                    len(state.tasks),
                    len(state.connections),
                )
                break
            await asyncio.sleep(_TICK / 2)
        for task in list(state.tasks):
            task.cancel()
        for conn in list(state.connections):
            conn.abort()
        if state.tasks:
            await asyncio.wait(list(state.tasks), timeout=1.0)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM stop the server while it serves (main thread only), as with uvicorn;
        with TLS on, SIGHUP reloads the certificate (`reload_tls`). Without TLS, SIGHUP keeps
        its default action (the process ends), as uvicorn's: a closed terminal stops it."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        if self.config.ssl_certfile is not None or self.config.ssl_context_factory is not None:
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._handle_reload)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _handle_reload(self, sig: int, frame: Any) -> None:
        self._reload_tls = True  # the main loop reloads: a signal handler may interrupt anything

    def reload_tls(self) -> bool:
        """Read the certificate, key and CA files again (SIGHUP does this).

        New connections get the new certificate; open ones, and handshakes under way, keep
        the one they began with. Files that do not load leave the certificate in use as it is,
        with one error line naming the problem. True when the new one is in use.
        """
        edge, state = self._edge, self.state
        if edge is None or state is None or state.tls_info is None:
            return False
        try:
            tls = reload_tls(self.config)
        except ConfigError as exc:
            error_logger.error("TLS certificate not reloaded, the one in use stays: %s", exc)
            return False
        state.tls_info = tls.replacing(state.tls_info)
        edge.use_ssl_context(tls.context)
        error_logger.info("TLS certificate reloaded from %s", _source(self.config))
        return True

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGINT/SIGTERM: a graceful stop, after --drain-delay if the server is serving.

        Only flags are set here (a signal handler may interrupt anything); the main loop does
        the rest. A second SIGINT, during the drain or the graceful stop, stops at once.
        """
        if sig == signal.SIGINT and (self.should_exit or self.draining):
            self.force_exit = True
            self.should_exit = True
        elif self.draining:
            pass  # a second SIGTERM: the drain goes on as announced
        elif self.config.drain_delay > 0 and self.started and not self.should_exit:
            self.draining = True  # /readyz says 503 from now on
            self._drain_signal = sig
        else:
            self.should_exit = True


def _source(config: Config) -> str:
    """Where a TLS context comes from, for the log."""
    if config.ssl_certfile is None:
        return "ssl_context_factory"
    return str(config.ssl_certfile)


def loop_factory(setting: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when asked for or (with "auto") when installed; asyncio's loop otherwise.

    As uvicorn's: "zuvloop" is taken as "auto" (compat.py logs so), "none" is asyncio's own,
    and a "module:attribute" string names a loop factory to import.
    """
    if ":" in setting:
        return _import_loop_factory(setting)
    if setting in ("auto", "uvloop", "zuvloop"):
        try:
            import uvloop
        except ImportError:
            if setting == "uvloop":
                from aserve.errors import ConfigError

                raise ConfigError(
                    "loop 'uvloop' was asked for but uvloop is not installed"
                ) from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def _import_loop_factory(target: str) -> Callable[[], asyncio.AbstractEventLoop]:
    from aserve.errors import ConfigError
    from aserve.importer import AppLoadError, import_from_string

    try:
        factory = import_from_string(target)
    except AppLoadError as exc:
        raise ConfigError(f"loop {target!r}: {exc}") from None
    if not callable(factory):
        raise ConfigError(f"loop {target!r} is not a callable loop factory")
    return factory  # type: ignore[no-any-return]


def run(coro: Coroutine[Any, Any, None], loop: str = "auto") -> None:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(coro)
