"""The ASGI HTTP extensions: path send, zero-copy send, trailers and early hints.

`RequestCycle.__call__` handles the plain `http.response.start` and `http.response.body`
itself and hands everything else here: other message types, and every message of a request
that sent `TE: trailers` (see `Extended`). The common path therefore pays nothing for them,
and this module stays plain Python: it is not on the per-request path, and the file send is a
coroutine, which must not be compiled (see `protocols/body.py`).

What each message means is decided here, on the version-free cycle (protocols/cycle.py); the
bytes are its framing's (`write_informational`, `write_trailers`, `write_file`): HTTP/1.1's
103 and chunked trailers, sendfile on its socket (protocols/sendfile.py), HTTP/2's frames.
"""

from __future__ import annotations

import asyncio
import os
import stat
from typing import TYPE_CHECKING, Any

from aserve.asgi import InvalidResponse
from aserve.protocols.headers import HeaderBlock, encode_headers

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from aserve.protocols.cycle import RequestCycle

EARLY_HINTS = 103


class Extended:
    """What a request cycle keeps for the extensions, on `RequestCycle.ext`.

    While a cycle has one, all its messages come here instead of the plain path: a request
    with `TE: trailers` gets one when it is parsed, so that `http.response.start` can say
    `trailers: True`; a file send sets one so a lost connection wakes it (`lost`).
    """

    __slots__ = ("body_ended", "te_trailers", "trailers", "waiter")

    def __init__(self, te_trailers: bool = False) -> None:
        self.te_trailers = te_trailers  # the client accepts trailers (`TE: trailers`)
        self.trailers: list[HeaderBlock] | None = None  # the fields, when they will be sent
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
    return cycle.write_pressure()


# -- early hints -----------------------------------------------------------------------------


def _early_hint(cycle: RequestCycle, event: dict[str, Any]) -> None:
    """A 103 with the app's `Link` headers, while the final head has not gone out yet.

    After the head is out there is nothing left to hint at, so the message is dropped (and
    the framing drops it for an HTTP/1.0 client, which expects no 1xx answer).
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
    if cycle.head_written or cycle.complete or not fields:
        return
    cycle.write_informational(EARLY_HINTS, block)


# -- trailers --------------------------------------------------------------------------------


def _start(cycle: RequestCycle, event: dict[str, Any]) -> None:
    """`http.response.start` of a request that accepts trailers."""
    cycle.start_response(event["status"], event.get("headers", ()))
    ext = cycle.ext
    # Not without a body; and the framing may not be able to (HTTP/1.1: chunks only).
    if (
        event.get("trailers")
        and ext is not None
        and ext.te_trailers
        and not cycle.head_only
        and cycle.trailers_possible()
    ):
        ext.trailers = []
    else:
        cycle.ext = None  # nothing to add: the plain path serves the rest


def _body(cycle: RequestCycle, event: dict[str, Any]) -> None:
    ext = cycle.ext
    if ext is None or ext.trailers is None:
        cycle.send_body(event.get("body", b""), event.get("more_body", False))
        return
    if ext.body_ended:
        raise InvalidResponse(
            "'http.response.body' after the last one; expected 'http.response.trailers'"
        )
    cycle.send_body(event.get("body", b""), True)  # the end of the body waits for the trailers
    if not event.get("more_body", False):
        ext.body_ended = True


def _trailers(cycle: RequestCycle, event: dict[str, Any]) -> None:
    """Collect trailer fields; the last message (`more_trailers` false) ends the response."""
    ext = cycle.ext
    block = encode_headers(event.get("headers", ()))
    if ext is None or ext.trailers is None:
        # The client did not ask for trailers (or the response cannot carry them): the body
        # ends here, and these and later trailers are dropped.
        cycle.send_body(b"", False)
        return
    if not cycle.head_written:
        cycle.send_body(b"", True)  # trailers and no body (a gRPC-style error): head first
    ext.body_ended = True
    ext.trailers.append(block)
    if event.get("more_trailers", False):
        return
    blocks = ext.trailers
    ext.trailers = None
    cycle.write_trailers(blocks)
    cycle.finish_response()


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
    if cycle.head_only:
        expected = 0  # the head says `count` (as for GET); no body follows it
    elif count > cycle.length_left >= 0:
        raise InvalidResponse("response body is longer than its Content-Length")
    else:
        expected = count
    if ext is None:
        ext = cycle.ext = Extended()  # so that a lost connection wakes a waiting send
    sent = await cycle.write_file(fd, offset, count, more_body)
    if cycle.length_left >= 0:
        cycle.length_left -= sent
    cycle.bytes_sent += sent
    if sent < expected:
        # The file is shorter than it said: the framing already promised more.
        raise InvalidResponse(f"the file ended after {sent} of {expected} bytes")
    if final:
        if with_trailers:
            ext.body_ended = True
        else:
            cycle.finish_response()
    return sent
