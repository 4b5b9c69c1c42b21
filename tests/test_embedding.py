"""uvicorn's embedding API with the one word changed: Config(app, ...), Server, serve, run."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

import aserve


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def wait_for(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


async def test_config_takes_the_app_positionally_and_should_exit_stops_serve():
    config = aserve.Config(hello, port=0, lifespan="off")
    server = aserve.Server(config)
    assert not server.started
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and not task.done(), "server did not start"
        await asyncio.sleep(0.01)
    port = server.sockets[0].getsockname()[1]
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{port}/")).text == "hello"
    server.should_exit = True
    await asyncio.wait_for(task, 10)


def test_only_the_app_is_positional():
    with pytest.raises(TypeError):
        aserve.Config(hello, "0.0.0.0")  # type: ignore[misc]
    assert aserve.Config(app=hello).app is hello  # the keyword still works


def test_run_is_serve():
    assert aserve.run is aserve.serve


def test_server_run_blocks_in_a_thread_until_should_exit():
    server = aserve.Server(aserve.Config(hello, port=0, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    port = server.sockets[0].getsockname()[1]
    assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
    server.should_exit = True
    thread.join(15)
    assert not thread.is_alive()


async def test_force_exit_cuts_the_graceful_wait_short():
    started = asyncio.Event()

    async def stuck(scope, receive, send):
        started.set()
        await asyncio.sleep(3600)

    server = aserve.Server(
        aserve.Config(stuck, port=0, lifespan="off", timeout_graceful_shutdown=None)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(started.wait(), 10)
    server.should_exit = True
    await asyncio.sleep(0.3)
    assert not task.done()  # no graceful limit: it waits for the stuck request
    server.force_exit = True
    await asyncio.wait_for(task, 10)
    writer.close()


async def test_log_level_applies_to_an_embedded_server():
    logger = logging.getLogger("aserve")
    before = logger.level
    try:
        server = aserve.Server(aserve.Config(hello, port=0, lifespan="off", log_level="debug"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        # pytest's root handlers are there, so aserve leaves the set-up alone: only the level.
        assert logger.level == logging.DEBUG
        assert not logger.handlers
        server.should_exit = True
        await asyncio.wait_for(task, 10)
    finally:
        logger.setLevel(before)


# The embedding example of uvicorn's docs, with `uvicorn` replaced by `aserve`, as a script.
SCRIPT = """
import asyncio
import sys

import aserve


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"embedded"}})


async def main():
    config = aserve.Config(app, port=0, log_level="info")
    server = aserve.Server(config)
    await server.serve()


if sys.argv[1] == "serve":
    asyncio.run(main())
else:
    aserve.run(app, port=0, {run_options})
"""


def run_script(tmp_path: Path, mode: str, run_options: str = "") -> tuple[int, str]:
    """Start the script, GET / on the port it logs, stop it with SIGTERM; (exit code, stderr)."""
    script = tmp_path / "embed.py"
    script.write_text(textwrap.dedent(SCRIPT.format(run_options=run_options)))
    proc = subprocess.Popen([sys.executable, str(script), mode], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if match:
                response = httpx.get(f"http://127.0.0.1:{match.group(1)}/", timeout=10)
                assert response.text == "embedded"
                break
        else:
            raise AssertionError("no 'running on' line:\n" + "".join(lines))
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
        lines.extend(proc.stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, "".join(lines)


def test_uvicorn_embedding_example_works_with_the_word_changed(tmp_path):
    code, stderr = run_script(tmp_path, "serve")
    assert code == 0, stderr
    # Nothing configured logging, so aserve did, as uvicorn's Config does: the CLI's lines.
    assert "Started server process" in stderr
    assert "Shutting down" in stderr


def test_uvicorn_run_works_with_the_word_changed(tmp_path):
    code, stderr = run_script(tmp_path, "run", 'log_level="info", lifespan="off"')
    assert code == 0, stderr
    assert "Shutting down" in stderr
