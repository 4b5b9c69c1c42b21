"""`--reload`: serve from a fresh child process, and start a new one when watched files change.

For development. The parent binds the sockets once (so the port, even port 0, stays the same
across restarts), runs no event loop, and watches files with `watchfiles`. Each server runs in
a spawned interpreter, so changed code is imported afresh rather than patched into live
modules. A child that cannot start (a syntax error being typed) exits with its one-line error;
the parent says so once and waits for the next change, which is usually the fix.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

from aserve.config import Config
from aserve.errors import ConfigError
from aserve.logging import configure_logging, error_logger

DEFAULT_INCLUDES = ("*.py",)
# Editor swap files, hidden files and compiled bytecode: uvicorn's defaults.
DEFAULT_EXCLUDES = (".*", ".py[cod]", ".sw.*", "~*")
# Directories never worth a restart (virtualenvs, caches, VCS data).
IGNORED_DIRS = frozenset(
    {"__pycache__", ".git", ".hg", ".svn", ".tox", ".venv", "venv", "node_modules", ".mypy_cache",
     ".pytest_cache", ".ruff_cache", "site-packages", ".idea", ".vscode"}
)  # fmt: skip


class ChangeFilter:
    """Which changed paths restart the server: uvicorn's `--reload-include/--reload-exclude`.

    A pattern is a glob matched against the file name, or against the end of the path when it
    has a `/` (`static/*.css`). Given excludes win over everything; given includes win over
    the default excludes (so `--reload-include .env` watches `.env`). An excluded name also
    rules out every file below a directory of that name, as `IGNORED_DIRS` always do.
    """

    def __init__(self, includes: Sequence[str] = (), excludes: Sequence[str] = ()) -> None:
        self.includes = list(includes)
        self.excludes = list(excludes)

    def __call__(self, change: Any, path: str) -> bool:
        return self.matches(path)

    def matches(self, path: str) -> bool:
        pure = Path(path)
        if any(part in IGNORED_DIRS for part in pure.parts[:-1]):
            return False
        if _excluded(pure, self.excludes):
            return False
        if any(_match(pure, pattern) for pattern in self.includes):
            return True
        if _excluded(pure, DEFAULT_EXCLUDES):
            return False
        return any(_match(pure, pattern) for pattern in DEFAULT_INCLUDES)


def _excluded(path: Path, patterns: Sequence[str]) -> bool:
    """The file, or a directory it is in, matches one of `patterns`."""
    if any(_match(path, pattern) for pattern in patterns):
        return True
    return any(fnmatch.fnmatchcase(part, p) for part in path.parts[:-1] for p in patterns)


def _match(path: Path, pattern: str) -> bool:
    if "/" in pattern:
        return path.match(pattern)
    return fnmatch.fnmatchcase(path.name, pattern)


def watched_dirs(config: Config) -> list[Path]:
    """`--reload-dir`s, or the current directory and the app directory; none inside another."""
    given = config.reload_dirs
    if isinstance(given, str):
        given = [given]
    if given:
        dirs = [Path(d).resolve() for d in given]
    else:
        dirs = [Path.cwd().resolve()]
        if config.app_dir:
            dirs.append(Path(config.app_dir).resolve())
    for directory in dirs:
        if not directory.is_dir():
            raise ConfigError(f"reload directory {str(directory)!r} does not exist")
    unique = list(dict.fromkeys(dirs))
    return [
        directory
        for directory in unique
        if not any(d != directory and directory.is_relative_to(d) for d in unique)
    ]


def check(config: Config) -> None:
    """Refuse what --reload cannot do, each with a one-line error."""
    if not isinstance(config.app, str):
        raise ConfigError('reload needs the app as an import string ("module:attribute")')
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--reload needs the watchfiles package: pip install 'aserve[reload]'"
        ) from None


class Reloader:
    """The parent process: bind, start a child server, restart it on change, stop on a signal."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.dirs = watched_dirs(config)
        self.filter = ChangeFilter(config.reload_includes or (), config.reload_excludes or ())
        self.stop = threading.Event()
        self.sockets: list[socket.socket] = []
        self.process: SpawnProcess | None = None
        self._context = multiprocessing.get_context("spawn")
        self._exit_reported = False

    def run(self) -> None:
        from watchfiles import watch

        from aserve.sockets import bind_sockets, remove_unix_files

        self.sockets, from_systemd = bind_sockets(self.config)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            error_logger.info(
                "Will watch for changes in these directories: %s", [str(d) for d in self.dirs]
            )
            error_logger.info("Started reloader process [%d] using WatchFiles", os.getpid())
            self._start()
            for changes in watch(
                *self.dirs,
                watch_filter=self.filter,
                stop_event=self.stop,
                rust_timeout=500,
                yield_on_timeout=True,
                raise_interrupt=False,
            ):
                if self.stop.is_set():
                    break
                if changes:
                    names = sorted({_relative(path) for _, path in changes})
                    error_logger.warning(
                        "WatchFiles detected changes in %s. Reloading...",
                        ", ".join(repr(n) for n in names),
                    )
                    self._terminate(restart=True)
                    self._start()
                else:
                    self._report_exit()
                # uvicorn's --reload-delay: a pause between looks, so a burst of changes (a
                # checkout, an editor's save) restarts once. watchfiles keeps what changes
                # meanwhile for the next look.
                if self.config.reload_delay and self.stop.wait(self.config.reload_delay):
                    break
        finally:
            self._terminate()
            for sock in self.sockets:
                sock.close()
            if not from_systemd:
                remove_unix_files(self.config)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            error_logger.info("Stopping reloader process [%d]", os.getpid())

    def _on_signal(self, sig: int, frame: Any) -> None:
        process = self.process
        if self.stop.is_set() and sig == signal.SIGINT and process and process.pid is not None:
            os.kill(process.pid, signal.SIGKILL)  # a second Ctrl+C: do not wait any longer
        self.stop.set()

    def _start(self) -> None:
        self._exit_reported = False
        process = self._context.Process(
            target=_serve_child, args=(self.config, self.sockets), name="aserve-server"
        )
        process.start()
        self.process = process

    def _report_exit(self) -> None:
        """Say once that the server stopped by itself (often: the app does not import)."""
        process = self.process
        if process is None or self._exit_reported or process.exitcode is None:
            return
        self._exit_reported = True
        error_logger.error(
            "Server process [%d] exited with code %d; waiting for a file change to restart it",
            process.pid,
            process.exitcode,
        )

    def _terminate(self, restart: bool = False) -> None:
        """Stop the child gracefully (lifespan shutdown included): SIGTERM, or for a
        `restart` `RESTART_SIGNAL`, the same stop, with WebSockets closed 1012 not 1001."""
        process = self.process
        if process is None:
            return
        self.process = None
        if process.exitcode is None:
            if restart and process.pid is not None:
                from aserve.server import RESTART_SIGNAL

                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, RESTART_SIGNAL)
            else:
                process.terminate()
            grace = self.config.timeout_graceful_shutdown
            process.join(None if grace is None else grace + 5)
            if process.exitcode is None:
                process.kill()
                process.join()
        process.close()


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _relative(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def _serve_child(config: Config, sockets: list[socket.socket]) -> None:
    """Runs in the spawned interpreter: one ordinary server on the parent's sockets."""
    from aserve.lifespan import LifespanFailure
    from aserve.server import RESTART_SIGNAL, Server

    configure_logging(
        config.log_config,
        config.log_level,
        config.access_log,
        config.log_format,
        use_colors=config.use_colors,
    )
    config.drain_delay = 0.0  # this process's copy: a file change restarts at once, no drain
    server = Server(config)
    server.systemd_notify = False  # a development server; the parent is what systemd started

    def restart(_sig: int, _frame: Any) -> None:
        server.restarting = True
        server.should_exit = True

    signal.signal(RESTART_SIGNAL, restart)
    try:
        server.run(sockets)
    except ConfigError as exc:
        _child_error(str(exc))
        sys.exit(1)
    except LifespanFailure as exc:
        _child_error(f"application startup failed: {exc}")
        sys.exit(3)


def _child_error(message: str) -> None:
    logging.getLogger("aserve.error").error("%s", message)


def run_reloader(config: Config) -> None:
    """Serve `config` with --reload until SIGINT/SIGTERM."""
    check(config)
    Reloader(config).run()
