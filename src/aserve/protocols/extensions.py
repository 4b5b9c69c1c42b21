"""The ASGI HTTP extensions: path send, zero-copy send, trailers and early hints.

`RequestCycle.__call__` handles the plain `http.response.start` and `http.response.body`
itself and hands everything else here: other message types, and every message of a request
that sent `TE: trailers` (see `Extended`). The common path therefore pays nothing for them,
and this module stays plain Python: it is not on the per-request path, and the file copy is a
coroutine, which must not be compiled (see `protocols/body.py`).

Files go out with `os.sendfile` on the connection's socket, straight from the page cache,
once everything written before them has left the transport. Where the transport cannot take
that (TLS encrypts in user space; a transport without a socket), the file is read in chunks
on the default executor and written through the transport under its flow control.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from typing import TYPE_CHECKING, Any

from aserve.asgi import ClientDisconnected, InvalidResponse
from aserve.flow_control import READY
from aserve.protocols.headers import encode_headers

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from aserve.protocols.http import RequestCycle

# os.sendfile, looked up here so that a test can count or refuse the calls.
_sendfile: Any = getattr(os, "sendfile", None)

# Bytes per os.sendfile call; the event loop gets a turn between calls, so a fast client
# downloading a large file does not hold up the other connections.
SENDFILE_CHUNK = 1024 * 1024
# Bytes per read where the transport cannot take sendfile.
READ_CHUNK = 256 * 1024

_EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\n"
_LAST_CHUNK = b"0\r\n"
# sendfile refused for this pair of descriptors: copy by reading instead.
_SENDFILE_UNSUPPORTED = frozenset(
    getattr(errno, name)
    for name in ("EINVAL", "ENOSYS", "ENOTSOCK", "EOPNOTSUPP", "ENOTSUP", "EOVERFLOW")
    if hasattr(errno, name)
)
# The peer is gone.
_CONNECTION_LOST = frozenset(
    (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.EBADF)
)


class Extended:
    """What a request cycle keeps for the extensions, on `RequestCycle.ext`.

    While a cycle has one, all its messages come here instead of the plain path: a request
    with `TE: trailers` gets one when it is parsed, so that `http.response.start` can say
    `trailers: True`; a file send sets one so a lost connection wakes it (`lost`).
    """

    __slots__ = ("body_ended", "te_trailers", "trailers", "waiter")

    def __init__(self, te_trailers: bool = False) -> None:
        self.te_trailers = te_trailers  # the client accepts trailers (`TE: trailers`)
        self.trailers: list[bytes] | None = None  # encoded fields, when they will be sent
        self.body_ended = False  # the last body message is in; trailers are next
        self.waiter: asyncio.Future[None] | None = None  # a file send waiting for the socket

    def lost(self) -> None:
        """The connection is gone (from `RequestCycle.lose_connection`)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def accepts_trailers(te: bytes) -> Extended | None:
    """An `Extended` for a request whose TE header lists `trailers`, else None."""
    for coding in te.lower().split(b","):
        if coding.split(b";", 1)[0].strip() == b"trailers":
            return Extended(te_trailers=True)
    return None


def send_extension(cycle: RequestCycle, event: dict[str, Any]) -> Awaitable[None]:
    """`send` for every message the plain path does not take (see the module docstring)."""
    kind = event["type"]
    if kind == "http.response.early_hint":
        _early_hint(cycle, event)
    elif not cycle.started:
        if kind != "http.response.start":
            raise InvalidResponse(f"expected ASGI message 'http.response.start', got {kind!r}")
        _start(cycle, event)
    elif not cycle.complete:
        if kind == "http.response.body":
            _body(cycle, event)
        elif kind == "http.response.pathsend":
            return _pathsend(cycle, event)
        elif kind == "http.response.zerocopysend":
            return _zerocopysend(cycle, event)
        elif kind == "http.response.trailers":
            _trailers(cycle, event)
        else:
            raise InvalidResponse(f"expected ASGI message 'http.response.body', got {kind!r}")
    elif kind != "http.response.trailers":
        raise InvalidResponse(f"unexpected ASGI message {kind!r} after the response was complete")
    # (Trailers for a complete response: the client did not ask for them, so they are
    # dropped, as the extension says.)
    flow = cycle.conn.flow
    return flow.drained() if flow.paused else READY


# -- early hints -----------------------------------------------------------------------------


def _early_hint(cycle: RequestCycle, event: dict[str, Any]) -> None:
    """A 103 with the app's `Link` headers, while the final head has not gone out yet.

    Never to an HTTP/1.0 client (RFC 9110, 15.2: it does not expect 1xx answers); after the
    head is out there is nothing left to hint at, so the message is dropped.
    """
    links = event.get("links", ())
    if isinstance(links, bytes | str):
        raise InvalidResponse("'http.response.early_hint' needs 'links' as a list of bytes")
    try:
        fields = [(b"link", link) for link in links]
    except TypeError:
        raise InvalidResponse(
            "'http.response.early_hint' needs 'links' as a list of bytes"
        ) from None
    block = encode_headers(fields)  # refuses CR, LF and the like in a link
    if cycle.http10 or cycle.head_written or cycle.complete or not fields:
        return
    cycle.conn.write(b"%s%s\r\n" % (_EARLY_HINTS, block.data))


