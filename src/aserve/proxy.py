"""Trusting X-Forwarded-For / X-Forwarded-Proto from known proxies only.

A header from an untrusted peer is ignored: anyone can send one, and believing it would let a
client choose the address an app rate-limits or audits.
"""

from __future__ import annotations

import ipaddress
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
        # when the list trusts everyone, local addresses (the default 127.0.0.1) or "unix:".
        self.unix = (
            self._everyone
            or any(network.is_loopback for network in self._networks)
            or any(literal.startswith("unix:") for literal in self._literals)
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
        if entry != "*" and not entry.startswith("unix:") and looks_like_address:
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
    """The (client, scheme) a request from a trusted proxy should report to the app."""
    peer = client[0] if client else ""
    if peer not in trusted:
        return client, scheme
    forwarded_for = forwarded_proto = None
    for name, value in headers:
        if name == b"x-forwarded-for":
            forwarded_for = value if forwarded_for is None else forwarded_for + b"," + value
        elif name == b"x-forwarded-proto":
            forwarded_proto = value
    if forwarded_proto is not None:
        proto = forwarded_proto.decode("latin-1").split(",")[-1].strip().lower()
        if proto in ("http", "https", "ws", "wss"):
            secure = proto in ("https", "wss")
            if scheme in ("ws", "wss"):
                scheme = "wss" if secure else "ws"
            else:
                scheme = "https" if secure else "http"
    if forwarded_for is not None:
        host = trusted.client_from_forwarded_for(forwarded_for.decode("latin-1"))
        if host is not None:
            client = (host, 0)
    return client, scheme
