"""Apps for the supervisor tests: each response names the worker's pid."""

import asyncio
import os
import time

if os.environ.get("ASERVE_TEST_BREAK_IMPORT") and os.path.exists(
    os.environ["ASERVE_TEST_BREAK_IMPORT"]
):
    raise RuntimeError("the new code is broken")

if os.environ.get("ASERVE_TEST_IMPORT_LOG"):  # who imported this module (--preload: once)
    with open(os.environ["ASERVE_TEST_IMPORT_LOG"], "a") as _log:
        _log.write(f"{os.getpid()}\n")

_hoard: list[bytes] = []
# Memory the module holds from its import: with --preload, pages every worker shares.
_preloaded = b"x" * (int(os.environ.get("ASERVE_TEST_PRELOAD_MB", "0")) * 1024 * 1024)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                marker = os.environ.get("ASERVE_TEST_SHUTDOWN_DIR")
                if marker:
                    with open(os.path.join(marker, f"startup-{os.getpid()}"), "w") as file:
                        file.write("startup ran")
                await send({"type": "lifespan.startup.complete"})
            else:
                marker = os.environ.get("ASERVE_TEST_SHUTDOWN_DIR")
                if marker:
                    with open(os.path.join(marker, f"shutdown-{os.getpid()}"), "w") as file:
                        file.write("shutdown ran")
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/block":
        time.sleep(60)  # blocks the event loop
    elif path == "/slow":
        marker = os.environ.get("ASERVE_TEST_SHUTDOWN_DIR")
        if marker:
            with open(os.path.join(marker, f"arrived-{os.getpid()}"), "w") as file:
                file.write("arrived")
        await asyncio.sleep(float(scope["query_string"] or b"1"))
    elif path == "/grow":
        _hoard.append(b"x" * (64 * 1024 * 1024))
    body = str(os.getpid()).encode()
    if path == "/server-cert":  # the certificate the `tls` extension reports (TLS reload tests)
        body = scope["extensions"]["tls"]["server_cert"].encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def failing_startup(scope, receive, send):
    message = await receive()
    assert message["type"] == "lifespan.startup"
    await send({"type": "lifespan.startup.failed", "message": "the database is unreachable"})


def make_app():
    """A factory: --preload calls it once, in the supervisor."""
    if os.environ.get("ASERVE_TEST_IMPORT_LOG"):
        with open(os.environ["ASERVE_TEST_IMPORT_LOG"], "a") as log:
            log.write(f"factory {os.getpid()}\n")
    return app
