"""Lifespan and the programmatic API (`Config`/`Server` embedded in a running loop)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import aserve
from aserve.lifespan import LifespanFailure
from conftest import serve


def make_app(events: list[str], fail_startup: str | None = None):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if fail_startup:
                        await send({"type": "lifespan.startup.failed", "message": fail_startup})
                        return
                    scope["state"]["db"] = "connected"
                    events.append("startup")
                    await send({"type": "lifespan.startup.complete"})
                else:
                    events.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        state = scope["state"]
        events.append(f"request sees db={state.get('db')}")
        state["per_request"] = "not shared"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_lifespan_state_reaches_every_request_scope():
    events: list[str] = []
    with serve(make_app(events), lifespan="on") as server:
        httpx.get(server.url)
        httpx.get(server.url)
    assert events == [
        "startup",
        "request sees db=connected",
        "request sees db=connected",
        "shutdown",
    ]


def test_startup_failure_raises_with_the_apps_message():
    with (
        pytest.raises(LifespanFailure, match="no database"),
        serve(make_app([], fail_startup="no database"), lifespan="on"),
    ):
        pass


async def no_lifespan(scope, receive, send):
    assert scope["type"] == "http", "this app does not do lifespan"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_auto_lifespan_tolerates_apps_without_it():
    with serve(no_lifespan, lifespan="auto") as server:
        assert httpx.get(server.url).text == "ok"


def test_lifespan_on_requires_support():
    with pytest.raises(LifespanFailure), serve(no_lifespan, lifespan="on"):
        pass


async def start_embedded(app, **options) -> tuple[aserve.Server, asyncio.Task, int]:
    """`Server.serve()` as a task of the running loop; returns once it listens."""
    server = aserve.Server(aserve.Config(app=app, port=0, **options))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, server.sockets[0].getsockname()[1]


async def test_embedded_server_in_running_loop():
    events: list[str] = []
    server, task, port = await start_embedded(make_app(events), lifespan="on")
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/")
    assert response.text == "ok"
    server.stop()
    await asyncio.wait_for(task, 10)
    assert events == ["startup", "request sees db=connected", "shutdown"]


async def test_graceful_shutdown_is_bounded():
    started = asyncio.Event()

    async def stuck(scope, receive, send):
        started.set()
        await asyncio.sleep(3600)

    server, task, port = await start_embedded(stuck, lifespan="off", timeout_graceful_shutdown=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await started.wait()
    loop = asyncio.get_running_loop()
    begun = loop.time()
    server.stop()
    await asyncio.wait_for(task, 5)
    assert loop.time() - begun < 2
    assert await reader.read() == b""  # the stuck request's connection was closed
    writer.close()


async def test_idle_keep_alive_connections_closed_on_shutdown():
    server, task, port = await start_embedded(no_lifespan, lifespan="off")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"ok")
    server.stop()
    await asyncio.wait_for(task, 5)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()


def test_startup_failure_releases_the_socket(tmp_path):
    path = tmp_path / "app.sock"
    with (
        pytest.raises(LifespanFailure),
        serve(make_app([], fail_startup="no database"), lifespan="on", uds=str(path)),
    ):
        pass
    assert not path.exists()  # the unix socket file is not left behind
