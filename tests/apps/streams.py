"""Long-lived connections for the shutdown tests (tests/test_long_lived_shutdown.py).

`/events` is a server-sent-event stream that never ends by itself and listens on `receive()`
for `http.disconnect`, as sse-starlette does: when it comes, the app sends a last event and
ends its response. `/events-return` just returns when it comes, leaving the end of the stream to
the server. `/upload` reads its request body whole, saying when its first piece came, and
answers with its pid, size and SHA-256, so a test can tell the app saw every byte. A WebSocket
is accepted and greeted with the worker's pid, then waits for the disconnect. What each app saw
goes to stderr (the server's log).
"""

import asyncio
import contextlib
import hashlib
import os
import sys


def note(text: str) -> None:
    print(f"streams-app: {text}", file=sys.stderr, flush=True)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                note("lifespan shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": str(os.getpid())})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                note(f"websocket.disconnect {message['code']}")
                return
    if scope["path"] == "/ping":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
        return
    if scope["path"] == "/upload":
        await upload(scope, receive, send)
        return
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})

    async def tick():
        n = 0
        while True:
            event = b"id: %d\nevent: tick\ndata: %d\n\n" % (n, n)
            await send({"type": "http.response.body", "body": event, "more_body": True})
            n += 1
            await asyncio.sleep(0.05)

    ticker = asyncio.ensure_future(tick())
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    note(f"http.disconnect on {scope['path']} over HTTP/{scope['http_version']}")
    if scope["path"] == "/events":
        last = b"event: bye\ndata: the server is shutting down\n\n"
        await send({"type": "http.response.body", "body": last, "more_body": False})


async def upload(scope, receive, send):
    digest = hashlib.sha256()
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            note(f"upload disconnected after {size} bytes")
            return
        if size == 0 and message["body"]:
            note(f"upload began in {os.getpid()} over HTTP/{scope['http_version']}")
        digest.update(message["body"])
        size += len(message["body"])
        if not message.get("more_body"):
            break
    body = b"%d %d %s" % (os.getpid(), size, digest.hexdigest().encode())
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
