"""PROXY protocol v1/v2: the parser alone, the socket reader, and a live server behind it."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time

import pytest

from aserve.protocols.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyHeaderError,
    parse_header,
    read_header,
)
from aserve.server import loop_factory
from conftest import read_response, read_until_close, serve

REQUEST = b"GET /who HTTP/1.1\r\nHost: example\r\n\r\n"


def v2(command: int, family: int, payload: bytes, protocol: int = 1) -> bytes:
    """A v2 header built by hand from the specification: signature, version 2 and command,
    address family and transport, payload length (network order), payload."""
    return (
        V2_SIGNATURE
        + bytes([0x20 | command, (family << 4) | protocol])
        + struct.pack("!H", len(payload))
        + payload
    )


def v2_inet(source: str, destination: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    payload = (
        socket.inet_pton(socket.AF_INET, source)
        + socket.inet_pton(socket.AF_INET, destination)
        + struct.pack("!HH", sport, dport)
    )
    return v2(1, 1, payload + tlvs)


def v2_inet6(source: str, destination: str, sport: int, dport: int) -> bytes:
    payload = (
        socket.inet_pton(socket.AF_INET6, source)
        + socket.inet_pton(socket.AF_INET6, destination)
        + struct.pack("!HH", sport, dport)
    )
    return v2(1, 2, payload)


V1_TCP4 = b"PROXY TCP4 203.0.113.7 198.51.100.1 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 8443\r\n"
# Type 0x01 (ALPN) and 0x04 (NOOP) TLVs: skipped.
TLVS = b"\x01\x00\x02h2" + b"\x04\x00\x03\x00\x00\x00"
V2_TCP4 = v2_inet("203.0.113.7", "198.51.100.1", 56324, 443, TLVS)
V2_TCP6 = v2_inet6("2001:db8::1", "2001:db8::2", 4711, 8443)
V2_LOCAL = v2(0, 0, b"")

GOOD = [
    (V1_TCP4, ("203.0.113.7", 56324), ("198.51.100.1", 443)),
    (V1_TCP6, ("2001:db8::1", 4711), ("2001:db8::2", 8443)),
    (V2_TCP4, ("203.0.113.7", 56324), ("198.51.100.1", 443)),
    (V2_TCP6, ("2001:db8::1", 4711), ("2001:db8::2", 8443)),
]


# -- the parser -----------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "client", "server"), GOOD)
def test_parse_at_every_split(header, client, server):
    data = header + REQUEST
    for end in range(len(header)):
        assert parse_header(data[:end]) is None, end  # incomplete: every byte is header
    for end in range(len(header), len(data) + 1):
        parsed = parse_header(data[:end])
        assert parsed is not None
        assert (parsed.length, parsed.client, parsed.server, parsed.local) == (
            len(header),
            client,
            server,
            False,
        )


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        V2_LOCAL,
        v2(0, 1, bytes(12)),  # LOCAL with addresses: they are ignored
        v2(1, 0, b""),  # PROXY with AF_UNSPEC
    ],
)
def test_headers_that_keep_the_connection_addresses(header):
    parsed = parse_header(header + REQUEST)
    assert parsed is not None and parsed.local and parsed.length == len(header)


def test_v2_unix_addresses_mean_no_client_address():
    parsed = parse_header(v2(1, 3, b"/a".ljust(108, b"\0") + b"/b".ljust(108, b"\0")))
    assert parsed is not None and not parsed.local and parsed.client is None


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"GET / HTTP/1.1\r\n", "does not start with a PROXY protocol header"),
        (b"PROXZ", "does not start"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
        (b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", "CRLF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "expected"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "expected"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
        (b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", "not an IP address"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "not an IPv4 address"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "not an IPv6 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "out of range"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "not a port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", "non-ASCII"),
        (b"PROXY UNKNOWN " + b"x" * V1_MAX_LENGTH, "longer than 107"),
        (V2_SIGNATURE[:5] + b"X", "does not start"),
        (V2_SIGNATURE + b"\x10\x11", "unknown version 1"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c", "unknown command 2"),
        (V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_PAYLOAD + 1), "more than"),
        (v2(1, 1, bytes(11)), "too short for IPv4"),
        (v2(1, 2, bytes(35)), "too short for IPv6"),
        (v2(1, 3, bytes(215)), "too short for Unix"),
        (v2(1, 4, bytes(12)), "unknown address family"),
        (v2(1, 1, bytes(12), protocol=2), "not a stream"),
    ],
)
def test_malformed_headers_are_refused(data, error):
    with pytest.raises(ProxyHeaderError, match=error):
        parse_header(data)


# -- reading from a socket --------------------------------------------------------------------


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
@pytest.mark.parametrize("header", [V1_TCP6, V2_TCP4])
def test_reader_takes_the_header_and_not_one_byte_more(loop_name, header):
    """Split at every byte: the header is read whole, the client's bytes stay in the socket."""
    data = header + REQUEST

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for split in range(1, len(header) + 1):
            ours, theirs = socket.socketpair()
            ours.setblocking(False)
            with ours, theirs:
                theirs.sendall(data[:split])
                reading = asyncio.ensure_future(read_header(loop, ours, 5))
                for _ in range(3):
                    await asyncio.sleep(0)
                if split < len(header):
                    assert not reading.done(), split
                theirs.sendall(data[split:])
                parsed = await reading
                assert parsed.length == len(header)
                assert ours.recv(1000) == REQUEST, split

    with asyncio.Runner(loop_factory=loop_factory(loop_name)) as runner:
        runner.run(main())


