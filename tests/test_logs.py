"""Logs as operators read them: durations that move, quiet third-party loggers."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aserve.config import Config
from aserve.errors import ConfigError
from aserve.logging import ACCESS_LOG_FIELDS, AccessRecord, access_fields
from conftest import read_until_close, serve

APPS = Path(__file__).parent / "apps"


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


# -- --log-format: text and JSON from the real command ---------------------------------------


def _run_and_request(tmp_path: Path, *flags: str) -> tuple[list[str], list[str]]:
    """`aserve` with `flags`, one awkward request, SIGTERM: its stdout and stderr lines."""
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aserve", "lifespan_apps:hello", "--app-dir", str(APPS),
             "--port", "0", "--lifespan", "off", *flags],
            stdout=stdout,
            stderr=stderr,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            port = None
            while port is None and time.monotonic() < deadline and proc.poll() is None:
                match = re.search(r"running on http://127\.0\.0\.1:(\d+)", err.read_text())
                port = int(match.group(1)) if match else None
                time.sleep(0.05)
            assert port is not None, err.read_text()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(
                    b'GET /a%22b%0Ac%1B[31m?q=%22x HTTP/1.1\r\nHost: x\r\nUser-Agent: say "hi"\r\n'
                    b"X-Request-ID: req-42\r\nConnection: close\r\n\r\n"
                )
                assert read_until_close(sock).startswith(b"HTTP/1.1 200 ")
            deadline = time.monotonic() + 20
            while not out.read_text().strip() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
    return out.read_text().splitlines(), err.read_text().splitlines()


@pytest.mark.once
def test_log_format_json_one_object_a_line(tmp_path):
    fmt = '{client} "{method} {full_path}" {status} {request_id}'
    stdout, stderr = _run_and_request(tmp_path, "--log-format", "json", "--access-log-format", fmt)
    assert len(stdout) == 1, stdout
    access = json.loads(stdout[0])
    assert access["logger"] == "aserve.access" and access["level"] == "INFO"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", access["time"])
    # Every field of the text format, as values (not escaped text) that JSON carries safely.
    assert set(ACCESS_LOG_FIELDS) <= set(access)
    assert access["method"] == "GET"
    assert access["path"] == '/a"b\nc\x1b[31m'
    assert access["query"] == "q=%22x"
    assert access["status"] == 200 and access["bytes"] == len(b"hello")
    assert access["request_id"] == "req-42"
    assert access["user_agent"] == 'say "hi"'
    assert access["referer"] is None
    assert access["client_ip"] == "127.0.0.1" and access["http_version"] == "1.1"
    assert isinstance(access["duration_ms"], float) and access["duration_ms"] > 0
    assert access["message"].endswith('" 200 req-42')  # the text line, escaped as in text mode
    assert "\x1b" not in stdout[0] and '\\"' in stdout[0]
    # The server's own lines too: every stderr line is one JSON object.
    records = [json.loads(line) for line in stderr]
    assert {r["logger"] for r in records} == {"aserve.error"}
    assert any(r["message"].startswith("aserve running on http://") for r in records)
    assert any(r["message"] == "Shutting down" for r in records)


@pytest.mark.once
def test_log_format_text_keeps_the_escaped_lines(tmp_path):
    stdout, stderr = _run_and_request(
        tmp_path, "--access-log-format", '"{method} {full_path}" {user_agent} {request_id}'
    )
    assert len(stdout) == 1, stdout
    assert stdout[0] == ('INFO:     "GET /a\\"b\\x0ac\\x1b[31m?q=%22x" say \\"hi\\" req-42')
    assert any(line.startswith("INFO:     aserve running on") for line in stderr)
    with pytest.raises(json.JSONDecodeError):
        json.loads(stderr[0])


def test_access_fields_cover_every_text_field():
    """A field added to the text format must not be missing from the JSON one."""
    record = AccessRecord(
        {
            "client": ("10.0.0.1", 5000),
            "method": "GET",
            "path": "/",
            "query_string": b"",
            "http_version": "1.1",
            "scheme": "http",
            "headers": [],
        },
        404,
        9,
        0.5,
    )
    fields = access_fields(record)
    assert set(fields) == set(ACCESS_LOG_FIELDS)
    assert fields["status_phrase"] == "Not Found" and fields["duration_ms"] == 500.0
    assert fields["request_id"] is None


def test_log_format_is_checked():
    with pytest.raises(ConfigError, match="log_format must be one of text, json"):
        Config(app="x:y", log_format="xml")
