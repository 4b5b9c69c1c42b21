"""Apps the CLI tests import by name (tests/apps is put on the path with --app-dir)."""

import asyncio
import os


async def hello(scope, receive, send):
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def echo(scope, receive, send):
    """hello over HTTP; a WebSocket gets its messages back."""
    if scope["type"] != "websocket":
        return await hello(scope, receive, send)
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": message.get("text")})
        else:
            return


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            marker = os.environ.get("ASERVE_TEST_SHUTDOWN_MARKER")
            if marker:
                with open(marker, "w") as file:
                    file.write("shutdown ran")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def slow(scope, receive, send):
    """Takes a second to answer, to show in-flight requests finish on shutdown."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    marker = os.environ.get("ASERVE_TEST_REQUEST_MARKER")
    if marker:
        with open(marker, "w") as file:
            file.write("request arrived")
    await asyncio.sleep(1.0)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"finished"})


async def failing_startup(scope, receive, send):
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "database unreachable"})


def factory():
    return hello


env_value = os.environ.get("ASERVE_TEST_ENV_VALUE", "unset")


async def env_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send(
        {
            "type": "http.response.body",
            "body": os.environ.get("ASERVE_TEST_ENV_VALUE", "unset").encode(),
        }
    )


broken_import = None
