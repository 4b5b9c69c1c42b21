"""A server-sent-events stream that never ends by itself (tests/test_frameworks.py)."""

import asyncio
import contextlib
import sys

from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route


def note(text: str) -> None:
    print(f"sse-app: {text}", file=sys.stderr, flush=True)


async def events(request):
    async def stream():
        n = 0
        try:
            while True:
                yield f"id: {n}\nevent: tick\ndata: {n}\n\n"
                n += 1
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            note(f"stream cancelled after {n} events")
            raise
        finally:
            note("stream closed")

    return StreamingResponse(stream(), media_type="text/event-stream")


@contextlib.asynccontextmanager
async def lifespan(app):
    yield
    note("lifespan shutdown")


app = Starlette(routes=[Route("/events", events)], lifespan=lifespan)
