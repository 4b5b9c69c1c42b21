"""Raw ASGI3 WebSocket echo app used as the Autobahn TestSuite target.

Text frames are echoed as text, binary frames as binary. HTTP requests get a
tiny 200 response and the ``lifespan`` protocol is acknowledged, so any ASGI
server can load it with its default settings.
"""

from __future__ import annotations

from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


async def app(scope: Scope, receive: Any, send: Any) -> None:
    kind = scope["type"]
    if kind == "websocket":
        await _websocket_echo(receive, send)
    elif kind == "http":
        await _http(send)
    elif kind == "lifespan":
        await _lifespan(receive, send)


async def _websocket_echo(receive: Any, send: Any) -> None:
    while True:
        message: Message = await receive()
        kind = message["type"]
        if kind == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif kind == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
        elif kind == "websocket.disconnect":
            return


async def _http(send: Any) -> None:
    body = b"autobahn echo app: connect with a WebSocket client\n"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
