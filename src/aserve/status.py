"""HTTP status codes and their reason phrases: one fixed table, the same on every Python.

Python's `http.HTTPStatus` follows whichever RFC its release knew: 3.13 says "Content Too
Large" and "Unprocessable Content" (RFC 9110), 3.11 still "Request Entity Too Large" and
"Unprocessable Entity". A server's answers should not depend on the interpreter, so the status
lines (protocols/headers.py), the access log and the WebSocket handshake's refusals read this
table instead. It holds RFC 9110's codes with its phrases and the other codes of the IANA
registry; any other code gets an empty phrase (RFC 9112, 4: the reason phrase may be empty).
Imports nothing.
"""

from __future__ import annotations

from typing import Final

REASON_PHRASES: Final[dict[int, str]] = {
    100: "Continue",
    101: "Switching Protocols",
    102: "Processing",  # RFC 2518
    103: "Early Hints",  # RFC 8297
    200: "OK",
    201: "Created",
    202: "Accepted",
    203: "Non-Authoritative Information",
    204: "No Content",
    205: "Reset Content",
    206: "Partial Content",
    207: "Multi-Status",  # RFC 4918
    208: "Already Reported",  # RFC 5842
    226: "IM Used",  # RFC 3229
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    305: "Use Proxy",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    411: "Length Required",
    412: "Precondition Failed",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    417: "Expectation Failed",
    421: "Misdirected Request",
    422: "Unprocessable Content",
    423: "Locked",  # RFC 4918
    424: "Failed Dependency",  # RFC 4918
    425: "Too Early",  # RFC 8470
    426: "Upgrade Required",
    428: "Precondition Required",  # RFC 6585
    429: "Too Many Requests",  # RFC 6585
    431: "Request Header Fields Too Large",  # RFC 6585
    451: "Unavailable For Legal Reasons",  # RFC 7725
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
    506: "Variant Also Negotiates",  # RFC 2295
    507: "Insufficient Storage",  # RFC 4918
    508: "Loop Detected",  # RFC 5842
    510: "Not Extended",  # RFC 2774 (historic)
    511: "Network Authentication Required",  # RFC 6585
}


def reason_phrase(status: int) -> str:
    """The reason phrase of `status`, or "" for a code the table does not hold."""
    return REASON_PHRASES.get(status, "")
