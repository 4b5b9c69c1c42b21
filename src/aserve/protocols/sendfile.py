"""Copying a file's bytes to a connection's transport: sendfile, or reads under flow control.

What an HTTP/1.1 response body from a file (pathsend, zero-copy send: protocols/extensions.py)
needs below its framing. The bytes go out with `os.sendfile` on the connection's socket,
straight from the page cache, once everything written before them has left the transport.
Where the transport cannot take that (TLS encrypts in user space; a transport without a
socket), the file is read in chunks on the default executor and written through the transport
under its flow control. Plain Python: these are coroutines (see `protocols/body.py`).
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import Any, Protocol

from aserve.asgi import ClientDisconnected

# os.sendfile, looked up here so that a test can count or refuse the calls.
_sendfile: Any = getattr(os, "sendfile", None)

# Bytes per os.sendfile call; the event loop gets a turn between calls, so a fast client
# downloading a large file does not hold up the other connections.
SENDFILE_CHUNK = 1024 * 1024
# Bytes per read where the transport cannot take sendfile.
READ_CHUNK = 256 * 1024

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


class Connection(Protocol):
    """What the copy needs of a connection (`protocols.http.HttpProtocol` has it); typed
    structurally so that this module does not import the one that imports it."""

    transport: Any
    loop: asyncio.AbstractEventLoop
    flow: Any

    def write(self, data: bytes) -> None: ...

    def _flush(self) -> None: ...

    def abort(self) -> None: ...


class Sender(Protocol):
    """What the copy needs of the request cycle: whether the client left, and its `ext`
    (protocols/extensions.py's `Extended`), whose `waiter` a lost connection wakes."""

    disconnected: bool
    ext: Any


async def copy_file(
    conn: Connection, cycle: Sender, prefix: bytes, fd: int, offset: int, count: int, tail: bytes
) -> int:
    """Write `prefix`, then `count` bytes of `fd` from `offset`, then `tail` if all of them
    went out (framing bytes around the file's); returns the file bytes sent."""
    if prefix:
        conn.write(prefix)
    sent = 0
    if count:
        conn._flush()  # what an eager start has batched goes first
        sock_fd = _socket_fd(conn.transport)
        if sock_fd is not None:
            sent = await _copy_with_sendfile(conn, cycle, sock_fd, fd, offset, count)
        if sock_fd is None or sent < 0:  # no socket, or refused for these descriptors
            sent = await _copy_by_reading(conn, cycle, fd, offset, count)
    if sent == count and tail:
        conn.write(tail)
    return sent


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
    conn: Connection, cycle: Sender, sock_fd: int, fd: int, offset: int, count: int
) -> int:
    """sendfile on the socket: returns the bytes sent, or -1 if sendfile cannot do it."""
    transport = conn.transport
    loop = conn.loop
    await _transport_empty(conn, cycle)
    ext = cycle.ext  # set by the caller, so that a lost connection wakes a waiting send
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


async def _transport_empty(conn: Connection, cycle: Sender) -> None:
    """Wait until the transport has written everything it holds: sendfile writes to the
    socket directly, and must not overtake it.

    The transport's high-water mark goes to 0 meanwhile, so it pauses the protocol while it
    holds anything and resumes it once empty; `WriteFlow` turns that into something to await.
    """
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


async def _copy_by_reading(
    conn: Connection, cycle: Sender, fd: int, offset: int, count: int
) -> int:
    """The file through the transport, read off the event loop, under its flow control."""
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
