"""Creating the listening sockets: systemd's, or one for each configured address (TCP, Unix, fd).

Kept apart from the server so a supervisor can bind once and hand the sockets to workers.

A TCP socket aserve binds itself accepts a connection only once its first bytes have arrived
(`TCP_DEFER_ACCEPT`, nginx's `deferred`), waiting for them as long as aserve waits for them
(`--timeout-request-header`, or `--timeout-ssl-handshake` for TLS): that deadline then runs
from the first bytes, not from a handshake whose request was held up (a client slow to write,
or its request dropped with the handshake's last ACK when the accept queue was full and
retransmitted seconds later), and a connection that has sent nothing costs the kernel a
request socket, not a descriptor and a protocol in a worker. The kernel accepts a silent
connection once the wait is over, and the deadline closes it then (docs/security.md).
Sockets passed in (systemd, `--fd`, `fd://N`) keep their owner's settings; Unix sockets have no such
option.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import socket
import stat

from aserve import systemd
from aserve.addresses import Address, bracketed
from aserve.config import Config, ConfigError


def bind_sockets(config: Config) -> tuple[list[socket.socket], bool]:
    """The sockets to serve on, and whether they came from systemd.

    Socket activation needs no flag: when `LISTEN_FDS`/`LISTEN_PID` name this process, every
    socket systemd passed is served and the configured listeners are not used. Otherwise one
    socket for each of `config.listeners`, in that order; if one cannot be bound, those bound
    before it are closed (and their socket files removed) and the error says which.
    """
    try:
        passed = systemd.listen_fds()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if passed:
        return passed, True
    bound: list[tuple[Address, socket.socket]] = []
    first = first_bytes_timeout(config)
    try:
        for address in config.listeners:
            bound.append((address, bind_address(address, config.backlog, first)))
    except BaseException:
        for address, sock in bound:
            if address.kind == "fd":
                sock.detach()  # not ours to close
            else:
                sock.close()
            if address.kind == "unix":
                with contextlib.suppress(OSError):
                    os.unlink(address.path)
        raise
    return [sock for _, sock in bound], False


def remove_unix_files(config: Config) -> None:
    """Remove the socket files of the config's Unix listeners (whoever bound them, on exit)."""
    for address in config.listeners:
        if address.kind == "unix":
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(address.path).st_mode):
                    os.unlink(address.path)


def describe(sock: socket.socket, scheme: str = "http") -> str:
    """Where a listening socket is, for the log: a URL or a unix socket path."""
    try:
        address = sock.getsockname()
    except OSError:
        return f"socket from file descriptor {sock.fileno()}"
    if sock.family == socket.AF_UNIX:
        if isinstance(address, bytes):  # abstract namespace
            address = "@" + address[1:].decode(errors="replace")
        return f"unix socket {address}"
    host, port = address[0], address[1]
    return f"{scheme}://{bracketed(host)}:{port}"


def describe_listener(address: Address, sock: socket.socket, scheme: str = "http") -> str:
    """A configured listener for the startup line: the host as given, the port as bound (the
    free one port 0 took), and where an inherited descriptor really listens."""
    if address.kind == "tcp":
        return f"{scheme}://{bracketed(address.host)}:{sock.getsockname()[1]}"
    if address.kind == "fd":
        return f"{describe(sock, scheme)} (file descriptor {address.fd})"
    return f"unix socket {address.path}"


def bind_address(address: Address, backlog: int, first_bytes: float) -> socket.socket:
    """A listening socket for one address (an inherited one is taken over as it is); a TCP
    one hands connections over once their first bytes arrived, waiting `first_bytes` s."""
    if address.kind == "fd":
        try:
            sock = socket.socket(fileno=address.fd)
        except OSError as exc:
            raise ConfigError(f"cannot use file descriptor {address.fd}: {exc.strerror}") from None
        if sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise ConfigError(f"file descriptor {address.fd} is not a stream socket")
        sock.setblocking(False)
        return sock
    if address.kind == "unix":
        return _bind_unix(address.path, backlog)
    return _bind_tcp(address.host, address.port, backlog, first_bytes)


def first_bytes_timeout(config: Config) -> float:
    """How long aserve waits for what a connection must send first: the TLS handshake, or
    the request head (or the PROXY header ahead of it)."""
    if config.ssl_certfile is not None and not config.proxy_protocol:
        return config.timeout_ssl_handshake
    return config.timeout_request_header


def defer_accept(sock: socket.socket, seconds: float) -> bool:
    """Accept connections on `sock` only once data arrives, waiting up to about `seconds`
    (whole seconds, at least 1: the kernel rounds up to its SYN-ACK retransmission times, 1,
    3, 7, 15, 31 s...). False where the platform has no TCP_DEFER_ACCEPT."""
    option = getattr(socket, "TCP_DEFER_ACCEPT", None)
    if option is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, math.ceil(seconds)))
    except OSError:
        return False
    return True


def _bind_tcp(host: str, port: int, backlog: int, first_bytes: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    where = f"{bracketed(host)}:{port}"
    try:
        # IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio only turns Nagle's
        # algorithm off (TCP_NODELAY) on sockets that say they are TCP. (uvloop always does.)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:  # no IPv6 on this machine
        raise ConfigError(f"cannot listen on {where}: {exc.strerror}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        # [::] takes IPv4 connections too (as ::ffff:a.b.c.d), whatever the system's
        # net.ipv6.bindv6only says; any other IPv6 address takes IPv6 only.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if _unspecified(host) else 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {where}: {exc.strerror}") from None
    defer_accept(sock, first_bytes)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _bind_unix(path: str, backlog: int) -> socket.socket:
    if os.path.exists(path):
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            raise ConfigError(f"cannot listen on {path!r}: it exists and is not a socket")
        os.unlink(path)  # a socket file left by an earlier run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on unix socket {path!r}: {exc.strerror}") from None
    os.chmod(path, 0o666)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock
