"""The pytest plugin users get with aserve installed: `aserve_server`, `aserve_unix_server`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aserve.importer import AppLoadError
from aserve.testing import live_server

pytest_plugins = ["pytester"]

USER_TESTS = """
import asyncio
import socket

import httpx
import pytest


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["greeting"] = "hello"
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = f"{scope['state']['greeting']} {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_tcp(aserve_server):
    with aserve_server(app, root_path="/api") as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert httpx.get(server.url + "/items").text == "hello /api/items"
    with pytest.raises(OSError):  # stopped on leaving the block
        socket.create_connection(("127.0.0.1", server.port), timeout=2)


def test_unix_socket(aserve_unix_server):
    server = aserve_unix_server(app)
    assert server.uds.endswith(".sock")
    with server.client() as client:
        assert client.get("/x").text == "hello /x"
    with httpx.Client(transport=httpx.HTTPTransport(uds=server.uds)) as client:
        assert client.get("http://localhost/y").text == "hello /y"


async def test_async_client(aserve_server):
    server = aserve_server(app)  # no with: the fixture stops it after the test
    async with server.async_client() as client:
        responses = await asyncio.gather(*(client.get(f"/{i}") for i in range(5)))
    assert [r.text for r in responses] == [f"hello /{i}" for i in range(5)]


def test_two_servers_at_once(aserve_server):
    first, second = aserve_server(app), aserve_server(app)
    assert first.port != second.port
    assert httpx.get(second.url).status_code == 200
"""


@pytest.mark.once
def test_fixtures_in_a_users_test_suite(pytester):
    """A user's test files (ours and the docs' example), run by a separate pytest that finds
    the plugin by its entry point."""
    docs = (Path(__file__).parent.parent / "docs" / "testing.md").read_text()
    example = re.search(r"```python\n# test_app.py\n(.*?)```", docs, re.S)
    assert example is not None
    pytester.makepyfile(test_user=USER_TESTS, test_docs_example=example.group(1))
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)


def test_the_plugin_is_registered(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("aserve")


def test_a_server_that_cannot_start_raises_its_error():
    with (
        pytest.raises(AppLoadError, match="could not import module 'no_such_module'"),
        live_server("no_such_module:app"),
    ):
        pass


def test_raw_requests_over_a_unix_socket(tmp_path):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body"})

    with live_server(app, uds=str(tmp_path / "s"), lifespan="off") as server:
        response = server.request(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 204 ")
        with server.client() as client:
            assert client.get("/").status_code == 204
    assert not (tmp_path / "s").exists()  # stopped: the socket file is gone
