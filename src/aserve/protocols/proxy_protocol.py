"""The HAProxy PROXY protocol (v1 text, v2 binary): the real client address a balancer sends.

A TCP load balancer in front of aserve makes every connection come from the balancer. With
`--proxy-protocol`, the balancer writes one header before the client's first byte naming the
client's address; aserve reads it, checks it, and reports that address to the app.

Two parts: `parse_header`, a sans-I/O parser that is given the bytes read so far, and
`read_header`, which reads the header from an accepted socket before the event loop gets a
transport for it (so before a TLS handshake: the balancer sends the header in clear text ahead
of the client's TLS records). It never reads past the header: the kernel keeps the client's
bytes for the transport. Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

V1_PREFIX = b"PROXY "
# The longest v1 line the specification allows, CRLF included ("PROXY UNKNOWN" + two IPv6
# addresses and ports).
V1_MAX_LENGTH = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16
# Address block plus TLVs accepted after the 16 fixed bytes. The specification allows 65535;
# addresses take at most 216 and the TLVs balancers add (ALPN, authority, SSL details, a
# connection id) a few hundred bytes, so a larger header is refused rather than buffered.
V2_MAX_PAYLOAD = 4096
# Read at most this much at a time while looking for the end of the header.
_PEEK_SIZE = V2_FIXED_LENGTH + V2_MAX_PAYLOAD

_V2_COMMAND_LOCAL = 0x0
_V2_COMMAND_PROXY = 0x1
_V2_AF_UNSPEC = 0x0
_V2_AF_INET = 0x1
_V2_AF_INET6 = 0x2
_V2_AF_UNIX = 0x3
_V2_STREAM = 0x1

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header; the message says what is wrong."""


class ProxyHeader:
    """A parsed header: its length in bytes, and what it says about the connection.

    `local` is True when the header gives no client address (v1 `UNKNOWN`, v2 `LOCAL`, as a
    balancer's own health checks send, or an address family it cannot express): the
    connection's own addresses stand. Otherwise `client` and `server` are the addresses the
    client connected from and to; both are None for a client on a Unix socket.
    """

    __slots__ = ("client", "length", "local", "server")

    def __init__(
        self,
        length: int,
        client: Address | None = None,
        server: Address | None = None,
        local: bool = False,
    ) -> None:
        self.length = length
        self.client = client
        self.server = server
        self.local = local

    def __repr__(self) -> str:
        if self.local:
            return f"ProxyHeader(length={self.length}, local=True)"
        return f"ProxyHeader(length={self.length}, client={self.client}, server={self.server})"