def test_reader_errors():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        with ours, theirs:
            theirs.sendall(b"PROXY TCP")
            with pytest.raises(TimeoutError):
                await read_header(loop, ours, 0.2)
            theirs.close()
            with pytest.raises(ConnectionError, match="closed before"):
                await read_header(loop, ours, 5)

    asyncio.run(main())


# -- a live server ----------------------------------------------------------------------------


async def who(scope, receive, send):
    body = json.dumps({"client": scope["client"], "server": scope["server"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _answer(response: bytes) -> dict:
    assert response.startswith(b"HTTP/1.1 200 "), response
    return json.loads(response.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize(("header", "client", "server"), GOOD)
def test_live_server_reports_the_address_from_the_header(loop_name, header, client, server):
    with serve(who, loop=loop_name, proxy_protocol=True) as live, live.connect() as sock:
        sock.sendall(header + REQUEST)
        assert _answer(read_response(sock)) == {"client": list(client), "server": list(server)}
        sock.sendall(REQUEST)  # the next request on the connection: still the same client
        assert _answer(read_response(sock))["client"] == list(client)


def test_live_server_header_and_request_one_byte_at_a_time(loop_name):
    with serve(who, loop=loop_name, proxy_protocol=True) as live, live.connect() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in V2_TCP4 + REQUEST:
            sock.sendall(bytes([byte]))
        assert _answer(read_response(sock))["client"] == ["203.0.113.7", 56324]


def test_local_command_keeps_the_real_peer():
    with serve(who, proxy_protocol=True) as live, live.connect() as sock:
        sock.sendall(V2_LOCAL + REQUEST)
        answer = _answer(read_response(sock))
        assert answer["client"] == list(sock.getsockname())
        assert answer["server"] == ["127.0.0.1", live.port]


@pytest.mark.parametrize(
    "data",
    [
        REQUEST,  # no header where one is required
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n" + REQUEST,
        V2_SIGNATURE + b"\x21\x11\xff\xff" + REQUEST,
    ],
)
def test_missing_or_malformed_header_closes_without_an_answer(loop_name, data):
    with serve(who, loop=loop_name, proxy_protocol=True) as live:
        assert live.request(data) == b""
        with live.connect() as sock:  # and the server goes on serving
            sock.sendall(V1_TCP4 + REQUEST)
            assert _answer(read_response(sock))["client"] == ["203.0.113.7", 56324]


def test_header_from_an_untrusted_peer_closes(caplog):
    with serve(who, proxy_protocol=True, forwarded_allow_ips="192.0.2.1") as live:
        assert live.request(V1_TCP4 + REQUEST) == b""
    assert "only accepted from --forwarded-allow-ips" in caplog.text


@pytest.mark.parametrize("sent", [b"", b"PROXY TCP4 ", V2_SIGNATURE[:5]])
def test_a_silent_peer_is_closed_at_the_request_header_deadline(loop_name, sent):
    # The PROXY header is the head of the connection: --timeout-request-header bounds it.
    with serve(who, loop=loop_name, proxy_protocol=True, timeout_request_header=0.4) as live:
        with live.connect(timeout=10) as sock:
            start = time.monotonic()
            if sent:
                sock.sendall(sent)
            assert read_until_close(sock, timeout=10) == b""
            elapsed = time.monotonic() - start
        assert 0.3 < elapsed < 5  # the old fixed 10 s would fail this
        with live.connect() as sock:  # and the server goes on serving
            sock.sendall(V1_TCP4 + REQUEST)
            assert _answer(read_response(sock))["client"] == ["203.0.113.7", 56324]


def test_without_the_option_a_header_is_a_bad_request():
    with serve(who) as live:
        assert live.request(V1_TCP4 + REQUEST).startswith(b"HTTP/1.1 400 ")
