"""Raw ASGI3 apps used by every benchmarked server (identical code for all of them).

Every app also answers the ``lifespan`` scope, so no server logs warnings about it.
"""

import json

HELLO_BODY = b"Hello, world!"
JSON_PAYLOAD = {"message": "Hello, world!", "id": 42, "ok": True, "tags": ["a", "b", "c"]}
STREAM_CHUNK = b"x" * 4096
STREAM_CHUNKS = 16  # 16 x 4 KiB = 64 KiB

_TEXT_HEADERS = [(b"content-type", b"text/plain")]


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _send_full(send, body, content_type=b"text/plain"):
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def hello(scope, receive, send):
    """Plain-text hello world with content-length."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await _send_full(send, HELLO_BODY)


async def json_app(scope, receive, send):
    """A small dict serialised with json.dumps on every request."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await _send_full(send, json.dumps(JSON_PAYLOAD).encode(), b"application/json")


async def stream(scope, receive, send):
    """64 KiB body sent as several chunks with more_body and no content-length."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": _TEXT_HEADERS})
    for index in range(STREAM_CHUNKS):
        more = index < STREAM_CHUNKS - 1
        await send({"type": "http.response.body", "body": STREAM_CHUNK, "more_body": more})


async def upload(scope, receive, send):
    """Reads the whole request body and answers its length."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    size = 0
    more_body = True
    while more_body:
        message = await receive()
        if message["type"] != "http.request":
            return
        size += len(message.get("body", b""))
        more_body = message.get("more_body", False)
    await _send_full(send, str(size).encode())


async def ws_echo(scope, receive, send):
    """WebSocket echo; plain HTTP requests get the hello answer (used for readiness)."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["type"] == "http":
        return await _send_full(send, HELLO_BODY)
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif kind == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
        else:  # websocket.disconnect
            return
