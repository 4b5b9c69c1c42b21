"""WSGI apps (PEP 3333) served through the ASGI interface, from a bounded pool of threads.

`WSGIAdapter` is an ASGI 3 app: the importer wraps a WSGI callable in it (`--interface wsgi`,
or `auto` finding one), and the server runs it like any other app, under the same request
cycle, limits, deadlines, proxy headers, access log and metrics. It uses nothing but the
scope, `receive` and `send`, so any protocol that carries ASGI requests serves WSGI apps too.

For each request a coroutine in the event loop (the request's own Task) trades with one pool
thread that runs the WSGI call, and never blocks on it:

- `wsgi.input` asks the loop for the next piece of body only once the app has read what it
  had: at most one piece waits on this side, and the connection's own flow control (reading
  paused past 64 KiB unread) holds the client back while the app is slow to read.
- Response chunks go from the thread to the loop, which `send`s them. A thread that has handed
  over more than `WINDOW` bytes that `send` has not yet taken waits: a slow client slows the
  app down instead of filling memory.
- A request the server gives up on (graceful shutdown timeout, `--timeout-request`) leaves the
  thread to find out at its next read or write, which raise `ClientDisconnected` (an
  OSError); the iterable's `close()` is called whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote_to_bytes

from aserve.asgi import ClientDisconnected
from aserve.logging import error_logger

if TYPE_CHECKING:
    from aserve.asgi import Message, Receive, Scope, Send

# Response bytes a thread may hand over before `send` has taken them, then it waits. The same
# as the request side's high water (protocols/http.py) and asyncio's write buffer: a slow
# client costs at most about this much on top of what the transport holds.
WINDOW: Final = 64 * 1024

# A pool thread with nothing to do for this long ends; the next busy moment starts one again
# (well under a millisecond). Keeps a burst's threads, and whatever they hold (a framework's
# per-thread database connection), from staying for good.
IDLE_TIMEOUT: Final = 60.0

_thread_numbers = itertools.count(1)


class ThreadPool:
    """At most `size` daemon threads running jobs in the order they came; started when the
    work needs them, ended after `IDLE_TIMEOUT` without any.

    Daemon threads, not `concurrent.futures`: the interpreter joins an executor's threads at
    exit, so an app stuck in one request would hold the process past the graceful shutdown
    timeout. And no Future per job: the request's coroutine learns the outcome from the job.
    """

    __slots__ = ("_busy", "_jobs", "_lock", "_threads", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._jobs: SimpleQueue[Callable[[], object]] = SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._busy = 0  # jobs submitted and not finished: running or queued

    @property
    def threads(self) -> int:
        """Threads alive (running a job or waiting for one)."""
        return self._threads

    def submit(self, job: Callable[[], object]) -> None:
        # Queued before the count is looked at: a thread ending for idleness checks the queue
        # under the same lock, so it either takes this job or is no longer counted.
        self._jobs.put(job)
        with self._lock:
            self._busy += 1
            if self._busy <= self._threads or self._threads >= self.size:
                return
            self._threads += 1
        thread = threading.Thread(
            target=self._work, name=f"aserve-wsgi-{next(_thread_numbers)}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": the queued job waits for one
            with self._lock:
                self._threads -= 1
            error_logger.error("Could not start a WSGI thread: %s", exc)

    def _work(self) -> None:
        jobs = self._jobs
        lock = self._lock
        while True:
            try:
                job = jobs.get(timeout=IDLE_TIMEOUT)
            except Empty:
                with lock:
                    if not jobs.empty():
                        continue
                    self._threads -= 1
                return
            try:
                job()
            except BaseException:  # the job reports its own errors; this is a last resort
                error_logger.exception("Exception in a WSGI thread")
            del job
            with lock:
                self._busy -= 1


# What the thread hands the loop, as the first item of a tuple.
_SEND: Final = 0  # (_SEND, start message or None, body, more_body)
_RECEIVE: Final = 1  # (_RECEIVE,): the app wants the next piece of body
_DONE: Final = 2  # (_DONE, exception or None): the WSGI call is over, close() included

_CANCELLED: Final = "the request was cancelled (server shutdown or --timeout-request)"
_GONE: Final = "the client closed the connection"


class _Exchange:
    """One request between the event loop (`serve`, the request's coroutine) and the pool
    thread running the WSGI call (`__call__`, `start_response`, `write`, `receive`).

    Each side writes its own fields and wakes the other: the thread appends to `ops` and
    schedules `_wake` in the loop unless one is pending (`scheduled`); the loop changes what
    the thread waits on (`acked`, `inbox`, `failure`) and notifies `cond`. Only CPython's
    atomic deque operations and attribute writes are shared without the lock, each written by
    one side only.
    """

    __slots__ = (
        "abandoned",
        "acked",
        "app",
        "body_done",
        "cond",
        "context",
        "environ",
        "error",
        "failure",
        "finished",
        "gone",
        "headers",
        "headers_sent",
        "inbox",
        "length",
        "loop",
        "ops",
        "posted",
        "scheduled",
        "sent",
        "start",
        "streaming",
        "waiter",
        "waiting",
        "watch",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, app: Any, environ: dict[str, Any], body: bool
    ) -> None:
        self.loop = loop
        self.app = app
        self.environ = environ
        # What the app runs in: a copy of the request's context (one context cannot be
        # entered by two threads), so what the server's context holds is visible to the app.
        self.context = contextvars.copy_context()
        self.cond = threading.Condition(threading.Lock())
        # Thread -> loop.
        self.ops: deque[tuple[Any, ...]] = deque()
        self.scheduled = False  # a `_wake` is on its way to the loop
        self.posted = 0  # response bytes handed to the loop
        # Loop -> thread.
        self.waiter: asyncio.Future[None] | None = None
        self.acked = 0  # of those, bytes `send` has taken
        self.waiting = False  # the thread waits for `acked` to catch up (under `cond`)
        self.inbox: tuple[bytes, bool] | None = None  # the piece of body the app asked for
        self.failure: str | None = None  # the request is over for the app: why
        self.abandoned = False  # ... and nobody in the loop listens any more (cancelled)
        self.gone = False  # the client left (seen by `send` or `receive`)
        self.error: BaseException | None = None  # what `send` refused (an invalid response)
        self.body_done = not body  # the loop has received the whole request body
        self.streaming = False  # a response is under way: its head out, its end not yet
        self.watch: asyncio.Task[None] | None = None  # waits for the client to leave
        # The response, on the thread's side.
        self.start: dict[str, Any] | None = None  # the http.response.start message to send
        self.headers_sent = False
        self.length = -1  # its Content-Length, if it declared one
        self.sent = 0
        self.finished = False  # the last body message was handed over

    # -- the event loop's side -------------------------------------------------------------

    async def serve(self, receive: Receive, send: Send) -> None:
        """Carry out what the thread asks until the WSGI call is over; raise what it raised."""
        ops = self.ops
        loop = self.loop
        done = False
        try:
            while True:
                if not ops:
                    self.scheduled = False
                    if not ops:  # (a post between the two looks saw `scheduled` still set)
                        if self.streaming and self.body_done and self.watch is None:
                            # The app is at work between two chunks: learn at once if the
                            # client leaves, so that its next write raises.
                            self.watch = loop.create_task(self._watch(receive))
                        waiter = self.waiter = loop.create_future()
                        try:
                            await waiter
                        finally:
                            self.waiter = None
                        continue
                op = ops.popleft()
                kind = op[0]
                if kind == _SEND:
                    await self._send(send, op[1], op[2], op[3])
                elif kind == _RECEIVE:
                    await self._receive(receive)
                else:
                    done = True
                    if self.error is not None:
                        raise self.error
                    if op[1] is not None:
                        raise op[1]
                    if self.gone:  # the app swallowed the disconnect: still not a response
                        raise ClientDisconnected(_GONE)
                    return
        except BaseException:
            if not done:  # cancelled: the thread is on its own now
                self._fail(_CANCELLED, abandon=True)
            raise
        finally:
            if self.watch is not None and not self.watch.done():
                self.watch.cancel()

    async def _watch(self, receive: Receive) -> None:
        """Wait for `http.disconnect` (the body is all read: only empty messages come first)."""
        while (await receive())["type"] == "http.request":
            pass
        if not self.finished:  # (not the end of the response itself)
            self.gone = True
            self._fail(_GONE)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _send(self, send: Send, start: Any, body: bytes, more_body: bool) -> None:
        if self.failure is None:
            try:
                if start is not None:
                    await send(start)
                await send({"type": "http.response.body", "body": body, "more_body": more_body})
                self.streaming = more_body
            except OSError:  # ClientDisconnected, or a transport error
                self.gone = True
                self._fail(_GONE)
            except Exception as exc:  # what the server refused (InvalidResponse)
                self.error = exc
                self._fail(f"the response was refused: {exc}")
        self.acked += len(body)
        if self.waiting:
            with self.cond:
                self.cond.notify()

    async def _receive(self, receive: Receive) -> None:
        message = await receive()
        if message["type"] == "http.request":
            more_body = message.get("more_body", False)
            self.body_done = not more_body
            self.inbox = (message.get("body", b""), more_body)
            with self.cond:
                self.cond.notify()
        elif self.finished:  # the whole response is out: the request is over, not the client
            self.inbox = (b"", False)
            with self.cond:
                self.cond.notify()
        else:  # http.disconnect
            self.gone = True
            self._fail(_GONE)

    def _fail(self, why: str, abandon: bool = False) -> None:
        """The request is over for the app: its next read or write raises."""
        if abandon:
            self.abandoned = True
        if self.failure is None:
            self.failure = why
        with self.cond:
            self.cond.notify_all()

    # -- the pool thread's side ------------------------------------------------------------

    def __call__(self) -> None:
        """The job: the WSGI call in the request's context, then tell the loop it is over."""
        self.context.run(self._run)

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            if not self.abandoned:  # (cancelled while queued: the app is never called)
                result = self.app(self.environ, self.start_response)
                try:
                    self._respond(result)
                finally:
                    _close(result)
        except BaseException as exc:
            error = exc
        finally:
            ERRORS.end_of_request()
        if not self.abandoned:
            # Even after a failure: the loop waits for this. (Suppressed: the loop is closed.)
            with contextlib.suppress(ClientDisconnected):
                self._post((_DONE, error), check=False)

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        """PEP 3333's start_response: the status and headers, sent with the first bytes."""
        if exc_info is not None:
            try:
                if self.headers_sent:  # too late for another status: the app's error goes on
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.start is not None:
            raise RuntimeError("start_response was called a second time without exc_info")
        code = _status_code(status)
        encoded, self.length = _encode_headers(headers)
        self.start = {"type": "http.response.start", "status": code, "headers": encoded}
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's write(): sends at once (the headers too, even for b""), and waits while
        the client is slower than the app."""
        if self.start is None:
            raise RuntimeError("write() was called before start_response")
        if type(data) is not bytes:
            data = _as_bytes(data)
        if self.finished:
            if data:
                raise RuntimeError("write() past the end of the response (its Content-Length)")
            return
        self._send_body(data, False)

    def _respond(self, result: Iterable[bytes]) -> None:
        """Send what the iterable yields; the last piece is told apart where it can be (a
        list, or a declared Content-Length reached) so that it ends the response at once."""
        last = _last_piece(result)
        # Nothing but the end of the call follows the last piece of a response without
        # close(): the loop is woken by the end itself, not twice (see `_send_body`).
        quiet = getattr(result, "close", None) is None
        for index, chunk in enumerate(result):
            if type(chunk) is not bytes:
                chunk = _as_bytes(chunk)
            if chunk:
                if self.finished:
                    raise RuntimeError("the response is longer than its Content-Length")
                self._send_body(chunk, index == last, quiet)
                if self.finished:
                    return  # PEP 3333: stop iterating once Content-Length bytes are out
        if not self.finished:
            self._send_body(b"", True, quiet)

    def _send_body(self, data: bytes, last: bool, quiet: bool = False) -> None:
        """Hand a piece of body to the loop. `quiet`: if it is the last, the loop is not woken
        for it: the end of the call, which follows at once, wakes it for both."""
        start = self.start
        if start is None:
            raise RuntimeError("the WSGI app returned a body without calling start_response")
        size = len(data)
        if self.length >= 0:
            self.sent += size
            if self.sent >= self.length:
                last = True
        if self.headers_sent:
            start = None
        else:
            self.headers_sent = True
        self.finished = last
        self.posted += size
        self._post((_SEND, start, data, not last), wake=not (last and quiet))
        # (Not after the last piece: it is the loop's now, and close() should not wait.)
        if not last and self.posted - self.acked > WINDOW:
            with self.cond:
                self.waiting = True
                while self.posted - self.acked > WINDOW and self.failure is None:
                    self.cond.wait()
                self.waiting = False
            self._check()

    def receive(self) -> tuple[bytes, bool]:
        """The next piece of request body and whether more follows (`wsgi.input`'s source)."""
        self._post((_RECEIVE,))
        with self.cond:
            while self.inbox is None and self.failure is None:
                self.cond.wait()
            inbox = self.inbox
            self.inbox = None
        if inbox is None:
            self._check()
            raise AssertionError("unreachable")
        return inbox

    def _post(self, op: tuple[Any, ...], check: bool = True, wake: bool = True) -> None:
        if check:
            self._check()
        self.ops.append(op)
        if wake and not self.scheduled:
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the event loop is closed: the server is gone
                self.failure = self.failure or _CANCELLED
                self.abandoned = True
                self._check()

    def _check(self) -> None:
        if self.failure is not None:
            raise ClientDisconnected(self.failure)


def _close(result: Any) -> None:
    """PEP 3333: the iterable's close(), however the request ended. Its errors are logged."""
    close = getattr(result, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            error_logger.exception("Exception in close() of a WSGI response")


def _last_piece(result: Any) -> int:
    """For a list or tuple, the index of its last non-empty piece; -1 otherwise."""
    if type(result) is list or type(result) is tuple:
        for index in range(len(result) - 1, -1, -1):
            if result[index]:
                return index
    return -1


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"a WSGI response must be made of bytes, got {type(data).__name__}")


_status_codes: dict[str, int] = {}


def _status_code(status: Any) -> int:
    """The code of a WSGI status line ("200 OK"). The reason phrase is the server's own."""
    code = _status_codes.get(status) if type(status) is str else None
    if code is not None:
        return code
    if type(status) is not str:
        raise TypeError(f"a WSGI status must be a str such as '200 OK', got {status!r}")
    digits = status[:3]
    if not (digits.isascii() and digits.isdigit() and len(digits) == 3) or status[3:4] not in (
        " ",
        "",
    ):
        raise ValueError(f"a WSGI status must look like '200 OK', got {status!r}")
    code = int(digits)
    if len(_status_codes) < 256:
        _status_codes[status] = code
    return code


def _encode_headers(headers: Any) -> tuple[list[tuple[bytes, bytes]], int]:
    """WSGI's (str, str) pairs as ASGI's bytes, and the Content-Length if one is declared
    (the server checks the headers themselves: tokens, no control characters)."""
    encoded = []
    length = -1
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError(f"WSGI response headers must be (name, value) tuples, got {item!r}")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise TypeError(f"a WSGI response header must be a pair of str, got {item!r}")
        if len(name) == 14 and name.lower() == "content-length" and value.strip().isdigit():
            length = int(value)
        encoded.append((name.encode("latin-1"), value.encode("latin-1")))
    return encoded, length


class InputStream:
    """`wsgi.input`: the request body as it arrives, read by the app's thread.

    A read that needs more than this side holds waits for the event loop to receive the next
    piece; `read(size)` returns `size` bytes unless the body ends first, as a file does. The
    end of the body reads as end-of-file (`wsgi.input_terminated` is true), with or without a
    Content-Length.
    """

    __slots__ = ("_buffer", "_eof", "_exchange")

    def __init__(self, exchange: _Exchange | None) -> None:
        """`exchange` None: a request without a body, which never asks the loop."""
        self._exchange = exchange
        self._buffer = b""
        self._eof = exchange is None

    def _next(self) -> bytes:
        """The next non-empty piece of body, b"" at its end."""
        exchange = self._exchange
        while not self._eof:
            assert exchange is not None
            data, more = exchange.receive()
            self._eof = not more
            if data:
                return data
        return b""

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = sys.maxsize
        buffer = self._buffer
        if len(buffer) >= size:
            self._buffer = buffer[size:]
            return buffer[:size]
        parts = [buffer] if buffer else []
        have = len(buffer)
        while have < size:
            data = self._next()
            if not data:
                break
            parts.append(data)
            have += len(data)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if have > size:
            self._buffer = data[size:]
            return data[:size]
        self._buffer = b""
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = sys.maxsize if size is None or size < 0 else size
        buffer = self._buffer
        searched = 0
        while True:
            end = buffer.find(b"\n", searched, limit)
            if end >= 0:
                cut = end + 1
                break
            if len(buffer) >= limit:
                cut = limit
                break
            searched = len(buffer)
            data = self._next()
            if not data:
                cut = len(buffer)
                break
            buffer += data
        self._buffer = buffer[cut:]
        return buffer[:cut]

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass


class ErrorStream:
    """`wsgi.errors`: what an app writes goes to the `aserve.error` log at ERROR level.

    Each write that ends a line logs everything up to its last newline as one record (a
    traceback written in one call stays one record); the rest waits for the next newline, a
    `flush()`, or the end of the request. One stream for all requests, buffered per thread.
    """

    def __init__(self) -> None:
        self._pending = threading.local()

    def write(self, text: str) -> int:
        if type(text) is not str:
            raise TypeError(f"wsgi.errors takes str, got {type(text).__name__}")
        pending = getattr(self._pending, "text", "") + text
        lines, newline, rest = pending.rpartition("\n")
        if newline:
            error_logger.error("%s", lines)
        self._pending.text = rest
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        text = getattr(self._pending, "text", "")
        if text:
            self._pending.text = ""
            error_logger.error("%s", text)

    def end_of_request(self) -> None:
        """A line left unfinished is logged: it must not run into the next request's."""
        if getattr(self._pending, "text", ""):
            self.flush()


ERRORS: Final = ErrorStream()

# Header names as environ keys (b"user-agent" -> "HTTP_USER_AGENT"), made once per name seen.
# None: a name with an underscore, which is dropped (see `_environ_key`).
_ENVIRON_KEYS: dict[bytes, str | None] = {
    b"content-type": "CONTENT_TYPE",
    b"content-length": "CONTENT_LENGTH",
}
_ENVIRON_KEYS_LIMIT: Final = 512

_PROTOCOLS: Final = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0", "2": "HTTP/2"}


def _environ_key(name: bytes) -> str | None:
    """`HTTP_` and the name in capitals with `-` as `_`; None for a name that has an `_`.

    A header `X_Forwarded_For` would otherwise land on the same key as `X-Forwarded-For` and
    could pass for the one a proxy in front sets (or strips); gunicorn drops them too, and
    nginx and Apache do not pass them on by default.
    """
    key = _ENVIRON_KEYS.get(name)
    if key is None and name not in _ENVIRON_KEYS:
        text = name.decode("latin-1")
        key = None if "_" in text else "HTTP_" + text.upper().replace("-", "_")
        if len(_ENVIRON_KEYS) < _ENVIRON_KEYS_LIMIT:
            _ENVIRON_KEYS[name] = key
    return key


def build_environ(scope: Scope, base: dict[str, Any]) -> dict[str, Any]:
    """The PEP 3333 environ of an HTTP scope, without `wsgi.input` (see `WSGIAdapter`).

    PATH_INFO is the path percent-decoded to bytes and read as latin-1 (PEP 3333's "bytes in a
    str"), from `raw_path` so that bytes that are not UTF-8 survive; SCRIPT_NAME is the root
    path, taken off its front. REMOTE_ADDR and `wsgi.url_scheme` are the scope's, that is
    after trusted proxy headers. Repeated headers are joined with ", " (Cookie with "; ", as
    HTTP/2 splits it), and names with an underscore are dropped (`_environ_key`).
    """
    environ = base.copy()
    root: str = scope.get("root_path", "")
    raw = scope.get("raw_path")
    path: bytes = raw if raw is not None else scope["path"].encode("utf-8")
    if b"%" in path:
        path = unquote_to_bytes(path)
    if root:
        script = root.encode("utf-8")
        if path.startswith(script):
            path = path[len(script) :]
        environ["SCRIPT_NAME"] = script.decode("latin-1")
    environ["PATH_INFO"] = path.decode("latin-1")
    environ["REQUEST_METHOD"] = scope["method"]
    environ["QUERY_STRING"] = scope["query_string"].decode("latin-1")
    version = scope["http_version"]
    environ["SERVER_PROTOCOL"] = _PROTOCOLS.get(version) or f"HTTP/{version}"
    environ["wsgi.url_scheme"] = scope["scheme"]
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    for name, value in scope["headers"]:
        key = _ENVIRON_KEYS.get(name) or _environ_key(name)
        if key is None:
            continue
        text = value.decode("latin-1")
        if key in environ:
            text = environ[key] + ("; " if key == "HTTP_COOKIE" else ", ") + text
        environ[key] = text
    server = scope.get("server")
    if server and server[1] is not None:
        environ["SERVER_NAME"] = server[0]
        environ["SERVER_PORT"] = str(server[1])
    else:  # a Unix socket: the name the client asked for
        host = environ.get("HTTP_HOST", "")
        name, colon, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if not colon or not port.isdigit():
            name, port = host, ""
        environ["SERVER_NAME"] = name or "localhost"
        environ["SERVER_PORT"] = port or ("443" if scope["scheme"] == "https" else "80")
    return environ


def _has_body(environ: dict[str, Any]) -> bool:
    """Whether the request may have a body for `wsgi.input` to ask for. HTTP/1.x frames a
    body with Content-Length or Transfer-Encoding only; HTTP/2 may send one with neither."""
    length = environ.get("CONTENT_LENGTH")
    if length is not None:
        return length != "0"
    return "HTTP_TRANSFER_ENCODING" in environ or environ["SERVER_PROTOCOL"] not in (
        "HTTP/1.1",
        "HTTP/1.0",
    )


class WSGIAdapter:
    """An ASGI 3 app that serves a WSGI app from a pool of `threads` threads.

    HTTP requests go to the WSGI app (see the module docstring). A WebSocket handshake is
    refused (403): WSGI has no WebSockets. Lifespan completes at once: WSGI has no start-up.
    """

    __slots__ = ("_base", "app", "pool")

    def __init__(self, app: Callable[..., Any], threads: int = 10, multiprocess: bool = False):
        self.app = app
        self.pool = ThreadPool(threads)
        self._base: dict[str, Any] = {
            "SCRIPT_NAME": "",
            "wsgi.version": (1, 0),
            "wsgi.errors": ERRORS,
            "wsgi.multithread": threads > 1,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            environ = build_environ(scope, self._base)
            body = _has_body(environ)
            exchange = _Exchange(asyncio.get_running_loop(), self.app, environ, body)
            environ["wsgi.input"] = InputStream(exchange if body else None)
            self.pool.submit(exchange)
            await exchange.serve(receive, send)
        elif kind == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close"})
        elif kind == "lifespan":
            await _lifespan(receive, send)
        else:
            raise ValueError(f"a WSGI app cannot serve {kind!r} connections")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
