"""What an idle keep-alive connection leaves for the cyclic garbage collector to visit.

A full collection visits every tracked object, with every connection held: at 100,000
connections each object per connection costs about 3.5 ms of pause (docs/performance.md).
"""

from __future__ import annotations

import gc
import socket
import time

from conftest import read_response, serve

CONNECTIONS = 200
# Tracked objects per idle connection, the server's alone, with a margin above today's (other
# threads of a test run allocate meanwhile: up to 0.1 a connection seen)
# (uvloop 10: protocol, parser, timer handle and its libuv timer, transport, its write list
# and context, the socket, uvloop's weak reference to it and its cached `data_received`;
# asyncio 17: its transport, selector key and handles hold more).
BOUND = {"uvloop": 12, "asyncio": 19}


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def _request(sock: socket.socket) -> None:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock).startswith(b"HTTP/1.1 200")


def _tracked() -> int:
    gc.collect()
    return len(gc.get_objects())


def test_an_idle_connection_holds_few_objects_the_collector_tracks(loop_name):
    with serve(hello, loop=loop_name) as server:
        state = server.server.state
        with socket.create_connection((server.host, server.port)) as warm:
            _request(warm)  # first-request caches, the shared parser callbacks
        deadline = time.monotonic() + 10
        while state.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        before = _tracked()
        socks = [socket.create_connection((server.host, server.port)) for _ in range(CONNECTIONS)]
        try:
            for sock in socks:
                _request(sock)
            while len(state.connections) < CONNECTIONS and time.monotonic() < deadline:
                time.sleep(0.01)
            # (Each client socket here is one tracked object of the test's own.)
            per_connection = (_tracked() - before) / CONNECTIONS - 1
            for sock in socks:  # still served after all that
                _request(sock)
        finally:
            for sock in socks:
                sock.close()
    assert per_connection <= BOUND[loop_name], per_connection
