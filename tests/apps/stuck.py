"""Apps for the start-up deadline tests: an import or a lifespan startup that never ends.

`app` is supervised.py's (each response names the worker's pid) unless the file named by
ASERVE_TEST_HANG_IMPORT exists: then importing this module hangs, as a database connect that
never returns would.
"""

import asyncio
import os
import time

from supervised import app

if os.path.exists(os.environ.get("ASERVE_TEST_HANG_IMPORT", "/nonexistent")):
    time.sleep(1e6)  # the import hangs here


async def hanging_startup(scope, receive, send):
    """A lifespan startup that awaits forever: its event loop runs, it never gets ready.

    When it is cancelled (the server told to stop), it writes "cancelled" to the file named
    by ASERVE_TEST_CANCELLED, as a `finally` block closing a half-open pool would.
    """
    message = await receive()
    assert message["type"] == "lifespan.startup"
    try:
        await asyncio.sleep(1e6)  # the startup hangs here
    except asyncio.CancelledError:
        marker = os.environ.get("ASERVE_TEST_CANCELLED")
        if marker:
            with open(marker, "a") as file:
                file.write(f"cancelled {os.getpid()}\n")
        raise


async def blocking_startup(scope, receive, send):
    """A lifespan startup that blocks its event loop (a synchronous connect, for example)."""
    message = await receive()
    assert message["type"] == "lifespan.startup"
    time.sleep(1e6)  # the startup blocks the loop here


async def slow_startup(scope, receive, send):
    """A lifespan startup that takes ASERVE_TEST_STARTUP_DELAY seconds, awaiting: not stuck."""
    if scope["type"] != "lifespan":
        await app(scope, receive, send)
        return
    await receive()
    await asyncio.sleep(float(os.environ["ASERVE_TEST_STARTUP_DELAY"]))
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await send({"type": "lifespan.shutdown.complete"})
