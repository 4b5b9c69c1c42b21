"""Refusing a request: which status a malformed, oversized or late request gets, and its bytes.

Kept out of the compiled module (`http`): mypyc cannot compile a subclass of an exception
class, and nothing here runs for a request that is accepted.
"""

from __future__ import annotations

import httptools

from aserve.logging import error_logger
from aserve.protocols.headers import STATUS_LINES

BAD_REQUEST = 400
REQUEST_TIMEOUT = 408
CONTENT_TOO_LARGE = 413
URI_TOO_LONG = 414
FIELDS_TOO_LARGE = 431
NOT_IMPLEMENTED = 501
SERVICE_UNAVAILABLE = 503
VERSION_NOT_SUPPORTED = 505


class RequestRejected(httptools.HttpParserError):
    """Raised from a parser callback: the request breaks a rule or a limit of ours.

    A subclass of httptools' error so that, raised from a callback, httptools stops parsing and
    reports it as the cause of its "callback error".
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class EndOfRequests(httptools.HttpParserError):
    """Raised from a parser callback to stop parsing after the last request a connection
    reads (graceful shutdown came while its body was arriving): nothing to answer."""


def classify(exc: Exception) -> tuple[int, str]:
    """The status and one-line reason for an error `feed_data` raised."""
    if isinstance(exc, httptools.HttpParserCallbackError):
        cause = exc.__context__
        if isinstance(cause, RequestRejected):
            return cause.status, str(cause)
        if isinstance(cause, httptools.HttpParserError):
            return BAD_REQUEST, str(cause)
        # Anything else is a bug of ours: logged in full; the client only learns that its
        # request could not be processed.
        error_logger.error("Exception while parsing a request head", exc_info=cause)
        return BAD_REQUEST, "the request head could not be processed"
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httptools.HttpParserInvalidMethodError):
        # llhttp knows the registered methods only; what it refuses is far more often not HTTP
        # at all (a TLS hello, a PROXY line) than a method we could implement: 400, not 501.
        return BAD_REQUEST, "invalid or unknown method"
    if reason in ("Invalid HTTP version", "Pause on PRI/Upgrade"):
        return VERSION_NOT_SUPPORTED, "HTTP version not supported"  # HTTP/1.2, 3.0, h2 preface
    return BAD_REQUEST, reason


def error_response(status: int, reason: str, default_headers: bytes) -> bytes:
    """The whole response for a refused request: a one-line text body, then we close."""
    message = reason.strip().rstrip(".") or "malformed request"
    if status == REQUEST_TIMEOUT:
        text = f"Request timeout: {message}.\n"
    elif status == SERVICE_UNAVAILABLE:
        text = "Service Unavailable\n"
    else:
        text = f"Invalid HTTP request: {message}.\n"
    body = text.encode("ascii", "replace")
    line = STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
    return (
        b"%scontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n%s"
        % (
            line,
            len(body),
            default_headers,
        )
        + b"connection: close\r\n\r\n"
        + body
    )
