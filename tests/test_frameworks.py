"""Frameworks end to end: FastAPI, Starlette, Django (ASGI, channels and WSGI), Litestar, Quart,
Socket.IO, SSE, and Flask (WSGI)."""

import asyncio
import contextlib
import contextvars
import json
import os
import signal
import socket
import threading
import time

import httpx
import pytest

from conftest import serve

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def make_fastapi_app(background_done: threading.Event, seen: list):
    from fastapi import BackgroundTasks, Depends, FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    async def dependency_with_yield():
        seen.append("dependency enter")
        yield "dep-value"
        seen.append("dependency exit")

    @app.get("/items/{item_id}")
    async def read_item(
        item_id: int, q: str | None = None, dep: str = Depends(dependency_with_yield)
    ):
        previous = REQUEST_ID.get()
        REQUEST_ID.set(f"item-{item_id}")
        return {"item_id": item_id, "q": q, "dep": dep, "leaked": previous}

    @app.post("/echo")
    async def echo(payload: dict, background: BackgroundTasks):
        background.add_task(background_done.set)
        return {"got": payload}

    @app.get("/stream")
    async def stream():
        async def parts():
            for i in range(3):
                yield f"part {i}\n"
                await asyncio.sleep(0)

        return StreamingResponse(parts(), media_type="text/plain")

    return app


def test_fastapi_end_to_end():
    background_done = threading.Event()
    seen: list = []
    app = make_fastapi_app(background_done, seen)
    with serve(app, lifespan="on") as server, httpx.Client(base_url=server.url) as client:
        first = client.get("/items/42", params={"q": "x y"})
        second = client.get("/items/7")
        posted = client.post("/echo", json={"a": 1})
        streamed = client.get("/stream")
        missing = client.get("/nope")
        invalid = client.get("/items/not-a-number")
        assert background_done.wait(5)
    assert first.json() == {"item_id": 42, "q": "x y", "dep": "dep-value", "leaked": None}
    assert second.json()["leaked"] is None  # keep-alive: the previous request's context is gone
    assert posted.json() == {"got": {"a": 1}}
    assert streamed.text == "part 0\npart 1\npart 2\n"
    assert streamed.headers["transfer-encoding"] == "chunked"
    assert missing.status_code == 404
    assert invalid.status_code == 422
    assert seen[:4] == ["dependency enter", "dependency exit"] * 2


@pytest.fixture(scope="module")
def django_app():
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test-only",
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["*"],
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
        )
        django.setup()
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


def django_hello(request):
    from django.http import HttpResponse

    return HttpResponse(f"hello {request.GET.get('name', 'django')} via {request.method}")


def django_upload(request):
    from django.http import JsonResponse

    return JsonResponse({"size": len(request.body), "path": request.path})


async def django_stream(request):
    from django.http import StreamingHttpResponse

    async def lines():
        for i in range(3):
            yield f"line {i}\n"
            await asyncio.sleep(0)

    return StreamingHttpResponse(lines(), content_type="text/plain")


def django_sync_stream(request):
    from django.http import StreamingHttpResponse

    return StreamingHttpResponse((f"line {i}\n" for i in range(3)), content_type="text/plain")


def django_client(request):
    from django.http import JsonResponse

    return JsonResponse(
        {
            "remote": request.META.get("REMOTE_ADDR"),
            "secure": request.is_secure(),
            "uri": request.build_absolute_uri(),
        }
    )


def _urlpatterns():
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    return [
        path("hello", django_hello),
        path("upload", csrf_exempt(django_upload)),
        path("stream", django_stream),
        path("sync-stream", django_sync_stream),
        path("client", django_client),
    ]


def __getattr__(name):  # Django reads urlpatterns from ROOT_URLCONF lazily
    if name == "urlpatterns":
        return _urlpatterns()
    raise AttributeError(name)


def test_django_end_to_end(django_app):
    with (
        serve(django_app, lifespan="off", root_path="") as server,
        httpx.Client(base_url=server.url) as client,
    ):
        hello = client.get("/hello", params={"name": "aserve"})
        upload = client.post("/upload", content=b"x" * 300_000)
        streamed = client.get("/stream")
        missing = client.get("/missing")
    assert hello.status_code == 200
    assert hello.text == "hello aserve via GET"
    assert upload.json() == {"size": 300_000, "path": "/upload"}
    assert streamed.text == "line 0\nline 1\nline 2\n"
    assert streamed.headers["transfer-encoding"] == "chunked"
    assert missing.status_code == 404


