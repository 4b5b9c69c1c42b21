"""Apps for the listener, health and drain tests: each answer says where the request arrived.

`ASERVE_TEST_STARTUP_GATE`, when set, names a file: lifespan startup waits (awaiting, the loop
runs) until it exists, so a test decides when startup completes instead of guessing a delay;
`/hold?DIR` does the same for a request.
"""

import asyncio
import json
import os
import time


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                gate = os.environ.get("ASERVE_TEST_STARTUP_GATE")
                while gate and not os.path.exists(gate):
                    await asyncio.sleep(0.02)
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/block":  # blocks the event loop
        time.sleep(float(scope["query_string"] or b"30"))
    elif path == "/slow":  # a request in flight for a while; the loop runs
        await asyncio.sleep(float(scope["query_string"] or b"1"))
    elif path == "/hold":  # in flight until the test says: ?DIR gets "arrived", waits "release"
        directory = scope["query_string"].decode()
        open(os.path.join(directory, "arrived"), "w").close()
        while not os.path.exists(os.path.join(directory, "release")):
            await asyncio.sleep(0.02)
    body = json.dumps(
        {
            "pid": os.getpid(),
            "server": scope["server"],
            "client": scope["client"],
            "path": path,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
