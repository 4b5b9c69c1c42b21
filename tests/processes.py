"""Whole processes in tests: `python -m aserve ...` (or a proxy) as a user runs it.

One helper for every test that starts a real process: its output is collected on a thread
(so a full pipe never blocks it), a wait polls a condition with a deadline and names what it
waited for, with the output, when it fails or the process exits first, and a stop always
reaps the process (killed if it does not stop in time).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import httpx

# Generous: the CI machine has two busy cores.
DEADLINE = 30.0

ASERVE = [sys.executable, "-m", "aserve"]

_RUNNING_ON = re.compile(r"running on https?://127\.0\.0\.1:(\d+)")


def wait_for(
    condition: Callable[[], Any],
    what: str,
    timeout: float = DEADLINE,
    diagnose: Callable[[], str] = lambda: "",
) -> None:
    """Poll `condition` until it is true; an AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{diagnose()}")
        time.sleep(0.02)


class Child:
    """A process with one output stream collected on a thread into `lines`.

    By default that is stderr, and stdout is `stdout` (a pipe the test may read after the
    process exits, or DEVNULL); `merge_output=True` collects both together.
    """

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        *,
        stdout: int = subprocess.PIPE,
        merge_output: bool = False,
        **popen: Any,
    ) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if merge_output else stdout,
            stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
            env={**os.environ, **(env or {})},
            text=True,
            **popen,
        )
        self._stream = self.proc.stdout if merge_output else self.proc.stderr
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._stream is not None
        for line in self._stream:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            self._reader.join(5)  # its last lines
            raise AssertionError(
                f"{Path(self.args[0]).name} exited with {self.proc.returncode}:\n{self.output}"
            )

    def wait_until(
        self,
        condition: Callable[[], Any],
        what: str,
        timeout: float = DEADLINE,
        diagnose: Callable[[], str] | None = None,
        *,
        or_stop: bool = False,
    ) -> None:
        """Poll `condition` while the process runs; fails if it exits or time runs out.
        `or_stop`: a process that never gets there is stopped, not left behind."""

        def met() -> Any:
            if condition():
                return True
            self.check_alive()
            return False

        try:
            wait_for(met, what, timeout, diagnose or (lambda: self.output))
        except BaseException:
            if or_stop:
                self.stop()
            raise

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE) -> int:
        """Send `sig` and wait; killed if it has not exited after `timeout`. Its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


class AserveProcess(Child):
    """`python -m aserve ARGS...`; its log (stderr) is in `output`."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, **options: Any) -> None:
        super().__init__([*ASERVE, *args], env, **options)

    def wait_for_port(self, timeout: float = DEADLINE) -> int:
        """The port it logs it is "running on" (started with --port 0)."""
        ports: list[int] = []

        def logged() -> bool:
            match = _RUNNING_ON.search(self.output)
            if match:
                ports.append(int(match.group(1)))
            return bool(match)

        try:
            self.wait_until(logged, "aserve to start", timeout)
        except AssertionError as exc:
            raise AssertionError(f"server did not start: {exc}") from None
        return ports[0]


class ClientThreads:
    """Client threads that run until told to stop: the ones a subclass puts in `threads` are
    started on entering `with`, and on leaving it `stopping` is set and each is joined."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(DEADLINE)


class Load(ClientThreads):
    """Steady load: keep-alive clients (httpx) and clients opening a new connection each time.

    Counts every request that did not get a 200 from a worker: across restarts there must be
    none.
    """

    def __init__(
        self,
        url: str,
        keep_alive: int = 4,
        new_connections: int = 2,
        http2: bool = False,
        verify: Any = True,
        path: str = "/",
    ) -> None:
        super().__init__()
        self.url = url
        self.path = path  # "/slow?0.05" (tests/apps/supervised.py) keeps requests in flight
        # HTTP/2 by prior knowledge (h2c) when asked: httpx with python-hyper's h2.
        self.versions = {"http1": not http2, "http2": http2}
        self.verify = verify  # httpx's: an ssl.SSLContext for a server with a test CA
        self.ok = 0
        self.failures: list[str] = []
        self.pids: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._keep_alive, daemon=True) for _ in range(keep_alive)
        ] + [
            threading.Thread(target=self._new_connections, daemon=True)
            for _ in range(new_connections)
        ]

    def _record(self, response: httpx.Response | None, error: Exception | None) -> None:
        with self._lock:
            if error is not None:
                self.failures.append(f"{type(error).__name__}: {error}")
            elif response is not None and response.status_code != 200:
                self.failures.append(f"status {response.status_code}")
            elif response is not None:
                self.ok += 1
                self.pids[int(response.text)] += 1

    def _keep_alive(self) -> None:
        with httpx.Client(timeout=10, verify=self.verify, **self.versions) as client:
            while not self.stopping.is_set():
                try:
                    self._record(client.get(self.url + self.path), None)
                except httpx.HTTPError as exc:
                    self._record(None, exc)

    def _new_connections(self) -> None:
        while not self.stopping.is_set():
            try:
                if self.versions["http2"]:
                    with httpx.Client(timeout=10, verify=self.verify, **self.versions) as client:
                        response = client.get(self.url + self.path)
                else:
                    headers = {"connection": "close"}
                    response = httpx.get(
                        self.url + self.path, timeout=10, headers=headers, verify=self.verify
                    )
                self._record(response, None)
            except httpx.HTTPError as exc:
                self._record(None, exc)

    def wait_for(self, requests: int, timeout: float = DEADLINE) -> None:
        start = self.ok
        wait_for(lambda: self.ok >= start + requests or self.failures, "load", timeout)