def test_django_wsgi_handler_end_to_end(django_app):
    """Django's WSGI handler, found by --interface auto: sync views, the body read from
    wsgi.input, a streamed response, SCRIPT_NAME from root_path, proxy headers, and
    request_finished (sent from the response's close()) for every request."""
    from django.core.signals import request_finished
    from django.core.wsgi import get_wsgi_application

    from aserve.importer import detect_interface

    handler = get_wsgi_application()
    assert detect_interface(handler) == "wsgi"
    finished = []

    def on_finished(sender, **kwargs):
        finished.append(threading.current_thread().name)

    request_finished.connect(on_finished)
    try:
        with (
            serve(handler, root_path="/mount") as server,
            httpx.Client(base_url=server.url) as client,
        ):
            hello = client.get("/hello", params={"name": "wsgi"})
            upload = client.post("/upload", content=b"x" * 300_000)
            streamed = client.get("/sync-stream")
            missing = client.get("/missing")
            proxied = client.get(
                "/client", headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
            )
            port = server.port
    finally:
        request_finished.disconnect(on_finished)
    assert hello.status_code == 200
    assert hello.text == "hello wsgi via GET"
    assert upload.json() == {"size": 300_000, "path": "/mount/upload"}
    assert streamed.text == "line 0\nline 1\nline 2\n"
    assert streamed.headers["transfer-encoding"] == "chunked"
    assert missing.status_code == 404
    assert proxied.json() == {
        "remote": "203.0.113.7",
        "secure": True,
        "uri": f"https://127.0.0.1:{port}/mount/client",
    }
    assert len(finished) == 5 and all(name.startswith("aserve-wsgi-") for name in finished)


def make_flask_app(closed: list):
    from flask import Flask, Response, request, send_file, stream_with_context, url_for

    app = Flask(__name__)
    # Flask's own handler, which writes to wsgi.errors (Flask leaves it out when a handler is
    # already set up above its logger, as pytest's is).
    from flask.logging import default_handler

    app.logger.addHandler(default_handler)
    app.logger.propagate = False

    @app.get("/hello")
    def hello():
        return f"hello {request.args.get('name', 'flask')}"

    @app.post("/form")
    def form():
        return {
            "fields": request.form.to_dict(),
            "files": {name: len(file.read()) for name, file in request.files.items()},
        }

    @app.post("/stream-upload")
    def stream_upload():
        pieces = []
        while True:
            piece = request.stream.read(65536)
            if not piece:
                break
            pieces.append(len(piece))
        return {"total": sum(pieces), "pieces": len(pieces)}

    @app.get("/stream")
    def stream():
        def numbers():
            for i in range(3):
                yield f"{request.args['prefix']}{i}\n"

        response = Response(stream_with_context(numbers()), mimetype="text/plain")
        response.call_on_close(lambda: closed.append("stream"))
        return response

    @app.get("/file")
    def file():
        return send_file(app.config["FILE"], mimetype="application/octet-stream")

    @app.get("/url")
    def url():
        return url_for("hello", _external=True)

    @app.get("/error")
    def error():
        raise ValueError("flask view failed")

    return app


def test_flask_end_to_end(tmp_path, caplog):
    import logging

    closed: list = []
    app = make_flask_app(closed)
    data = os.urandom(1_000_000)
    app.config["FILE"] = tmp_path / "data.bin"
    app.config["FILE"].write_bytes(data)
    caplog.set_level(logging.ERROR, logger="aserve.error")
    with (
        serve(app, root_path="/app") as server,
        httpx.Client(base_url=server.url) as client,
    ):
        hello = client.get("/hello", params={"name": "wsgi"})
        head = client.head("/hello")
        form = client.post("/form", data={"a": "1"}, files={"f": ("f.bin", b"z" * 70_000)})
        upload = client.post("/stream-upload", content=iter([b"u" * 100_000] * 10))
        streamed = client.get("/stream", params={"prefix": "n"})
        whole = client.get("/file")
        url = client.get("/url")
        failed = client.get("/error")
        missing = client.get("/missing")
        port = server.port
    assert hello.text == "hello wsgi" and hello.headers["content-length"] == "10"
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == "11"
    assert form.json() == {"fields": {"a": "1"}, "files": {"f": 70_000}}
    assert upload.json()["total"] == 1_000_000 and upload.json()["pieces"] > 1
    assert streamed.text == "n0\nn1\nn2\n" and closed == ["stream"]
    assert whole.content == data
    assert url.text == f"http://127.0.0.1:{port}/app/hello"
    assert failed.status_code == 500
    assert missing.status_code == 404
    # Flask logs to wsgi.errors: the error log has its line and traceback as one record.
    logged = [r.getMessage() for r in caplog.records if "flask view failed" in r.getMessage()]
    assert len(logged) == 1 and "Exception on /error [GET]" in logged[0]
    assert "Traceback" in logged[0]


