"""One ASGI HTTP request cycle, whichever HTTP version carries it: `receive`, `send`, errors.

`RequestCycle` owns everything about a request that is not bytes on the wire: the scope it
was given, the app call (`run_app`, and the 503 app of `--limit-concurrency`), `receive`
(protocols/body.py) with the request-body buffer and its waiter, `send` (the cycle itself),
the outcome of the app call (a 500 when it fails before starting a response, an abort after),
disconnects, `--timeout-request`, the access log and the metrics. A protocol module per HTTP
version subclasses it with its framing only: HTTP/1.1 in protocols/http.py, HTTP/2 beside it.
It also builds the scope every version shares (`build_scope`, `connection_parts`).

The contract between a cycle and its framing:

  In, called by the framing (the connection or stream that parsed the request):
    RequestCycle(state, scope, head_only)    a head was parsed (scope from `build_scope`);
                                             the framing counts it in the metrics, as a
                                             WebSocket's stream is made as a cycle too
    run_app()                                its turn came: call the app; the Task while it
                                             runs on, None once it is done
    feed_body(data) / end_body()             a piece of the request body / its end
    lose_connection()                        the client is gone (connection lost, stream
                                             reset): `receive` says http.disconnect
    flush_head()                             the app paused after its start: the head goes
                                             out now (server-sent events, long polls)
    request_timed_out(task, timeout)         --timeout-request passed without a response
    shutdown()                               graceful shutdown began: an app streaming its
                                             response gets http.disconnect from `receive`
    body_size                                read by the framing after `feed_body`: request
                                             body buffered and not yet consumed (to stop
                                             reading, or to stop opening the window)

  Out, methods each framing overrides (the base raises NotImplementedError where it has no
  version-free meaning):
    write_start()                            `http.response.start` was accepted: `status`,
                                             `block` (validated headers), `head_only` and
                                             `length_left` are set; the head is held
    write_body(body, more_body)              body bytes; the first call carries the head (the
                                             framing sets `head_written`), so head and a
                                             single body leave in one write
    write_informational(status, block)       an interim response (103 Early Hints), sent
                                             only while the head is not out
    trailers_possible() -> bool              can this response end with trailers?
    write_trailers(blocks)                   the trailer fields: they end the response
    write_file(fd, offset, count, more_body) file bytes as body (pathsend, zero-copy send):
                                             an awaitable of the bytes sent
    write_pressure() -> awaitable            what `send` returns: `READY`, or an awaitable
                                             that ends once the transport (or the stream's
                                             window) takes more
    body_consumed(size)                      the app took `size` buffered body bytes:
                                             resume reading (HTTP/1.1), WINDOW_UPDATE (HTTP/2)
    ask_for_body()                           the app waits for a body the client held back
                                             on `Expect: 100-continue`: ask for it
    response_done()                          the response is complete (the framing may start
                                             the next request, close, or end the stream)
    abort()                                  the response cannot be completed: end it so it
                                             does not look complete (close, RST_STREAM)

Why a subclass per version and not a framing object the cycle delegates to: the framing
state is per request (HTTP/1.1's chunking, keep-alive; a stream's id and window), so
delegation needs a second object per request, and compiled with mypyc a subclass's hooks
are native vtable calls on the same object (docs/architecture.md has the figures).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from aserve.asgi import ASGI_VERSION, HTTP_SPEC_VERSION, ClientDisconnected, InvalidResponse
from aserve.logging import error_logger
from aserve.protocols.body import receive_body
from aserve.protocols.extensions import send_extension
from aserve.protocols.headers import HeaderBlock, encode_headers, status_code
from aserve.protocols.rejection import BAD_REQUEST, SERVICE_UNAVAILABLE, RequestRejected
from aserve.proxy import TrustedProxies, apply_forwarded_headers
from aserve.tasks import start_app, task_done, task_exception

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from aserve.asgi import ASGIApp, Message
    from aserve.state import ServerState

_ASGI: Final[dict[str, str]] = {"version": ASGI_VERSION, "spec_version": HTTP_SPEC_VERSION}

_ERROR_HEADERS: Final = [(b"content-type", b"text/plain; charset=utf-8")]


class RequestCycle:
    """One request and its response: the app's `receive`, and its `send` (the cycle itself).

    `send` is a plain call returning an awaitable: when nothing needs to wait it returns
    `READY`, already complete, so the common case costs no coroutine and no suspension.
    A framing subclass adds the bytes (see the module docstring for the contract).
    """

    __slots__ = (
        "block",
        "body_done",
        "body_size",
        "bytes_sent",
        "chunks",
        "complete",
        "delivered",
        "disconnected",
        "ext",
        "head_only",
        "head_written",
        "length_left",
        "received",
        "scope",
        "start_time",
        "started",
        "state",
        "status",
        "stopped",
        "waiter",
    )

    def __init__(self, state: ServerState, scope: dict[str, Any], head_only: bool) -> None:
        self.state = state
        self.scope = scope
        # No body in the response: a HEAD request (kept from the request itself, not read back
        # from the scope a middleware may rewrite), or a status that has none.
        self.head_only = head_only
        # Body pieces not yet handed to the app; None while there are none (most requests
        # have no body: no list allocated and freed for each).
        self.chunks: list[bytes] | None = None
        self.body_size = 0  # buffered, not yet handed to the app
        self.received = 0  # request body bytes, all told
        self.body_done = False
        self.delivered = False  # the last http.request message (more_body False) was handed out
        self.disconnected = False
        self.waiter: asyncio.Future[None] | None = None
        self.started = False
        # `receive` said http.disconnect because the server is shutting down (`shutdown`).
        self.stopped = False
        self.head_written = False  # set by the framing once the head is on its way
        self.complete = False
        self.status = 0
        self.block: HeaderBlock | None = None
        self.length_left = -1  # of a declared Content-Length, once started; -1: none
        self.bytes_sent = 0
        self.start_time = 0.0
        # Set (protocols/extensions.py) while this request needs the extensions' path.
        self.ext: Any = None
        if state.access_log is not None or state.metrics is not None:
            self.start_time = state.duration_clock()

    # -- driven by the framing -------------------------------------------------------------

    def run_app(self) -> asyncio.Task[Any] | None:
        """Call the app for this request: the Task while it runs on, None once it is done
        (eagerly, a request that needs no I/O is answered before this returns)."""
        state = self.state
        # The cycle itself is the app's `send` (see `__call__`).
        task = start_app(
            state.loop, self._app(), self.scope, self.receive, self, state.base_context
        )
        if task_done(task):
            self._app_outcome(task)  # (never in `state.tasks`: nothing to discard)
            return None
        state.tasks.add(task)
        task.add_done_callback(self.app_finished)
        return task

    def _app(self) -> ASGIApp:
        state = self.state
        limit = state.limit_concurrency
        if limit is not None and (len(state.connections) > limit or len(state.tasks) >= limit):
            return _service_unavailable
        return state.app

    def app_finished(self, task: asyncio.Task[Any]) -> None:
        """What to do once the app call is over: the app's Task is its own coroutine, so a
        failure is read from the Task here instead of a wrapper coroutine per request."""
        self.state.tasks.discard(task)
        self._app_outcome(task)

    def _app_outcome(self, task: asyncio.Task[Any]) -> None:
        try:
            exc = task_exception(task)
        except asyncio.CancelledError:
            if not self.complete:
                self.abort()
            return
        if exc is not None:
            self._app_failed(exc)
        elif self.complete:
            return
        elif not self.started:
            if not self.disconnected:
                error_logger.error("ASGI callable returned without starting a response.")
                self._respond_500()
        elif self.stopped and self._end_stopped_response():
            return
        else:
            error_logger.error("ASGI callable returned without completing the response.")
            self.abort()

    def feed_body(self, data: bytes) -> None:
        if self.complete or self.disconnected:
            return  # the app is done with this request: the rest of the body is dropped
        chunks = self.chunks
        if chunks is None:
            self.chunks = [data]
        else:
            chunks.append(data)
        size = len(data)
        self.received += size
        self.body_size += size
        self._wake()

    def end_body(self) -> None:
        self.body_done = True
        if self.waiter is not None:
            self._wake()

    def lose_connection(self) -> None:
        if not self.disconnected and not self.complete:
            metrics = self.state.metrics
            if metrics is not None:
                metrics.request_aborted(self.bytes_sent, self.received)
        self.disconnected = True
        self._wake()
        if self.ext is not None:
            self.ext.lost()

    def flush_head(self) -> None:
        if self.started and not self.head_written and not self.disconnected:
            self.write_body(b"", True)

    def request_timed_out(self, task: asyncio.Task[Any], timeout: float) -> None:
        """--timeout-request passed and the app has not started a response: answer 503 in
        its place and cancel it."""
        scope = self.scope
        error_logger.error(
            "Request cancelled after %ss without a response: %s %s",
            timeout,
            scope.get("method"),
            scope.get("path"),
        )
        self.respond_error(SERVICE_UNAVAILABLE, b"Service Unavailable")
        task.cancel()

    def shutdown(self) -> None:
        """Graceful shutdown began. An app streaming its response (server-sent events, a long
        poll) that waits in `receive` is woken to get `http.disconnect` (protocols/body.py
        says when), so it can end its stream instead of holding the shutdown until
        --timeout-graceful-shutdown; an app still reading its request body reads it all."""
        if self.started and not self.complete:
            self._wake()

    def _end_stopped_response(self) -> bool:
        """The app returned with its response open after `receive` told it of the shutdown
        (`stopped`): end the response for it, whole (HTTP/1.1's last chunk, HTTP/2's
        END_STREAM), as an app that ends its stream on `http.disconnect` means it to end.
        False when it cannot end whole: bytes of its Content-Length are missing."""
        if self.length_left > 0 and not self.head_only:
            return False
        try:
            ext = self.ext
            if ext is not None and ext.trailers:  # trailers it said it would send: those so far
                if not self.head_written:
                    self.send_body(b"", True)
                blocks = ext.trailers
                ext.trailers = None
                self.write_trailers(blocks)
                self.finish_response()
            else:
                if ext is not None:
                    ext.trailers = None  # promised, none given: the body just ends
                self.send_body(b"", False)
        except Exception as exc:  # the response cannot be ended (the connection is gone)
            error_logger.debug("Could not end the response at shutdown: %r", exc)
            return False
        return self.complete

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the app's side --------------------------------------------------------------------

    def receive(self) -> Awaitable[Message]:
        return receive_body(self)

    def take_body(self) -> Message:
        chunks = self.chunks
        if chunks is None:
            body = b""
        elif len(chunks) == 1:
            body = chunks[0]
        else:
            body = b"".join(chunks)
        self.chunks = None
        size = self.body_size
        self.body_size = 0
        if size > 0:
            self.body_consumed(size)
        more_body = not self.body_done
        self.delivered = not more_body
        return {"type": "http.request", "body": body, "more_body": more_body}

    def __call__(self, message: Message) -> Awaitable[None]:
        """The app's `send`: the cycle is passed as `send` itself, because a bound method
        would be a new object for every request."""
        if self.disconnected:
            raise ClientDisconnected("the client closed the connection")
        # Typed as a dict, compiled reads are direct dict lookups instead of method calls; a
        # message that is another kind of mapping is copied into one.
        event: dict[str, Any] = message if type(message) is dict else dict(message)
        kind = event["type"]
        # Other messages (the ASGI extensions, errors), and all of a request that accepts
        # trailers (`ext`), take the slow path in protocols/extensions.py.
        if not self.started:
            if kind != "http.response.start" or self.ext is not None:
                return send_extension(self, event)
            self.start_response(event["status"], event.get("headers", ()))
        elif not self.complete:
            if kind != "http.response.body" or self.ext is not None:
                return send_extension(self, event)
            self.send_body(event.get("body", b""), event.get("more_body", False))
        else:
            return send_extension(self, event)
        return self.write_pressure()

    # -- the response, as the app describes it ---------------------------------------------

    def start_response(self, status: Any, headers: Any) -> None:
        """`http.response.start`: validated here, framed by `write_start`."""
        code: int = status if type(status) is int else status_code(status)
        block = self.block = encode_headers(headers)
        self.status = code
        self.started = True
        if code < 200 or code == 204 or code == 304:
            self.head_only = True
            self.length_left = -1
        else:
            self.length_left = block.content_length
        self.write_start()

    def send_body(self, body: Any, more_body: object) -> None:
        """`http.response.body`: checked here, framed by `write_body`."""
        if type(body) is not bytes:
            if not isinstance(body, bytes | bytearray | memoryview):
                raise InvalidResponse(f"response body must be bytes, got {type(body).__name__}")
            body = bytes(body)
        size = len(body)
        length_left = self.length_left
        if length_left >= 0:
            if size > length_left and not self.head_only:
                raise InvalidResponse("response body is longer than its Content-Length")
            self.length_left = length_left - size
        self.write_body(body, more_body)
        self.bytes_sent += size
        if not more_body:
            self.finish_response()

    def finish_response(self) -> None:
        """The response is complete: the access log, the metrics, then the framing."""
        self.complete = True
        if self.length_left > 0 and not self.head_only:
            error_logger.error("response body is shorter than its Content-Length; closing")
        if self.waiter is not None:
            self._wake()
        state = self.state
        if state.access_log is not None:
            duration = state.duration_clock() - self.start_time
            state.access_log.log(self.scope, self.status, self.bytes_sent, duration)
        metrics = state.metrics
        if metrics is not None:
            duration = state.duration_clock() - self.start_time
            metrics.response_complete(self.status, self.bytes_sent, self.received, duration)
        self.response_done()

    # -- errors ----------------------------------------------------------------------------

    def _app_failed(self, exc: BaseException) -> None:
        if self.disconnected:
            # The client left; what the app raised on the way out is not worth a traceback.
            error_logger.debug("ASGI app raised after the client disconnected: %r", exc)
            return
        if isinstance(exc, InvalidResponse):
            error_logger.error("Invalid response from ASGI app: %s", exc)
        else:
            error_logger.error("Exception in ASGI application", exc_info=exc)
        if not self.started:
            self._respond_500()
        elif not self.complete:
            self.abort()  # the head is out: ending it abruptly is the only honest way to fail

    def _respond_500(self) -> None:
        self.respond_error(500, b"Internal Server Error")

    def respond_error(self, status: int, body: bytes) -> None:
        """Answer in the app's place, before it started a response."""
        self.started = False
        self.head_written = False
        self.start_response(status, _ERROR_HEADERS)
        self.send_body(body, False)

    # -- the framing: overridden per HTTP version (see the module docstring) ---------------

    def write_start(self) -> None:
        raise NotImplementedError

    def write_body(self, body: bytes, more_body: object) -> None:
        raise NotImplementedError

    def write_informational(self, status: int, block: HeaderBlock) -> None:
        raise NotImplementedError

    def trailers_possible(self) -> bool:
        return False

    def write_trailers(self, blocks: list[HeaderBlock]) -> None:
        raise NotImplementedError

    def write_file(self, fd: int, offset: int, count: int, more_body: bool) -> Awaitable[int]:
        raise NotImplementedError

    def write_pressure(self) -> Awaitable[None]:
        raise NotImplementedError

    def body_consumed(self, size: int) -> None:
        pass

    def ask_for_body(self) -> None:
        pass

    def response_done(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


async def _service_unavailable(scope: Any, receive: Any, send: Any) -> None:
    """The app in the app's place when --limit-concurrency is reached."""
    await send({"type": "http.response.start", "status": 503, "headers": _ERROR_HEADERS})
    await send({"type": "http.response.body", "body": b"Service Unavailable"})


# -- the scope, for every HTTP version ----------------------------------------------------------


def connection_parts(
    state: ServerState, transport: asyncio.BaseTransport, addresses: tuple[Any, Any] | None
) -> tuple[tuple[str, int | None] | None, tuple[str, int] | None, str, dict[str, Any], Any]:
    """What every request of a connection shares: (server, client, scheme, extensions,
    trusted proxy or None).

    `addresses` is (client, server) from a PROXY protocol header, or None for the socket's
    own. On TLS the scheme is https and the extensions are the connection's own, with `tls`
    (built once per connection); else the server's. The proxy is set only when the peer is
    one we trust, so its forwarding headers are read (`build_scope`).
    """
    server: tuple[str, int | None] | None
    if addresses is None:
        server = _local_address(transport.get_extra_info("sockname"))
        client = _address(transport.get_extra_info("peername"))
    else:
        client, server = addresses
    extensions: dict[str, Any] = state.http_scope_template["extensions"]
    scheme = "http"
    if transport.get_extra_info("sslcontext") is not None:
        scheme = "https"
        tls = state.tls_info
        if tls is not None:
            extensions = dict(extensions)
            extensions["tls"] = tls.extension(transport.get_extra_info("ssl_object"))
    trusted = state.trusted_proxies
    proxy: TrustedProxies | None = None
    # A peer on a Unix socket has no address (client None): it is trusted as the list says.
    if trusted is not None and trusted.trusts_peer(client[0] if client else ""):
        proxy = trusted
    return server, client, scheme, extensions, proxy


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


def _local_address(value: Any) -> tuple[str, int | None] | None:
    """The listener a connection arrived on: (host, port), or (path, None) on a Unix socket."""
    if isinstance(value, str):
        return (value, None) if value else None
    return _address(value)


def build_scope(
    state: ServerState,
    http_version: str,
    method: str,
    raw_path: bytes,
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    server: tuple[str, int | None] | None,
    client: tuple[str, int] | None,
    scheme: str,
    extensions: dict[str, Any],
    proxy: TrustedProxies | None,
) -> dict[str, Any]:
    """The HTTP scope of one request, whichever version carried it.

    `raw_path` and `query` are the target already split at its `?` (HTTP/1.1: from the
    request line; HTTP/2: from `:path`); the path is percent-decoded and `root_path` put in
    front. `proxy` is the trusted proxy whose forwarding headers apply (`connection_parts`),
    or None: pass it only when such a header arrived, as parsing them costs. Each request gets
    its own `asgi`, `state` and `extensions` (an app may change its scope).
    """
    try:
        path = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise RequestRejected(BAD_REQUEST, "non-ASCII byte in the request target") from None
    if "%" in path:
        path = unquote(path)
    root_path = state.root_path
    if root_path:
        path = root_path + path
        raw_path = root_path.encode("latin-1") + raw_path
    scope = state.http_scope_template.copy()
    scope["server"] = server
    scope["client"] = client
    # The template holds the common version, scheme, method and an empty query string
    # (`http_scope_template`): only a value that differs is stored.
    if scheme != "http":
        scope["scheme"] = scheme
    scope["asgi"] = _ASGI.copy()  # per request: an app may change its scope
    if http_version != "1.1":
        scope["http_version"] = http_version
    if method != "GET":
        scope["method"] = method
    scope["path"] = path
    scope["raw_path"] = raw_path
    if len(query) > 0:
        scope["query_string"] = query
    scope["headers"] = headers
    scope["state"] = state.lifespan_state.copy()
    # Per request, as "asgi" above: a middleware that adds an extension for its own request
    # must not add it to every later request.
    scope["extensions"] = extensions.copy()
    if proxy is not None:
        scope["client"], scope["scheme"] = apply_forwarded_headers(proxy, headers, client, scheme)
    return scope
