"""Creating the listening socket from host/port, a unix socket path or an inherited fd.

Kept apart from the server so a supervisor can bind once and hand the socket to workers.
"""

from __future__ import annotations

import os
import socket
import stat

from aserve.config import Config, ConfigError


def bind_socket(config: Config) -> socket.socket:
    if config.fd is not None:
        try:
            sock = socket.socket(fileno=config.fd)
        except OSError as exc:
            raise ConfigError(f"cannot use file descriptor {config.fd}: {exc.strerror}") from None
        sock.setblocking(False)
        return sock
    if config.uds is not None:
        return _bind_unix(config.uds, config.backlog)
    return _bind_tcp(config.host, config.port, config.backlog)


def _bind_tcp(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio only turns Nagle's
    # algorithm off (TCP_NODELAY) on sockets that say they are TCP. (uvloop always does.)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


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
