"""Trusting X-Forwarded-For / X-Forwarded-Proto and RFC 7239 Forwarded from known proxies only.

A header from an untrusted peer is ignored: anyone can send one, and believing it would let a
client choose the address an app rate-limits or audits.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from aserve.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The `--forwarded-allow-ips` list: addresses, CIDR networks, or ``*`` for everyone."""

    __slots__ = ("_cache", "_everyone", "_literals", "_networks", "unix")

    def __init__(self, entries: Sequence[str]) -> None:
        self._everyone = "*" in entries
        self._networks: list[IPNetwork] = []
        self._literals: set[str] = set()
        for entry in entries:
            if entry == "*":
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                # Not an address: a unix socket path or a name a proxy puts in the header.
                self._literals.add(entry)
        self._cache: dict[str, bool] = {}
        # A peer on a Unix socket is a process on this machine, like one on loopback: trusted
        # when the list trusts everyone, local addresses (the default 127.0.0.1), "unix:" or
        # a socket path (the literal uvicorn's help suggests).
        self.unix = (
            self._everyone
            or any(network.is_loopback for network in self._networks)
            or any(literal.startswith(("unix:", "/")) for literal in self._literals)
        )

    def trusts_peer(self, host: str) -> bool:
        """Whether a connection's peer is trusted; `host` is "" for a Unix-socket peer."""
        return self.unix if not host else host in self

    def __contains__(self, host: str) -> bool:
        if self._everyone:
            return True
        trusted = self._cache.get(host)
        if trusted is None:
            trusted = self._check(host)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[host] = trusted
        return trusted

    def _check(self, host: str) -> bool:
        if host in self._literals:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # An IPv4 peer of a dual-stack listener ([::]:PORT) shows as ::ffff:a.b.c.d: it is
            # the IPv4 address the list names (127.0.0.1 for a proxy on loopback).
            mapped = address.ipv4_mapped
            if any(mapped in network for network in self._networks):
                return True
        return any(address in network for network in self._networks)

    def client_from_forwarded_for(self, header: str) -> str | None:
        """The right-most address in the chain that is not one of our proxies."""
        hops = [hop.strip() for hop in header.split(",")]
        for hop in reversed(hops):
            if hop and hop not in self:
                return hop
        # Every hop is trusted: the left-most is the original client.
        return hops[0] or None


def parse_trusted(value: str | Sequence[str] | None) -> TrustedProxies:
    if value is None:
        entries: list[str] = []
    elif isinstance(value, str):
        entries = [item.strip() for item in value.split(",") if item.strip()]
    else:
        entries = [str(item).strip() for item in value]
    for entry in entries:
        looks_like_address = "/" in entry or entry.replace(".", "").isdigit()
        if entry != "*" and not entry.startswith(("unix:", "/")) and looks_like_address:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(
                    f"forwarded_allow_ips: {entry!r} is not an IP address or network"
                ) from None
    return TrustedProxies(entries)


def apply_forwarded_headers(
    trusted: TrustedProxies,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    scheme: str,
) -> tuple[tuple[str, int] | None, str]:
    """The (client, scheme) a request from a trusted proxy should report to the app.

    `X-Forwarded-For`/`-Proto` win over RFC 7239 `Forwarded`: when either is present,
    `Forwarded` is ignored. The common proxies (nginx, HAProxy, cloud balancers) set the
    X- headers and pass a client's own `Forwarded` through untouched, so preferring it
    would let a client choose its address.
    """
    if not trusted.trusts_peer(client[0] if client else ""):
        return client, scheme
    forwarded_for = forwarded_proto = forwarded = None
    for name, value in headers:
        if name == b"x-forwarded-for":
            forwarded_for = value if forwarded_for is None else forwarded_for + b"," + value
        elif name == b"x-forwarded-proto":
            forwarded_proto = value
        elif name == b"forwarded":
            forwarded = value if forwarded is None else forwarded + b"," + value
    if forwarded_for is None and forwarded_proto is None:
        if forwarded is not None:
            return _apply_forwarded(trusted, forwarded.decode("latin-1"), client, scheme)
        return client, scheme
    if forwarded_proto is not None:
        proto = forwarded_proto.decode("latin-1").split(",")[-1].strip().lower()
        scheme = _scheme(proto, scheme)
    if forwarded_for is not None:
        host = trusted.client_from_forwarded_for(forwarded_for.decode("latin-1"))
        if host is not None:
            client = (host, 0)
    return client, scheme


