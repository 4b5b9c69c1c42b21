"""The ASGI lifespan protocol: startup before we listen, shutdown after the last request."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from aserve.asgi import ASGI_VERSION, ASGIApp, Message
from aserve.logging import error_logger


class LifespanFailure(RuntimeError):
    """Startup or shutdown failed; the message is the app's own (or says what went wrong)."""


class Lifespan:
    """Runs the app's lifespan call in a Task and trades messages with it.

    mode "auto" tolerates apps that do not support lifespan (they raise on the scope); "on"
    treats that as a failure; "off" never calls the app.
    """

    def __init__(self, app: ASGIApp, mode: str, state: dict[str, Any]) -> None:
        self.app = app
        self.mode = mode
        self.state = state
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._startup_done = asyncio.Event()
        self._shutdown_done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.unsupported = False
        self._failure: str | None = None

    async def startup(self, context: contextvars.Context | None = None) -> None:
        if self.mode == "off":
            return
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), context=context)
        await self._to_app.put({"type": "lifespan.startup"})
        await self._startup_done.wait()  # also set when the lifespan call ends, however it ends
        if self._failure is not None:
            raise LifespanFailure(self._failure)

    def cancel(self) -> asyncio.Task[None] | None:
        """Cancel the app's lifespan call (a startup given up); the Task, to wait for, or None."""
        task = self._task
        if task is None or task.done():
            return None
        task.cancel()
        return task

    async def shutdown(self) -> None:
        if self._task is None or self.unsupported or self._task.done():
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        await self._shutdown_done.wait()
        if self._failure is not None:
            raise LifespanFailure(self._failure)

    async def _run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": ASGI_VERSION, "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if self._startup_done.is_set() or self.mode == "on":
                if self._failure is None:
                    self._failure = f"{type(exc).__name__}: {exc}"
                    error_logger.error("Exception in 'lifespan' protocol", exc_info=exc)
            else:
                self.unsupported = True
                error_logger.info("ASGI 'lifespan' protocol appears unsupported.")
            if not isinstance(exc, Exception):
                raise
        finally:
            self._startup_done.set()
            self._shutdown_done.set()

    async def _receive(self) -> Message:
        return await self._to_app.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._startup_done.set()
        elif kind == "lifespan.startup.failed":
            self._failure = message.get("message") or "startup failed"
            self._startup_done.set()
        elif kind == "lifespan.shutdown.complete":
            self._shutdown_done.set()
        elif kind == "lifespan.shutdown.failed":
            self._failure = message.get("message") or "shutdown failed"
            self._shutdown_done.set()
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r}")
