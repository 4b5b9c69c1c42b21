"""Validating and encoding response headers an app hands us.

Every name must be an HTTP token and no value may hold a control character (CR, LF and NUL
among them): otherwise an app that copies user input into a header would let that user inject
headers or whole responses. Validated blocks are cached by their exact content, because most
apps send the same few header lists over and over.

What an app hands us is typed `Any`: this module may run compiled (setup.py), and compiled
code checks annotated argument types, which would turn an app's odd value into a TypeError
instead of the InvalidResponse that names it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from aserve.asgi import InvalidResponse
from aserve.status import REASON_PHRASES

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS: Final = re.compile(rb"[0-9]+")

_CACHE_LIMIT: Final = 512

# The status line of every code with a reason phrase (aserve/status.py: the same on every
# Python); any other code gets `status_line`'s empty phrase.
STATUS_LINES: Final[dict[int, bytes]] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, phrase.encode("ascii"))
    for code, phrase in REASON_PHRASES.items()
}


def status_code(status: Any) -> int:
    """An app's status as an int from 100 to 999; int subclasses (HTTPStatus) are accepted."""
    if type(status) is not int:
        if not isinstance(status, int) or isinstance(status, bool):
            raise InvalidResponse(f"invalid HTTP status {status!r}")
        status = int(status)
    if not 100 <= status <= 999:
        raise InvalidResponse(f"invalid HTTP status {status!r}")
    code: int = status
    return code


def status_line(status: Any) -> bytes:
    code = status_code(status)
    return STATUS_LINES.get(code) or b"HTTP/1.1 %d \r\n" % code


class HeaderBlock:
    """An app's header list, validated and encoded, plus what framing needs to know of it."""

    __slots__ = (
        "chunked",
        "close",
        "content_length",
        "data",
        "h2",
        "has_date",
        "has_server",
    )

    def __init__(self) -> None:
        self.data = b""
        self.content_length = -1
        self.chunked = False
        self.close = False
        self.has_server = False
        self.has_date = False
        self.h2: bytes | None = None  # the HPACK encoding, made by HTTP/2 when first needed


_cache: Final[dict[tuple[object, ...], HeaderBlock]] = {}


class _Last:
    """The header list encoded last and its block: most apps answer most requests with the
    same list, and one list comparison (items compared as the dict cache's key lookup would)
    costs less than a tuple of it, its hash and a lookup, when the list is a new object with a
    new value or two."""

    __slots__ = ("block", "items")

    def __init__(self) -> None:
        self.items: list[Any] = []  # a copy: the app may change its own list afterwards
        self.block: HeaderBlock | None = None


_last: Final = _Last()


def encode_headers(headers: Any) -> HeaderBlock:
    if type(headers) is list and headers == _last.items:
        found = _last.block
        if found is not None:
            return found
    try:
        key = tuple(headers)
        block = _cache.get(key)
    except TypeError:  # lists inside: unhashable, so not cacheable
        return _encode(headers)
    if block is None:
        block = _encode(key)
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        _cache[key] = block
    _last.items = list(key)
    _last.block = block
    return block


def _encode(headers: Iterable[Any]) -> HeaderBlock:
    block = HeaderBlock()
    lines = []
    for item in headers:
        try:
            name, value = item
        except (TypeError, ValueError):
            raise InvalidResponse(f"response header {item!r} is not a (name, value) pair") from None
        if type(name) is not bytes or type(value) is not bytes:
            if not isinstance(name, bytes | bytearray) or not isinstance(value, bytes | bytearray):
                raise InvalidResponse(f"response header {item!r} must be a pair of byte strings")
            name, value = bytes(name), bytes(value)
        if not _TOKEN.fullmatch(name):
            raise InvalidResponse(f"invalid response header name {name!r}")
        if _CONTROL.search(value):
            raise InvalidResponse(
                f"response header {name.decode('latin-1')!r} has a control character in its value"
            )
        lower = name.lower()
        if lower == b"content-length":
            if not _DIGITS.fullmatch(value) or (
                block.content_length >= 0 and block.content_length != int(value)
            ):
                raise InvalidResponse(f"invalid Content-Length {value!r}")
            block.content_length = int(value)
        elif lower == b"transfer-encoding":
            if value.lower().strip() != b"chunked":
                raise InvalidResponse(f"unsupported Transfer-Encoding {value!r}")
            block.chunked = True
            continue  # the server adds its own when it frames the body as chunks
        elif lower == b"connection":
            tokens = {token.strip() for token in value.lower().split(b",")}
            if b"close" in tokens:
                block.close = True
            continue  # hop-by-hop: the server writes the one that matches what it will do
        elif lower == b"server":
            block.has_server = True
        elif lower == b"date":
            block.has_date = True
        lines.append(b"%s: %s\r\n" % (name, value))
    if block.chunked and block.content_length >= 0:
        raise InvalidResponse("response has both Content-Length and Transfer-Encoding")
    block.data = b"".join(lines)
    return block