def _scheme(proto: str, scheme: str) -> str:
    """The scheme a forwarded protocol name means for this connection (http or websocket)."""
    if proto not in ("http", "https", "ws", "wss"):
        return scheme
    secure = proto in ("https", "wss")
    if scheme in ("ws", "wss"):
        return "wss" if secure else "ws"
    return "https" if secure else "http"


def _apply_forwarded(
    trusted: TrustedProxies, header: str, client: tuple[str, int] | None, scheme: str
) -> tuple[tuple[str, int] | None, str]:
    """RFC 7239: the client is the right-most `for=` that is not one of our proxies (the
    left-most if all are), and the scheme is that element's `proto=`.

    A malformed header is ignored as a whole: a proxy we trust wrote it, so garbage means
    something between us is broken, not that part of it can be believed.
    """
    elements = parse_forwarded(header)
    if not elements:
        return client, scheme
    chosen = None
    for element in reversed(elements):
        node = element.get("for")
        if node is None:
            continue
        chosen = element
        host = _node_host(node)
        if host is None or host not in trusted:
            break
    else:
        with_for = [element for element in elements if "for" in element]
        chosen = with_for[0] if with_for else None
    if chosen is None:
        return client, scheme
    node = chosen["for"]
    if node.lower() == "unknown":
        client = None  # the proxy did not know the client's address
    else:
        host = _node_host(node)
        client = (host if host is not None else node, _node_port(node))
    proto = chosen.get("proto")
    if proto is not None:
        scheme = _scheme(proto.lower(), scheme)
    return client, scheme


def parse_forwarded(header: str) -> list[dict[str, str]]:
    """The elements of a `Forwarded` header, each a dict of lowercased parameter names to
    values (quotes removed); an empty list when the header is malformed."""
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    i, end = 0, len(header)
    while True:
        while i < end and header[i] in " \t":
            i += 1
        match = _TOKEN.match(header, i)
        if match is None:
            return []
        name = match.group().lower()
        i = match.end()
        if i >= end or header[i] != "=":
            return []
        i += 1
        if i < end and header[i] == '"':
            value_chars = []
            i += 1
            while i < end and header[i] != '"':
                if header[i] == "\\" and i + 1 < end:
                    i += 1
                value_chars.append(header[i])
                i += 1
            if i >= end:
                return []  # no closing quote
            i += 1
            value = "".join(value_chars)
        else:
            match = _TOKEN.match(header, i)
            if match is None:
                return []
            value = match.group()
            i = match.end()
        if name in element:
            return []  # a parameter twice in one element (RFC 7239 section 4)
        element[name] = value
        while i < end and header[i] in " \t":
            i += 1
        if i >= end:
            elements.append(element)
            return elements
        if header[i] == ";":
            i += 1
        elif header[i] == ",":
            elements.append(element)
            element = {}
            i += 1
        else:
            return []


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _node_host(node: str) -> str | None:
    """The IP address in a `for=` node ("192.0.2.1", "192.0.2.1:80", "[2001:db8::1]:4711"),
    or None for "unknown" and obfuscated identifiers ("_hidden")."""
    if node.startswith("["):
        host, bracket, _ = node[1:].partition("]")
        if not bracket:
            return None
    else:
        host = node.partition(":")[0] if node.count(":") == 1 else node
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _node_port(node: str) -> int:
    """The port of a `for=` node; 0 when absent or obfuscated."""
    if node.startswith("["):
        port = node.partition("]")[2].removeprefix(":")
    elif node.count(":") == 1:
        port = node.partition(":")[2]
    else:
        port = ""
    return int(port) if port.isdigit() and port.isascii() and int(port) <= 65535 else 0