# -- trailers --------------------------------------------------------------------------------


def _start(cycle: RequestCycle, event: dict[str, Any]) -> None:
    """`http.response.start` of a request that accepts trailers."""
    cycle._start(event["status"], event.get("headers", ()))
    ext = cycle.ext
    # Trailers need a chunked body: not with a Content-Length or without a body.
    if (
        event.get("trailers")
        and ext is not None
        and ext.te_trailers
        and not cycle.head_only
        and not cycle.http10
        and cycle._block.content_length < 0
    ):
        ext.trailers = []
    else:
        cycle.ext = None  # nothing to add: the plain path serves the rest


def _body(cycle: RequestCycle, event: dict[str, Any]) -> None:
    ext = cycle.ext
    if ext is None or ext.trailers is None:
        cycle._body(event.get("body", b""), event.get("more_body", False))
        return
    if ext.body_ended:
        raise InvalidResponse(
            "'http.response.body' after the last one; expected 'http.response.trailers'"
        )
    cycle._body(event.get("body", b""), True)  # the end of the body waits for the trailers
    if not event.get("more_body", False):
        ext.body_ended = True


def _trailers(cycle: RequestCycle, event: dict[str, Any]) -> None:
    """Collect trailer fields; the last message (`more_trailers` false) ends the response."""
    ext = cycle.ext
    block = encode_headers(event.get("headers", ()))
    if ext is None or ext.trailers is None:
        # The client did not ask for trailers (or the response cannot carry them): the body
        # ends here, and these and later trailers are dropped.
        cycle._body(b"", False)
        return
    if not cycle.head_written:
        cycle._body(b"", True)  # trailers and no body (a gRPC-style error): head first
    ext.body_ended = True
    ext.trailers.append(block.data)
    if event.get("more_trailers", False):
        return
    cycle.conn.write(b"%s%s\r\n" % (_LAST_CHUNK, b"".join(ext.trailers)))
    ext.trailers = None
    cycle._finish()


# -- files -----------------------------------------------------------------------------------


def _pathsend(cycle: RequestCycle, event: dict[str, Any]) -> Awaitable[None]:
    path = event.get("path")
    if not isinstance(path, str):
        raise InvalidResponse(
            f"'http.response.pathsend' needs 'path' as a string, got {type(path).__name__}"
        )
    return _send_path(cycle, path)


