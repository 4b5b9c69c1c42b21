"""RFC 7239 `Forwarded` beside X-Forwarded-*, and proxy headers through a Unix socket."""

from __future__ import annotations

import json
import socket

import pytest

from aserve.proxy import apply_forwarded_headers, parse_forwarded, parse_trusted
from conftest import read_response, serve
from test_proxy_protocol import V1_TCP4

TRUSTED = parse_trusted("127.0.0.1,10.0.0.0/8")
PEER = ("127.0.0.1", 5000)


def forwarded(value: str, scheme: str = "http", peer=PEER, trusted=TRUSTED):
    return apply_forwarded_headers(trusted, [(b"forwarded", value.encode())], peer, scheme)


def test_parse_forwarded():
    assert parse_forwarded("for=192.0.2.60;proto=http;by=203.0.113.43") == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}
    ]
    assert parse_forwarded('For="[2001:db8:cafe::17]:4711", for=_hidden ;PROTO=https') == [
        {"for": "[2001:db8:cafe::17]:4711"},
        {"for": "_hidden", "proto": "https"},
    ]
    assert parse_forwarded(r'for="a\"b"') == [{"for": 'a"b'}]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "for",
        "for=",
        'for="unclosed',
        "for=1.2.3.4;for=5.6.7.8",
        "for=1.2.3.4 x",
        "=x",
        "for=192.0.2.1:80",
    ],
)
def test_malformed_forwarded_is_ignored(value):
    assert parse_forwarded(value) == []
    assert forwarded(value) == (PEER, "http")


def test_forwarded_client_and_scheme():
    assert forwarded("for=192.0.2.60;proto=https") == (("192.0.2.60", 0), "https")
    assert forwarded('for="192.0.2.60:8080"') == (("192.0.2.60", 8080), "http")
    assert forwarded('for="[2001:db8::1]:4711";proto=https', "ws") == (("2001:db8::1", 4711), "wss")
    assert forwarded('for="[2001:db8::1]"') == (("2001:db8::1", 0), "http")
    # Right-most hop that is not our proxy; its proto, not the last element's.
    assert forwarded("for=198.51.100.1;proto=https, for=203.0.113.9, for=10.0.0.2;proto=http") == (
        ("203.0.113.9", 0),
        "http",
    )
    assert forwarded("for=198.51.100.1;proto=https, for=10.0.0.2;proto=http") == (
        ("198.51.100.1", 0),
        "https",
    )
    # Every hop trusted: the left-most is the client.
    assert forwarded("for=10.0.0.1, for=10.0.0.2") == (("10.0.0.1", 0), "http")
    # Obfuscated identifiers are reported as they are; "unknown" is no address at all.
    assert forwarded('for="_gazonk:_port"') == (("_gazonk:_port", 0), "http")
    assert forwarded("for=unknown;proto=https") == (None, "https")
    assert forwarded("proto=https") == (PEER, "http")  # no for=: nothing to believe
    assert forwarded("for=192.0.2.60;proto=gopher") == (("192.0.2.60", 0), "http")


def test_forwarded_from_an_untrusted_peer_is_ignored():
    assert forwarded("for=192.0.2.60;proto=https", peer=("8.8.8.8", 1)) == (("8.8.8.8", 1), "http")


def test_x_forwarded_headers_win_over_forwarded():
    headers = [(b"forwarded", b"for=192.0.2.1;proto=https"), (b"x-forwarded-for", b"203.0.113.5")]
    assert apply_forwarded_headers(TRUSTED, headers, PEER, "http") == (("203.0.113.5", 0), "http")
    headers = [(b"forwarded", b"for=192.0.2.1"), (b"x-forwarded-proto", b"https")]
    assert apply_forwarded_headers(TRUSTED, headers, PEER, "http") == (PEER, "https")
    # Several Forwarded header lines are one list.
    headers = [(b"forwarded", b"for=192.0.2.1"), (b"forwarded", b"for=203.0.113.5")]
    assert apply_forwarded_headers(TRUSTED, headers, PEER, "http") == (("203.0.113.5", 0), "http")


def test_unix_socket_peer_trust_follows_the_list():
    assert parse_trusted("*").unix
    assert parse_trusted("127.0.0.1").unix
    assert parse_trusted("::1, 10.0.0.1").unix
    assert parse_trusted("unix:").unix
    assert parse_trusted("10.0.0.1,/run/app.sock").unix  # a socket path, uvicorn's literal
    assert not parse_trusted("10.0.0.1").unix
    assert not parse_trusted("").unix


async def who(scope, receive, send):
    body = json.dumps({"client": scope["client"], "scheme": scope["scheme"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_forwarded_over_a_live_connection(loop_name):
    with serve(who, loop=loop_name) as live, live.connect() as sock:
        sock.sendall(
            b'GET / HTTP/1.1\r\nHost: x\r\nForwarded: for="[2001:db8::1]:4711";proto=https\r\n\r\n'
        )
        answer = json.loads(read_response(sock).partition(b"\r\n\r\n")[2])
    assert answer == {"client": ["2001:db8::1", 4711], "scheme": "https"}


def _over_unix(path: str, data: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(data)
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 200 "), response
    return json.loads(response.partition(b"\r\n\r\n")[2])


XFF = (
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.5\r\nX-Forwarded-Proto: https\r\n\r\n"
)


@pytest.mark.parametrize(
    ("allow", "trusted"),
    [
        (None, True),
        ("*", True),
        ("unix:", True),
        ("10.0.0.1,/x/app.sock", True),
        ("10.0.0.1", False),
    ],
)
def test_proxy_headers_over_a_unix_socket(tmp_path, loop_name, allow, trusted):
    """nginx in front over a Unix socket: its X-Forwarded-* are believed as the list says."""
    path = str(tmp_path / "app.sock")
    options = {} if allow is None else {"forwarded_allow_ips": allow}
    with serve(who, loop=loop_name, uds=path, **options):
        answer = _over_unix(path, XFF)
    if trusted:
        assert answer == {"client": ["203.0.113.5", 0], "scheme": "https"}
    else:
        assert answer == {"client": None, "scheme": "http"}


def test_no_proxy_headers_over_a_unix_socket(tmp_path):
    path = str(tmp_path / "app.sock")
    with serve(who, uds=path, proxy_headers=False, forwarded_allow_ips="*"):
        assert _over_unix(path, XFF) == {"client": None, "scheme": "http"}


def test_proxy_protocol_over_a_unix_socket(tmp_path):
    path = str(tmp_path / "app.sock")
    with serve(who, uds=path, proxy_protocol=True):
        answer = _over_unix(path, V1_TCP4 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer["client"] == ["203.0.113.7", 56324]
