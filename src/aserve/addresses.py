"""Listening addresses in gunicorn's `--bind` syntax: parsing them, and the text that names each.

`HOST:PORT`, `[IPV6]:PORT`, `unix:PATH` and `fd://N` (gunicorn also takes `tcp://HOST:PORT`,
`unix://PATH` and a `HOST` alone, on port 8000). Kept apart from `sockets.py`, which binds them,
so `Config` can check an address without importing the code that binds it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from aserve.errors import ConfigError

# gunicorn's port for a `--bind HOST` without one.
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class Address:
    """One listener: a TCP host and port, a Unix socket path, or an inherited descriptor."""

    kind: Literal["tcp", "unix", "fd"]
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        """The address in `--bind` syntax, as given (a port 0 stays 0)."""
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return f"{bracketed(self.host)}:{self.port}"


def bracketed(host: str) -> str:
    """An IPv6 literal in brackets, as it must appear before a port; other hosts as they are."""
    return f"[{host}]" if ":" in host else host


def tcp(host: str, port: int) -> Address:
    return Address("tcp", host=host, port=port)


def parse(text: str) -> Address:
    """An address in `--bind` syntax; a `ConfigError` naming the address and what is wrong."""
    if not isinstance(text, str):
        raise ConfigError(f"bind address {text!r} must be a string such as 127.0.0.1:8000")
    value = text.strip()
    if not value:
        raise _bad(text, "empty: expected HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N")
    if value.startswith("unix:"):
        path = value[len("unix://") :] if value.startswith("unix://") else value[len("unix:") :]
        if not path:
            raise _bad(text, "no path after 'unix:' (unix:/run/app.sock)")
        if "\0" in path:
            raise _bad(text, "the path has a NUL character")
        return Address("unix", path=path)
    if value.startswith("fd://"):
        number = value[len("fd://") :]
        if not number.isdigit() or not number.isascii():
            raise _bad(text, "expected fd://N, N a file descriptor number (fd://3)")
        return Address("fd", fd=int(number))
    if value.startswith("tcp://"):
        value = value[len("tcp://") :]
    if "://" in value:
        scheme = value.split("://", 1)[0]
        raise _bad(text, f"unknown scheme {scheme!r}: use HOST:PORT, unix:PATH or fd://N")
    host, port = _split_host_port(text, value)
    return Address("tcp", host=host, port=port)


def _split_host_port(text: str, value: str) -> tuple[str, int]:
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket:
            raise _bad(text, "no ']' after the IPv6 address ([::1]:8000)")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(text, f"{host!r} is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise _bad(text, "expected ':PORT' after the ']' ([::1]:8000)")
        port_text = rest[1:] if rest else None
    elif value.count(":") > 1:
        raise _bad(text, "an IPv6 address goes in brackets: [::1]:8000, [::]:8000")
    else:
        host, colon, port_text_or_empty = value.partition(":")
        port_text = port_text_or_empty if colon else None
        if not host:
            raise _bad(
                text,
                "no host (0.0.0.0:PORT for every IPv4 address, [::]:PORT for every address)",
            )
        if any(char.isspace() or char in "/[]@" for char in host):
            raise _bad(text, f"{host!r} is not a host name or address")
    if port_text is None:
        return host, DEFAULT_PORT
    if not (port_text.isdigit() and port_text.isascii()) or int(port_text) > 65535:
        raise _bad(text, "the port must be a number from 0 to 65535")
    return host, int(port_text)


def _bad(text: str, why: str) -> ConfigError:
    return ConfigError(f"bind address {text!r}: {why}")
