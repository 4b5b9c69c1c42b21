"""aserve behind a real HAProxy: two instances balanced, failover, PROXY protocol v2, h2c."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
from e2e_support import H2C, PROXY_V2, aserve, haproxy, http_get, require_option
from websockets.sync.client import connect

pytestmark = pytest.mark.once

CLIENT = "127.0.0.2"  # the test's address; HAProxy reaches aserve from 127.0.0.1


def get_from(port: int, path: str = "/") -> tuple[dict, int]:
    """What the app saw of one request on a new connection from CLIENT, and its port."""
    head, body, client_port = http_get(port, path, source=CLIENT)
    assert head.startswith(b"HTTP/1.1 200 "), head + body
    return json.loads(body), client_port


def test_balanced_across_two_instances_and_fails_over(tmp_path):
    with (
        aserve(instance="a") as a,
        aserve(instance="b") as b,
        haproxy(tmp_path, [a.address, b.address]) as proxy,
    ):
        seen = [get_from(proxy.port, f"/{n}")[0] for n in range(8)]
        sock = socket.create_connection(("127.0.0.1", proxy.port), source_address=(CLIENT, 0))
        with connect(f"ws://127.0.0.1:{proxy.port}/ws", sock=sock, open_timeout=10) as ws:
            ws_seen = json.loads(ws.recv(timeout=10))
            ws.send("through haproxy")
            echoed = ws.recv(timeout=10)
        assert a.stop() == 0  # instance a goes away (a restart, a crash)
        after = [get_from(proxy.port)[0]["instance"] for _ in range(6)]
    assert [s["instance"] for s in seen] == ["a", "b"] * 4  # round robin, request by request
    assert {s["client"][0] for s in seen} == {CLIENT}  # from X-Forwarded-For (option forwardfor)
    assert [s["path"] for s in seen] == [f"/{n}" for n in range(8)]
    assert ws_seen["client"][0] == CLIENT
    assert echoed == "through haproxy"
    assert after == ["b"] * 6  # retried on b, no request failed


def test_proxy_protocol_v2(tmp_path):
    """HAProxy announces each client with a PROXY v2 header: aserve reports the client's real
    address and port, without any HTTP header to trust."""
    require_option("--proxy-protocol", "PROXY protocol support")
    with (
        aserve("--proxy-protocol", instance="a") as a,
        aserve("--proxy-protocol", instance="b") as b,
        haproxy(tmp_path, [a.address, b.address], PROXY_V2) as proxy,
    ):
        answers = [get_from(proxy.port) for _ in range(4)]
    assert sorted(seen["instance"] for seen, _ in answers) == ["a", "a", "b", "b"]
    for seen, client_port in answers:
        assert seen["client"] == [CLIENT, client_port]


def test_h2c_to_aserve(tmp_path: Path):
    """HAProxy speaking HTTP/2 in cleartext to aserve (`server ... proto h2`), as a proxy or a
    platform does in front of an app: the requests arrive as HTTP/2, the client's address
    comes from X-Forwarded-For, a large POST body arrives whole and a streamed response is
    passed on as it is sent."""
    with (
        aserve(instance="a") as a,
        aserve(instance="b") as b,
        haproxy(tmp_path, [a.address, b.address], H2C) as proxy,
    ):
        seen = [get_from(proxy.port, f"/{n}")[0] for n in range(4)]
        url = f"http://127.0.0.1:{proxy.port}"
        body = bytes(range(256)) * 4096  # 1 MiB: several windows of aserve's HTTP/2 streams
        posted = httpx.post(f"{url}/post", content=body, timeout=20).json()
        marker = tmp_path / "first-chunk-read"
        with httpx.stream("GET", f"{url}/stream?{marker}", timeout=20) as response:
            chunks = response.iter_raw()
            first = next(chunks)
            marker.touch()  # the app sends the rest once it sees this
            rest = b"".join(chunks)
    assert [s["http_version"] for s in seen] == ["2"] * 4
    assert [s["instance"] for s in seen] == ["a", "b"] * 2
    assert {s["client"][0] for s in seen} == {CLIENT}
    assert [s["path"] for s in seen] == [f"/{n}" for n in range(4)]
    assert posted["http_version"] == "2"
    assert posted["body_size"] == len(body)
    assert response.status_code == 200
    assert first == b"first\n"  # before the app sent the rest: not buffered by HAProxy
    assert rest == b"released\n"