def parse_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`, or None when more bytes are needed.

    None also promises that every byte of `data` belongs to the header, so a reader may
    consume them all. Raises ProxyHeaderError as soon as the bytes cannot be a header.
    """
    if not data:
        return None
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(data)
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(data)
    raise ProxyHeaderError("the connection does not start with a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    if not data.startswith(V1_PREFIX[: len(data)]):
        raise ProxyHeaderError("the connection does not start with a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end == -1:
        head = data[:V1_MAX_LENGTH]
        if b"\n" in head or b"\r" in head[:-1]:  # (a CR at the very end may be a CRLF's half)
            raise ProxyHeaderError("PROXY v1 header: a line must end with CRLF")
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"PROXY v1 header longer than {V1_MAX_LENGTH} bytes")
        return None
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 header: non-ASCII byte") from None
    if "\r" in line or "\n" in line:
        raise ProxyHeaderError("PROXY v1 header: a line must end with CRLF")
    parts = line.split(" ")
    length = end + 2
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(length, local=True)  # the rest of the line is to be ignored
    if len(parts) != 6:
        raise ProxyHeaderError("PROXY v1 header: expected 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    _, family, source, destination, source_port, destination_port = parts
    if family == "TCP4":
        version = 4
    elif family == "TCP6":
        version = 6
    else:
        raise ProxyHeaderError(f"PROXY v1 header: unknown protocol {family!r}")
    return ProxyHeader(
        length,
        client=(_v1_address(source, version), _v1_port(source_port)),
        server=(_v1_address(destination, version), _v1_port(destination_port)),
    )


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 header: {text!r} is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError(f"PROXY v1 header: {text!r} is not an IPv{version} address")
    return str(address)


def _v1_port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"PROXY v1 header: {text!r} is not a port number")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY v1 header: port {port} is out of range")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | None:
    signature = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(signature):
        raise ProxyHeaderError("the connection does not start with a PROXY protocol header")
    if len(data) < V2_FIXED_LENGTH:
        if len(data) > 12 and data[12] >> 4 != 2:
            raise ProxyHeaderError(f"PROXY v2 header: unknown version {data[12] >> 4}")
        return None
    version_command, family_protocol, payload_length = struct.unpack_from("!BBH", data, 12)
    version, command = version_command >> 4, version_command & 0xF
    if version != 2:
        raise ProxyHeaderError(f"PROXY v2 header: unknown version {version}")
    if command not in (_V2_COMMAND_LOCAL, _V2_COMMAND_PROXY):
        raise ProxyHeaderError(f"PROXY v2 header: unknown command {command}")
    if payload_length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError(
            f"PROXY v2 header: {payload_length} bytes of addresses and TLVs, "
            f"more than the {V2_MAX_PAYLOAD} accepted"
        )
    length = V2_FIXED_LENGTH + payload_length
    if len(data) < length:
        return None
    if command == _V2_COMMAND_LOCAL:
        return ProxyHeader(length, local=True)  # the balancer's own connection (health check)
    family, protocol = family_protocol >> 4, family_protocol & 0xF
    if family == _V2_AF_UNSPEC:
        return ProxyHeader(length, local=True)  # the specification: use the real addresses
    if protocol != _V2_STREAM:
        raise ProxyHeaderError("PROXY v2 header: the client connection is not a stream")
    payload = data[V2_FIXED_LENGTH:length]
    if family == _V2_AF_INET:
        if payload_length < 12:
            raise ProxyHeaderError("PROXY v2 header: too short for IPv4 addresses")
        source, destination, source_port, destination_port = struct.unpack_from("!4s4sHH", payload)
    elif family == _V2_AF_INET6:
        if payload_length < 36:
            raise ProxyHeaderError("PROXY v2 header: too short for IPv6 addresses")
        source, destination, source_port, destination_port = struct.unpack_from(
            "!16s16sHH", payload
        )
    elif family == _V2_AF_UNIX:
        if payload_length < 216:
            raise ProxyHeaderError("PROXY v2 header: too short for Unix socket addresses")
        return ProxyHeader(length)  # ASGI names no address for a Unix-socket client
    else:
        raise ProxyHeaderError(f"PROXY v2 header: unknown address family {family}")
    # TLVs after the addresses are skipped: nothing in them changes what the app is told.
    return ProxyHeader(
        length,
        client=(str(ipaddress.ip_address(source)), source_port),
        server=(str(ipaddress.ip_address(destination)), destination_port),
    )


async def read_header(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float
) -> ProxyHeader:
    """Read the PROXY header from `sock` (non-blocking), and not one byte more.

    Raises ProxyHeaderError for a bad header, ConnectionError when the peer closes first,
    TimeoutError when the header is not complete within `timeout` seconds.
    """
    reader = _HeaderReader(loop, sock)
    fd = sock.fileno()
    loop.add_reader(fd, reader.readable)
    try:
        async with asyncio.timeout(timeout):
            return await reader.done
    finally:
        loop.remove_reader(fd)


class _HeaderReader:
    """Peeks at what arrived; consumes only bytes known to be header, so the client's own
    bytes stay in the kernel for the transport (and the socket does not stay readable with
    header bytes we have seen but not taken, which would make the loop spin)."""

    __slots__ = ("buffer", "done", "sock")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.done: asyncio.Future[ProxyHeader] = loop.create_future()

    def readable(self) -> None:
        if self.done.done():
            return
        try:
            self._read()
        except (ProxyHeaderError, OSError) as exc:
            self.done.set_exception(exc)

    def _read(self) -> None:
        try:
            peeked = self.sock.recv(_PEEK_SIZE - len(self.buffer), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        if not peeked:
            raise ConnectionError("the connection closed before its PROXY protocol header")
        header = parse_header(self.buffer + peeked)
        # Take the header's bytes only: all of `peeked` when the header is not complete yet.
        take = len(peeked) if header is None else header.length - len(self.buffer)
        taken = self.sock.recv(take)
        if len(taken) != take:  # the kernel gave back what we had just seen: cannot happen
            raise ConnectionError("the PROXY protocol header could not be read back")
        self.buffer += taken
        if header is not None:
            self.done.set_result(header)
