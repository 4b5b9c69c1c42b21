"""Accepting connections: every pending one each time the listening socket is readable.

Why not `loop.create_server`: uvloop inherits libuv's policy (since libuv 1.45) of one
`accept()` per event-loop iteration. Under load an iteration is long, because it serves every
busy connection, so a burst of new connections waits one iteration each: with 64 connections
opened at once against a FastAPI app, the last was accepted 740 ms after the first, and that
wait was the whole p99 tail of the benchmark (docs/performance.md). asyncio's own loop
accepts up to 100 at a time. A `Listener` accepts up to `ACCEPT_BATCH` connections per
wake-up on either loop, and hands each to the loop with `connect_accepted_socket` (which also
takes the `ssl` context TLS will need).

Workers under a supervisor share one listening socket, and the kernel wakes every worker
waiting on it; whoever runs first accepts. With 128 per wake-up, one worker took most of a
burst (the busiest of two served 67% of 256 connections opened at once, in the median of 30
bursts, and up to 100%). A shared listener takes at most `SHARED_ACCEPT_BATCH` per wake-up and,
when it took that many (more may be queued), yields the CPU, so a sibling woken for the same
burst runs and takes its share; a worker that has accepted more than its least busy sibling
steps aside for a moment (`balance.py`): bursts then split evenly (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import os
import socket
from collections.abc import Callable
from typing import Any

from aserve.balance import DEFER_DELAY, MAX_DEFERRALS, AcceptSlot
from aserve.edge import Edge
from aserve.logging import error_logger
from aserve.tasks import start_task

# Connections accepted per wake-up at most, so a flood cannot starve the connections we have.
ACCEPT_BATCH = 128
# The same for a listening socket shared with other worker processes (see the docstring).
SHARED_ACCEPT_BATCH = 16
# After running out of file descriptors (or memory), wait this long before accepting again:
# the socket stays readable, and retrying at once would spin.
ACCEPT_RETRY_DELAY = 0.5

_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Listener:
    """One listening socket of a server (`sockets` and `close()` as on asyncio's Server)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        backlog: int,
        edge: Edge | None = None,
        shared: bool = False,
        balance: AcceptSlot | None = None,
    ) -> None:
        self.sockets = [sock]
        self._edge = edge  # PROXY protocol header and TLS, when on
        self._shared = shared  # with other processes: a small batch, then yield the CPU
        self._batch = SHARED_ACCEPT_BATCH if shared else ACCEPT_BATCH
        self._loop = loop
        self._sock = sock
        self._factory = protocol_factory
        self._backlog = backlog
        self._context = contextvars.copy_context()
        self._pending: set[asyncio.Task[Any]] = set()  # connections being handed to the loop
        self._retry: asyncio.TimerHandle | None = None
        self._serving = False
        self._exhausted = False  # out of descriptors: said once, until an accept succeeds
        self._balance = balance  # this worker's share of a shared socket (balance.py)
        self._deferrals = 0

    def start(self) -> None:
        self._sock.listen(self._backlog)  # an inherited socket (--fd) may not listen yet
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._accept)
        self._serving = True
        if self._balance is not None:
            self._balance.join()

    def stop_accepting(self) -> None:
        """Take no more connections, but let those being handed to the loop arrive.

        A draining worker calls this before `close()`: closing cancels the hand-overs still
        under way, and a connection accepted in the same loop turn would be dropped unanswered.
        """
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._balance is not None:
            self._balance.leave()  # the siblings no longer wait for this worker to catch up

    @property
    def handing_over(self) -> int:
        """Accepted connections not yet handed to their protocol."""
        return len(self._pending)

    def close(self) -> None:
        """Stop accepting and close the socket; connections already accepted go on.

        A PROXY header or a TLS handshake still under way is given up (`Edge` cancels safely);
        a plain hand-over is never cancelled: it ends within a loop turn, and its protocol,
        seeing the server shut down, closes itself. Cancelled at `await waiter`, uvloop's
        `connect_accepted_socket` closes the transport with its private `_close()`, which drops
        the `connection_lost` of a protocol whose `connection_made` has already run: the
        server then waited its whole graceful timeout for a connection that was gone.
        """
        self.stop_accepting()
        self._sock.close()
        if self._edge is not None:
            for task in list(self._pending):
                task.cancel()

    def _accept(self) -> None:
        balance = self._balance
        if balance is not None:
            if balance.ahead() and self._deferrals < MAX_DEFERRALS:
                self._deferrals += 1
                self._step_aside()
                return
            self._deferrals = 0
        accepted = 0
        for _ in range(self._batch):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause(exc)
                    break
                error_logger.warning("accept() failed: %s", exc)  # that connection only
                continue
            if self._exhausted:
                self._exhausted = False
                error_logger.warning("Accepting connections again")
            self._connect(conn)
            accepted += 1
        if accepted and balance is not None:
            balance.add(accepted)
        if accepted == self._batch and self._shared:
            # More may be queued: let a sibling woken for the same burst take its share. A
            # drained queue leaves the sibling nothing, and the syscall would be pure cost
            # on every new connection of a steady load.
            os.sched_yield()

    def _connect(self, conn: socket.socket) -> None:
        if self._edge is not None:
            coro = self._edge.connect(conn)
        else:
            coro = self._loop.connect_accepted_socket(self._factory, conn)
        task = start_task(self._loop, coro, self._context)  # eager on 3.12+
        if task.done():
            self._connected(task)
        else:
            self._pending.add(task)
            task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            error_logger.error("Could not set up an accepted connection: %s", exc)

    def _pause(self, exc: OSError) -> None:
        # One line per episode, not one per retry: at the limit for an hour would be 7,200.
        if not self._exhausted:
            self._exhausted = True
            error_logger.error(
                "accept() failed: %s; connections wait in the backlog, retrying every %ss",
                exc.strerror,
                ACCEPT_RETRY_DELAY,
            )
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
            self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)

    def _step_aside(self) -> None:
        """Leave this wake-up's connections to a sibling that has accepted fewer."""
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
            self._retry = self._loop.call_later(DEFER_DELAY, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if self._sock.fileno() != -1:
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._serving = True