def test_django_channels_websocket(django_app):
    """Channels routes WebSockets to a consumer and HTTP to Django, in one ASGI app."""
    from channels.generic.websocket import AsyncJsonWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import path
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    class EchoConsumer(AsyncJsonWebsocketConsumer):
        async def connect(self):
            await self.accept()
            await self.send_json({"path": self.scope["path"], "user": self.scope["url_route"]})

        async def receive_json(self, content):
            await self.send_json({"echo": content})

    app = ProtocolTypeRouter(
        {
            "http": django_app,
            "websocket": URLRouter([path("ws/<str:room>", EchoConsumer.as_asgi())]),
        }
    )
    with serve(app, lifespan="off") as server, httpx.Client(base_url=server.url) as client:
        hello = client.get("/hello")
        with connect(f"ws://127.0.0.1:{server.port}/ws/lobby") as ws:
            opened = json.loads(ws.recv(timeout=5))
            ws.send(json.dumps({"n": 1}))
            echoed = json.loads(ws.recv(timeout=5))
        # No route: channels raises before accepting, and the handshake is answered with 500.
        with pytest.raises(InvalidStatus) as rejected:
            connect(f"ws://127.0.0.1:{server.port}/nowhere")
    assert hello.text == "hello django via GET"
    assert opened == {"path": "/ws/lobby", "user": {"args": [], "kwargs": {"room": "lobby"}}}
    assert echoed == {"echo": {"n": 1}}
    assert rejected.value.response.status_code == 500


# -- Starlette -------------------------------------------------------------------------------


def make_starlette_app(static_file, background_done: threading.Event, events: list):
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    @contextlib.asynccontextmanager
    async def lifespan(app):
        events.append("startup")
        yield {"greeting": "hello from lifespan"}
        events.append("shutdown")

    async def state(request: Request):
        return JSONResponse({"greeting": request.state.greeting})

    async def stream(request: Request):
        async def numbers():
            for i in range(5):
                yield f"{i}\n".encode()
                await asyncio.sleep(0.001)

        return StreamingResponse(numbers(), media_type="text/plain")

    async def download(request: Request):
        return FileResponse(static_file, filename="data.bin")

    async def background(request: Request):
        return JSONResponse({"queued": True}, background=BackgroundTask(background_done.set))

    async def ws_echo(websocket: WebSocket):
        await websocket.accept(subprotocol="chat")
        await websocket.send_json({"greeting": websocket.state.greeting})
        async for text in websocket.iter_text():
            await websocket.send_text(text.upper())

    return Starlette(
        routes=[
            Route("/state", state),
            Route("/stream", stream),
            Route("/file", download),
            Route("/background", background),
            WebSocketRoute("/ws", ws_echo),
        ],
        lifespan=lifespan,
    )


