"""Logs as operators read them: durations that move, quiet third-party loggers."""

from __future__ import annotations

import logging

import pytest

from conftest import serve


async def hello(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hi"})


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_duration_of_a_request_answered_in_one_loop_iteration_is_not_zero(caplog, loop):
    """uvloop's loop.time() only moves between iterations; an eagerly answered request starts
    and ends inside one, so the access log must time it with a clock that moves."""
    caplog.set_level(logging.INFO, logger="aserve.access")
    with serve(hello, loop=loop, access_log_format="{duration} {duration_ms}") as server:
        for _ in range(3):
            response = server.request(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert response.startswith(b"HTTP/1.1 200 ")
    lines = [r.getMessage() for r in caplog.records if r.name == "aserve.access"]
    assert len(lines) == 3
    for line in lines:
        seconds, millis = (float(part) for part in line.split())
        assert 0 < seconds < 5, line
        assert millis > 0, line
