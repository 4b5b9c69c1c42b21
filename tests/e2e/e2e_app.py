"""The app the e2e tests put behind real proxies: it reports what it saw of each request."""

import asyncio
import json
import os

INSTANCE = os.environ.get("E2E_INSTANCE", "")


def _seen(scope) -> dict:
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    return {
        "instance": INSTANCE,
        "pid": os.getpid(),
        "http_version": scope["http_version"],
        "client": list(scope["client"]) if scope.get("client") else None,
        "scheme": scope["scheme"],
        "path": scope["path"],
        "host": headers.get("host"),
        "x_forwarded_for": headers.get("x-forwarded-for"),
    }


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        return await _websocket(scope, receive, send)
    size = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["path"] == "/slow":
        await asyncio.sleep(0.2)
    if scope["path"] == "/stream":
        return await _stream(scope, send)
    body = json.dumps({**_seen(scope), "body_size": size}).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _stream(scope, send):
    """A first chunk, then a second once the client made the file named by the query string
    (it does on reading the first): "released", or "not released" after 10 s, which is what a
    proxy that held the first chunk back would get."""
    marker = scope["query_string"].decode()
    headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
    for _ in range(500):
        if os.path.exists(marker):
            break
        await asyncio.sleep(0.02)
    last = b"released\n" if os.path.exists(marker) else b"not released\n"
    await send({"type": "http.response.body", "body": last})


async def _websocket(scope, receive, send):
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps(_seen(scope))})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
