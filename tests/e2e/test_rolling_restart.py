"""A rolling SIGHUP restart of aserve's workers behind a real nginx, under load: none fails."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest
from e2e_support import aserve, http_get, nginx, require_option, wait_for

from processes import ClientThreads

pytestmark = pytest.mark.once


def children(pid: int) -> set[int]:
    """The live child processes of `pid` (the workers of a supervisor), from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited meanwhile
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
            fields = stat.rpartition(")")[2].split()
            if fields[0] != "Z" and int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


class Load(ClientThreads):
    """Clients through the proxy until stopped: some on kept-alive connections, one opening a
    new connection per request; every answer's status and worker pid are recorded.

    nginx retries a GET that failed on one upstream connection, which would hide a worker that
    drops requests; it does not retry a POST once sent, so the slow POSTs in the mix fail if a
    restart cuts them."""

    def __init__(self, port: int, keep_alive: int = 3) -> None:
        super().__init__()
        self.port = port
        self.lock = threading.Lock()
        self.pids: list[int] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._keep_alive) for _ in range(keep_alive)]
        self.threads.append(threading.Thread(target=self._new_connections))

    def _record(self, status: int, body: bytes) -> None:
        with self.lock:
            if status == 200:
                self.pids.append(json.loads(body)["pid"])
            else:
                self.failures.append(f"{status} {body[:200]!r}")

    def _keep_alive(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=15) as client:
            n = 0
            while not self.stopping.is_set():
                n += 1
                try:
                    if n % 5:
                        response = client.get("/")
                    else:  # in flight for a while; and nginx never retries a POST it sent
                        response = client.post("/slow", content=b"x" * 1000)
                except httpx.HTTPError as exc:
                    self._record(0, repr(exc).encode())
                else:
                    self._record(response.status_code, response.content)

    def _new_connections(self) -> None:
        while not self.stopping.is_set():
            try:
                head, body, _ = http_get(self.port)
            except OSError as exc:
                self._record(0, repr(exc).encode())
            else:
                self._record(int(head.split()[1]) if head else 0, body)

    def wait_for(self, more: int) -> None:
        target = len(self.pids) + more
        wait_for(lambda: len(self.pids) >= target or self.failures, f"{more} more answers")


def test_sighup_rolling_restart_behind_nginx_under_load(tmp_path):
    require_option("--workers", "workers under a supervisor")
    with (
        aserve("--workers", "2") as server,
        nginx(tmp_path, server.address) as proxy,
        Load(proxy.port) as load,
    ):
        wait_for(lambda: len(children(server.proc.pid)) == 2, "two workers")
        before = children(server.proc.pid)
        load.wait_for(200)  # every client past its first slow POST: some are in flight now
        served_before_reload = set(load.pids)
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_for(
            lambda: "Reload complete" in server.output, "the reload", diagnose=lambda: server.output
        )
        wait_for(lambda: not children(server.proc.pid) & before, "the old workers to exit")
        after = children(server.proc.pid)
        load.wait_for(100)
    assert load.failures == [], load.failures[:5]
    assert len(after) == 2 and not after & before
    assert served_before_reload <= before  # the old workers served the load, then
    assert set(load.pids[-50:]) <= after  # the new ones did (which worker: the kernel's choice)