def test_starlette_end_to_end(tmp_path):
    from websockets.sync.client import connect

    static_file = tmp_path / "data.bin"
    content = os.urandom(300_000)
    static_file.write_bytes(content)
    background_done = threading.Event()
    events: list = []
    app = make_starlette_app(static_file, background_done, events)
    with serve(app, lifespan="on") as server, httpx.Client(base_url=server.url) as client:
        state = client.get("/state")
        streamed = client.get("/stream")
        whole = client.get("/file")
        ranged = client.get("/file", headers={"Range": "bytes=1000-1999"})
        queued = client.get("/background")
        assert background_done.wait(5)
        ws_url = f"ws://127.0.0.1:{server.port}/ws"
        with connect(ws_url, subprotocols=["chat"]) as ws:
            greeting = json.loads(ws.recv(timeout=5))
            ws.send("shout")
            echoed = ws.recv(timeout=5)
            subprotocol = ws.subprotocol
    assert events == ["startup", "shutdown"]
    assert state.json() == {"greeting": "hello from lifespan"}
    assert streamed.text == "0\n1\n2\n3\n4\n"
    assert streamed.headers["transfer-encoding"] == "chunked"
    assert whole.content == content
    assert whole.headers["content-length"] == str(len(content))
    assert whole.headers["content-disposition"] == 'attachment; filename="data.bin"'
    assert ranged.status_code == 206
    assert ranged.content == content[1000:2000]
    assert ranged.headers["content-range"] == f"bytes 1000-1999/{len(content)}"
    assert queued.json() == {"queued": True}
    assert greeting == {"greeting": "hello from lifespan"}
    assert (subprotocol, echoed) == ("chat", "SHOUT")


# -- Litestar --------------------------------------------------------------------------------


def make_litestar_app(events: list):
    from litestar import Litestar, Request, get, post, websocket_listener
    from litestar.datastructures import State
    from litestar.params import FromPath, JSONBody

    @get("/items/{item_id:int}")
    async def item(item_id: FromPath[int], request: Request, state: State) -> dict:
        return {"item_id": item_id, "client": request.client.host, "ready": state.ready}

    @post("/echo")
    async def echo(data: JSONBody[dict]) -> dict:
        return {"got": data}

    @websocket_listener("/ws")
    async def ws_handler(data: str) -> str:
        return data[::-1]

    async def startup(app: Litestar) -> None:
        app.state.ready = True
        events.append("startup")

    async def shutdown(app: Litestar) -> None:
        events.append("shutdown")

    return Litestar(
        route_handlers=[item, echo, ws_handler], on_startup=[startup], on_shutdown=[shutdown]
    )


def test_litestar_end_to_end():
    from websockets.sync.client import connect

    events: list = []
    app = make_litestar_app(events)
    with serve(app, lifespan="on") as server, httpx.Client(base_url=server.url) as client:
        item = client.get("/items/5")
        posted = client.post("/echo", json={"a": [1, 2]})
        invalid = client.get("/items/five")
        with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            ws.send("stressed")
            reversed_text = ws.recv(timeout=5)
    assert events == ["startup", "shutdown"]
    assert item.json() == {"item_id": 5, "client": "127.0.0.1", "ready": True}
    assert posted.status_code == 201
    assert posted.json() == {"got": {"a": [1, 2]}}
    assert invalid.status_code in (400, 404)
    assert reversed_text == "desserts"


# -- Quart -----------------------------------------------------------------------------------


def make_quart_app(events: list):
    from quart import Quart, request, websocket

    app = Quart(__name__)

    @app.before_serving
    async def startup():
        events.append("startup")

    @app.after_serving
    async def shutdown():
        events.append("shutdown")

    @app.route("/hello/<name>")
    async def hello(name):
        return {"hello": name, "scheme": request.scheme, "args": dict(request.args)}

    @app.post("/upload")
    async def upload():
        return {"size": len(await request.get_data())}

    @app.websocket("/ws")
    async def ws():
        while True:
            message = await websocket.receive()
            await websocket.send(f"quart: {message}")

    return app


def test_quart_end_to_end():
    from websockets.sync.client import connect

    events: list = []
    app = make_quart_app(events)
    with serve(app, lifespan="on") as server, httpx.Client(base_url=server.url) as client:
        hello = client.get("/hello/aserve", params={"x": "1"})
        upload = client.post("/upload", content=b"y" * 200_000)
        with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            ws.send("ping")
            answer = ws.recv(timeout=5)
    assert events == ["startup", "shutdown"]
    assert hello.json() == {"hello": "aserve", "scheme": "http", "args": {"x": "1"}}
    assert upload.json() == {"size": 200_000}
    assert answer == "quart: ping"


# -- Socket.IO -------------------------------------------------------------------------------


def make_socketio_app():
    import socketio

    sio = socketio.AsyncServer(async_mode="asgi")

    @sio.event
    async def echo(sid, data):
        await sio.emit("echo-reply", {"data": data, "sid": sid}, to=sid)

    return socketio.ASGIApp(sio)


