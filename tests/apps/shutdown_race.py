"""An app that lines up the start of a shutdown with an accept in one event-loop turn.

`/hold` blocks the event loop until the file ASERVE_TEST_RELEASE exists (so the test can queue
a new connection and a request behind it); `/term` sends the server SIGTERM, then keeps the
loop busy past its next tick, so the shutdown begins in the turn after the accept.
"""

import os
import signal
import time


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/hold":
        release = os.environ["ASERVE_TEST_RELEASE"]
        with open(release + ".held", "w"):
            pass
        deadline = time.monotonic() + 30
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.01)  # blocks the event loop, on purpose
    elif scope["path"] == "/term":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)  # the server's main loop wakes up once we return, and shuts down
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
