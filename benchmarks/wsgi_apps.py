"""WSGI apps for comparing aserve, uvicorn and granian serving WSGI (docs/performance.md)."""

BODY = b"Hello, world!"
CHUNK = b"x" * 4096


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [BODY]


def stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    for _ in range(16):
        yield CHUNK


def upload(environ, start_response):
    stream = environ["wsgi.input"]
    size = 0
    while True:
        data = stream.read(65536)
        if not data:
            break
        size += len(data)
    body = str(size).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _flask():
    from flask import Flask

    app = Flask(__name__)

    @app.get("/")
    def index():
        return "Hello, world!"

    return app


flask_app = _flask()


async def asgi_hello(scope, receive, send):
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})
