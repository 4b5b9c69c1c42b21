"""systemd integration without a dependency: sd_notify datagrams, the watchdog, socket activation.

Everything here is a no-op outside systemd (no `NOTIFY_SOCKET`, no `LISTEN_FDS`), so callers
never need to ask first. The protocol is one datagram per notification of newline-separated
`KEY=VALUE` lines on the Unix socket named by `NOTIFY_SOCKET` (an `@` prefix names an abstract
socket), as sd_notify(3) describes; socket activation passes listening sockets from fd 3 on,
for the process whose PID is `LISTEN_PID` (sd_listen_fds(3)).
"""

from __future__ import annotations

import os
import socket

# The first file descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


def notify(*states: str) -> bool:
    """Send `states` ("READY=1", "STATUS=...") as one datagram; False when not under systemd.

    A send failure is not fatal to the server: the service manager may be gone or the socket
    full, and systemd's own sd_notify ignores both the same way.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not states:
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    payload = "\n".join(states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(payload)
    except OSError:
        return False
    return True


def watchdog_period() -> float | None:
    """Seconds between `WATCHDOG=1` pings (half of `WATCHDOG_USEC`), or None when not asked.

    `WATCHDOG_PID`, when set, names the one process systemd expects the pings from.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


def listen_fds(unset: bool = True) -> list[socket.socket]:
    """The listening sockets systemd passed us (socket activation), or [] when none.

    Only when `LISTEN_PID` names this process, as sd_listen_fds(3) requires: a child that
    inherited the variables must not take fd 3 for a socket. They are removed (with `unset`)
    for the same reason. The sockets are not inheritable across exec (Python's default), so a
    subprocess the app starts does not keep the port open; forked workers still share them.
    Raises `ValueError` with a one-line message when a passed descriptor is not a stream socket.
    """
    pid = os.environ.get("LISTEN_PID")
    count = os.environ.get("LISTEN_FDS")
    if unset:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    if not count or pid != str(os.getpid()):
        return []
    try:
        number = int(count)
    except ValueError:
        return []
    sockets: list[socket.socket] = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + number):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            for other in sockets:
                other.detach()
            raise ValueError(
                f"LISTEN_FDS: file descriptor {fd} is not a usable socket: {exc.strerror}"
            ) from None
        if sock.type != socket.SOCK_STREAM:
            sock.detach()
            for other in sockets:
                other.detach()
            raise ValueError(f"LISTEN_FDS: file descriptor {fd} is not a stream socket")
        os.set_inheritable(fd, False)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets
