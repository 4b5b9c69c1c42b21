"""A Kubernetes-style rollout behind a real nginx, under load: with --drain-delay, none fails.

What a Deployment's rollout does to a pod (docs/deployment.md, Kubernetes): the new pod starts
and becomes ready (its /readyz answers 200); the old pod gets SIGTERM while, at the same time,
its endpoint is being removed, and the proxy in front learns of it a moment later, sending new
connections to the old pod meanwhile. Here nginx is that proxy, its upstream switched (a
configuration reload) after SIGTERM has reached the old aserve. Without a drain delay the old
aserve would refuse the connections nginx still sends it, and nginx would answer 502.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import httpx
import pytest
from e2e_support import Aserve, nginx, wait_for

from processes import ClientThreads

pytestmark = pytest.mark.once

DRAIN_DELAY = 3.0
# How long after SIGTERM the proxy still sends to the old pod (endpoint removal spreading).
PROPAGATION = 0.7


class Load(ClientThreads):
    """Clients through the proxy until stopped, each request on a new connection (so nginx's
    own reload, which closes its idle client connections, cannot fail a request): GETs, and
    slow POSTs, which nginx never retries on another connection. Records every answer."""

    def __init__(self, port: int, clients: int = 4) -> None:
        super().__init__()
        self.port = port
        self.lock = threading.Lock()
        self.answers: list[tuple[float, str]] = []  # (when, which instance)
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        url = f"http://127.0.0.1:{self.port}"
        n = 0
        with httpx.Client(timeout=15, headers={"connection": "close"}) as client:
            while not self.stopping.is_set():
                n += 1
                try:
                    if n % 4:
                        response = client.get(url + "/")
                    else:
                        response = client.post(url + "/slow", content=b"x" * 1000)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.failures.append(repr(exc))
                    continue
                with self.lock:
                    if response.status_code == 200:
                        seen = json.loads(response.content)
                        self.answers.append((time.monotonic(), seen["instance"]))
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:200]!r}")

    def wait_for(self, instance: str, more: int) -> None:
        def count() -> int:
            return sum(1 for _, who in self.answers if who == instance)

        target = count() + more
        wait_for(lambda: count() >= target or self.failures, f"{more} answers from {instance}")


def health_port(server: Aserve) -> int:
    return int(re.search(r"Health checks on http://127\.0\.0\.1:(\d+) ", server.output)[1])


def readyz(server: Aserve) -> int:
    return httpx.get(f"http://127.0.0.1:{health_port(server)}/readyz", timeout=5).status_code


@pytest.mark.parametrize(
    "workers", [pytest.param([], id="one-process"), pytest.param(["--workers", "2"], id="workers")]
)
def test_a_rollout_with_drain_delay_loses_no_request(tmp_path, workers):
    options = ["--health-port", "0", "--drain-delay", str(DRAIN_DELAY), *workers]
    old = Aserve(*options, instance="old")
    new = None
    try:
        with nginx(tmp_path, old.address) as proxy, Load(proxy.port) as load:
            load.wait_for("old", 100)
            new = Aserve(*options, instance="new")  # the new pod, ready before the old one stops
            wait_for(lambda: readyz(new) == 200, "the new instance to be ready")
            sigterm = time.monotonic()
            old.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: readyz(old) == 503, "the old instance to say it is draining")
            time.sleep(max(0.0, sigterm + PROPAGATION - time.monotonic()))
            proxy.switch_upstream(new.address)  # the endpoint removal reaches the proxy
            load.wait_for("new", 50)
            assert old.proc.wait(DRAIN_DELAY + 30) == 0, old.output
            load.wait_for("new", 50)
    finally:
        for server in (old, new):
            if server is not None:
                server.stop()
    assert load.failures == [], load.failures[:5]
    old_after_sigterm = [
        when - sigterm for when, who in load.answers if who == "old" and when > sigterm
    ]
    # The old instance went on answering what the proxy still sent it after SIGTERM (each of
    # those requests would have failed had it stopped accepting then), then stopped.
    assert old_after_sigterm and max(old_after_sigterm) >= PROPAGATION / 2, old_after_sigterm[-5:]
    assert "Received SIGTERM: draining" in old.output
    last = [who for _, who in load.answers[-20:]]
    assert last == ["new"] * len(last)
    assert new is not None and "Traceback" not in old.output + new.output
