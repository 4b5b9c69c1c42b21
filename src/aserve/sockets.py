"""Creating the listening sockets: systemd's, or one from host/port, a unix socket path or an fd.

Kept apart from the server so a supervisor can bind once and hand the sockets to workers.
"""

from __future__ import annotations

import os
import socket
import stat

from aserve import systemd
from aserve.config import Config, ConfigError


def bind_sockets(config: Config) -> tuple[list[socket.socket], bool]:
    """The sockets to serve on, and whether they came from systemd.

    Socket activation needs no flag: when `LISTEN_FDS`/`LISTEN_PID` name this process, every
    socket systemd passed is served and host/port/uds/fd are not used. Otherwise one socket
    from the config.
    """
    try:
        passed = systemd.listen_fds()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if passed:
        return passed, True
    return [bind_socket(config)], False


def describe(sock: socket.socket) -> str:
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
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


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