def engineio_packets(payload: str) -> list[str]:
    """Engine.IO v4 polling payloads separate packets with the record separator."""
    return payload.split("\x1e")


def test_socketio_polling_then_websocket_upgrade():
    from websockets.sync.client import connect

    app = make_socketio_app()
    with serve(app, lifespan="on") as server, httpx.Client(base_url=server.url) as client:
        params = {"EIO": "4", "transport": "polling"}
        opened = client.get("/socket.io/", params=params)
        assert opened.status_code == 200
        assert opened.text[0] == "0"  # OPEN, with the session id and the upgrades offered
        handshake = json.loads(opened.text[1:])
        assert "websocket" in handshake["upgrades"]
        params["sid"] = handshake["sid"]
        assert client.post("/socket.io/", params=params, content="40").text == "OK"
        connected = engineio_packets(client.get("/socket.io/", params=params).text)
        assert connected[0].startswith("40{")  # the default namespace accepted the client
        socket_sid = json.loads(connected[0][2:])["sid"]

        ws_url = f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"
        with connect(f"{ws_url}&sid={handshake['sid']}") as ws:
            ws.send("2probe")
            assert ws.recv(timeout=5) == "3probe"
            ws.send("5")  # UPGRADE: from here on the session talks over the WebSocket
            ws.send('42["echo","over websocket"]')
            reply = ws.recv(timeout=5)
            while reply == "6":  # a NOOP ends the polling transport's pending GET
                reply = ws.recv(timeout=5)
    assert reply.startswith("42")
    event, body = json.loads(reply[2:])
    assert event == "echo-reply"
    assert body == {"data": "over websocket", "sid": socket_sid}


# -- server-sent events through graceful shutdown --------------------------------------------


def parse_chunks(data: bytes) -> tuple[list[bytes], bool, bytes]:
    """Split a chunked body into its chunks; also whether the 0-chunk ended it, and any rest."""
    chunks = []
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return chunks, True, rest
        if len(rest) < size + 2:
            break
        chunks.append(rest[:size])
        data = rest[size + 2 :]
    return chunks, False, data


@pytest.mark.once
def test_sse_stream_held_open_through_graceful_shutdown():
    """SIGTERM with an infinite event stream open: the stream keeps flowing during the grace
    period; at the deadline the app's generator is cancelled (it can clean up), the client's
    connection ends with a FIN after whole events (no reset, no torn chunk: the missing 0-chunk
    tells an HTTP client the response was cut, and an EventSource reconnects), the process
    exits 0 and nothing is logged at ERROR."""
    from processes import AserveProcess
    from test_cli import APPS

    grace = 1.0
    server = AserveProcess(
        "sse_app:app",
        "--app-dir",
        str(APPS),
        "--port",
        "0",
        "--timeout-graceful-shutdown",
        str(grace),
    )
    try:
        port = server.wait_for_port()
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        received = b""
        while received.count(b"data: ") < 3:
            chunk = sock.recv(65536)
            assert chunk, "the stream ended before the shutdown began"
            received += chunk
        before_signal = received.count(b"data: ")
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        while True:
            chunk = sock.recv(65536)  # a reset would raise ConnectionResetError here
            if not chunk:
                break
            received += chunk
        closed_after = time.monotonic() - signalled
        sock.close()
        code = server.proc.wait(15)
    finally:
        server.proc.kill()
        server.stop()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-type: text/event-stream" in head.lower()
    chunks, terminated, rest = parse_chunks(body)
    assert (terminated, rest) == (False, b"")  # cut between chunks, never inside one
    events = b"".join(chunks).split(b"\n\n")
    assert events.pop() == b""  # whole events only
    assert [event.split(b"\n")[0] for event in events] == [
        b"id: %d" % n for n in range(len(events))
    ]
    assert len(events) > before_signal  # the stream went on during the grace period
    assert grace * 0.8 <= closed_after < grace + 10
    assert code == 0
    stderr = server.output
    assert "sse-app: stream cancelled after" in stderr
    assert "sse-app: stream closed" in stderr
    assert "sse-app: lifespan shutdown" in stderr
    assert "Graceful shutdown timed out" in stderr  # a WARNING naming what was cut
    assert "ERROR" not in stderr
    assert "Traceback" not in stderr
