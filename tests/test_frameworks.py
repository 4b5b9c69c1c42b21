"""Real frameworks served end to end: FastAPI (Starlette, anyio) and Django's ASGI handler."""

import asyncio
import contextvars
import threading

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


def _urlpatterns():
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    return [path("hello", django_hello), path("upload", csrf_exempt(django_upload))]


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
        missing = client.get("/missing")
    assert hello.status_code == 200
    assert hello.text == "hello aserve via GET"
    assert upload.json() == {"size": 300_000, "path": "/upload"}
    assert missing.status_code == 404
