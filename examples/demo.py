"""The demo app `make demo` serves: plain ASGI 3, no framework needed.

Routes: /            a small HTML page
        /json        a JSON document
        /stream      a chunked response sent in pieces
        /echo        POST a body, get it back
        /ws          a WebSocket echo (when WebSocket support is on)
"""

import asyncio
import json

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>aserve demo</title></head>
<body>
<h1>aserve is serving</h1>
<ul>
<li><a href="/json">/json</a>: a JSON document</li>
<li><a href="/stream">/stream</a>: a streamed response</li>
<li><code>curl -d hello http://127.0.0.1:8000/echo</code>: echoes the body</li>
</ul>
<p id="ws">WebSocket: connecting...</p>
<script>
const ws = new WebSocket(`ws://${location.host}/ws`);
ws.onopen = () => ws.send("hello over a WebSocket");
const status = document.getElementById("ws");
ws.onmessage = (event) => { status.textContent = "WebSocket echo: " + event.data; };
ws.onerror = () => { status.textContent = "WebSocket: not available"; };
</script>
</body></html>
"""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        return await websocket_echo(receive, send)
    path = scope["path"]
    if path == "/":
        await respond(send, 200, b"text/html; charset=utf-8", PAGE)
    elif path == "/json":
        body = json.dumps({"server": "aserve", "path": path, "client": scope["client"]})
        await respond(send, 200, b"application/json", body.encode())
    elif path == "/stream":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        for i in range(5):
            await send(
                {"type": "http.response.body", "body": f"chunk {i}\n".encode(), "more_body": True}
            )
            await asyncio.sleep(0.1)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/echo" and scope["method"] == "POST":
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await respond(send, 200, b"application/octet-stream", body)
    else:
        await respond(send, 404, b"text/plain; charset=utf-8", b"Not Found\n")


async def respond(send, status, content_type, body):
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def websocket_echo(receive, send):
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