async def _send_path(cycle: RequestCycle, path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InvalidResponse(f"pathsend: cannot open {path!r}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidResponse(f"pathsend: {path!r} is not a regular file")
        await _send_fd(cycle, fd, 0, info.st_size, final=True)
    finally:
        os.close(fd)


def _zerocopysend(cycle: RequestCycle, event: dict[str, Any]) -> Awaitable[None]:
    file = event.get("file")
    try:
        fd = file if type(file) is int else file.fileno()
    except (AttributeError, OSError, ValueError):
        raise InvalidResponse(
            "'http.response.zerocopysend' needs 'file' with an OS file descriptor"
        ) from None
    offset = event.get("offset")
    count = event.get("count")
    for name, value in (("offset", offset), ("count", count)):
        if value is not None and (type(value) is not int or value < 0):
            raise InvalidResponse(
                f"'http.response.zerocopysend' {name} must be an int of 0 or more, got {value!r}"
            )
    return _send_zerocopy(cycle, file, fd, offset, count, event.get("more_body", False))


async def _send_zerocopy(
    cycle: RequestCycle, file: Any, fd: int, offset: int | None, count: int | None, more: Any
) -> None:
    seekable = hasattr(file, "tell") and hasattr(file, "seek")
    if offset is not None:
        start = offset
    else:  # from the file's position, which then moves on as a read would move it
        start = file.tell() if seekable else os.lseek(fd, 0, os.SEEK_CUR)
    if count is None:
        count = max(os.fstat(fd).st_size - start, 0)
    sent = await _send_fd(cycle, fd, start, count, final=not more)
    if offset is None:
        if seekable:
            file.seek(start + sent)
        else:
            os.lseek(fd, start + sent, os.SEEK_SET)


async def _send_fd(cycle: RequestCycle, fd: int, offset: int, count: int, final: bool) -> int:
    """`count` bytes of `fd` from `offset` as (part of) the body, framed like a body message.

    `final`: the body ends with these bytes (unless trailers follow).
    """
    ext = cycle.ext
    with_trailers = ext is not None and ext.trailers is not None
    if with_trailers and ext.body_ended:
        raise InvalidResponse("a file after the last body message; expected trailers")
    more_body = with_trailers or not final
    head = b"" if cycle.head_written else cycle._head(count, more_body)
    if cycle.head_only:
        count = 0
    elif count > cycle.length_left >= 0:
        raise InvalidResponse("response body is longer than its Content-Length")
    chunked = cycle.chunked and count > 0
    if count:
        sent = await _copy(cycle, head + (b"%x\r\n" % count if chunked else b""), fd, offset, count)
    else:
        sent = 0
        if head:
            cycle.conn.write(head)
    if cycle.length_left >= 0:
        cycle.length_left -= sent
    cycle.bytes_sent += sent
    if sent < count:
        # The file is shorter than it said: the framing already promised more.
        raise InvalidResponse(f"the file ended after {sent} of {count} bytes")
    tail = b"\r\n" if chunked else b""
    if cycle.chunked and not more_body:
        tail += b"0\r\n\r\n"
    if tail:
        cycle.conn.write(tail)
    if final:
        if with_trailers:
            ext.body_ended = True
        else:
            cycle._finish()
    return sent


async def _copy(cycle: RequestCycle, prefix: bytes, fd: int, offset: int, count: int) -> int:
    """Write `prefix`, then the file's bytes: with sendfile where the transport allows."""
    conn = cycle.conn
    conn.write(prefix)
    conn._flush()  # what an eager start has batched goes first
    sent = 0
    sock_fd = _socket_fd(conn.transport)
    if sock_fd is not None:
        sent = await _copy_with_sendfile(cycle, sock_fd, fd, offset, count)
        if sent < 0:  # refused for these descriptors: read instead
            sent = 0
        else:
            return sent
    return await _copy_by_reading(cycle, fd, offset, count)


def _socket_fd(transport: Any) -> int | None:
    """The socket under `transport` if bytes written to it reach the peer as they are."""
    if _sendfile is None:
        return None
    if transport.get_extra_info("sslcontext") is not None:
        return None  # TLS: the bytes must go through the transport to be encrypted
    if transport.get_extra_info("ssl_object") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None
    try:
        fd: int = sock.fileno()
    except (AttributeError, OSError):
        return None
    return fd if fd >= 0 else None


async def _copy_with_sendfile(
    cycle: RequestCycle, sock_fd: int, fd: int, offset: int, count: int
) -> int:
    """sendfile on the socket: returns the bytes sent, or -1 if sendfile cannot do it."""
    conn = cycle.conn
    transport = conn.transport
    loop = conn.loop
    await _transport_empty(cycle)
    ext = cycle.ext
    if ext is None:
        ext = cycle.ext = Extended()  # so that a lost connection wakes a waiting send
    sent = 0
    writable_fd = -1  # a duplicate of the socket, watched for writing (the original is
    # the transport's: the loop refuses a second watcher on it)
    try:
        while sent < count:
            if cycle.disconnected or transport.is_closing():
                raise ClientDisconnected("the client closed the connection")
            size = min(count - sent, SENDFILE_CHUNK)
            try:
                done = _sendfile(sock_fd, fd, offset + sent, size)
            except (BlockingIOError, InterruptedError):
                done = -1
            except OSError as exc:
                if exc.errno in _SENDFILE_UNSUPPORTED and sent == 0:
                    return -1
                if exc.errno in _CONNECTION_LOST:
                    conn.abort()
                    raise ClientDisconnected("the client closed the connection") from exc
                raise
            if done == 0:
                break  # the end of the file, sooner than expected
            if done > 0:
                sent += done
                if done == size:
                    if sent < count:
                        await asyncio.sleep(0)  # others' turn
                    continue
            # The socket buffer is full: wait until the peer has read some.
            if writable_fd < 0:
                writable_fd = os.dup(sock_fd)
            waiter = ext.waiter = loop.create_future()
            loop.add_writer(writable_fd, _wake, waiter)
            try:
                await waiter
            finally:
                loop.remove_writer(writable_fd)
                ext.waiter = None
    finally:
        if writable_fd >= 0:
            os.close(writable_fd)
    return sent


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _transport_empty(cycle: RequestCycle) -> None:
    """Wait until the transport has written everything it holds: sendfile writes to the
    socket directly, and must not overtake it.

    The transport's high-water mark goes to 0 meanwhile, so it pauses the protocol while it
    holds anything and resumes it once empty; `WriteFlow` turns that into something to await.
    """
    conn = cycle.conn
    transport = conn.transport
    if not transport.get_write_buffer_size():
        return
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        while transport.get_write_buffer_size():
            if cycle.disconnected or transport.is_closing():
                raise ClientDisconnected("the client closed the connection")
            flow = conn.flow  # read anew: the first pause gives the connection its own
            if flow.paused:
                await flow.drained()
            else:
                await asyncio.sleep(0.001)  # a transport that does not pause its protocol
    finally:
        if not transport.is_closing():
            transport.set_write_buffer_limits(high=high, low=low)


async def _copy_by_reading(cycle: RequestCycle, fd: int, offset: int, count: int) -> int:
    """The file through the transport, read off the event loop, under its flow control."""
    conn = cycle.conn
    loop = conn.loop
    sent = 0
    while sent < count:
        data = await loop.run_in_executor(
            None, os.pread, fd, min(count - sent, READ_CHUNK), offset + sent
        )
        if not data:
            break  # the end of the file, sooner than expected
        if cycle.disconnected:
            raise ClientDisconnected("the client closed the connection")
        conn.write(data)
        sent += len(data)
        flow = conn.flow  # read anew: the first pause gives the connection its own
        if flow.paused:
            await flow.drained()
    return sent
