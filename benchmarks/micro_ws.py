"""Per-message CPU cost of a WebSocket echo in the server's protocol alone: no sockets.

Opens one WebSocket through the server's HTTP protocol over an in-memory transport, then feeds
the same masked client frame again and again, one event-loop turn after each (the turn the
app's Task needs to wake up for the message; the figures include the `call_soon` that feeds
the next read, about 1.5k instructions), with the echo app of the benchmarks. Under
callgrind the instruction count repeats exactly, which makes small changes measurable:

    python benchmarks/micro_ws.py aserve                # µs per message, 5 runs
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/micro_ws.py aserve --messages 2000 --runs 1
    (repeat with --messages 6000; the difference / 4000 is instructions per message)

`uvicorn` runs uvicorn's `websockets-sansio` protocol the same way, `uvicorn-websockets` its
`websockets` (legacy, streams) protocol and `uvicorn-wsproto` its wsproto one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import time
from typing import Any

from benchmarks.apps import ws_echo

KEY = base64.b64encode(b"0123456789abcdef")
HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
MESSAGE = b"hello, websocket echo benchmark!"  # what benchmarks/wsload.py sends


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    return header + mask + body


class MemoryTransport(asyncio.Transport):
    """Records what is written; enough of a transport for every protocol measured here."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.written = 0
        self.closed = False
        self.protocol: Any = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def write(self, data: Any) -> None:
        self.writes += 1
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        pass


async def _turns(count: int = 3) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def open_aserve(fast: bool = True) -> tuple[Any, MemoryTransport]:
    from aserve.config import Config
    from aserve.protocols.http import HttpProtocol
    from aserve.state import ServerState

    config = Config(app=ws_echo, access_log=False, ws_ping_interval=None)
    state = ServerState(config, ws_echo, asyncio.get_running_loop())
    protocol = HttpProtocol(state)
    transport = MemoryTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    protocol.data_received(HANDSHAKE)
    await _turns()
    websocket = transport.protocol
    if not fast:  # websockets parses and builds every frame, as before protocols/wsframes.py
        websocket._reader = None
        websocket._fast_send = False
    return websocket, transport


async def open_uvicorn(kind: str) -> tuple[Any, MemoryTransport]:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    if kind == "websockets-sansio":
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol as Protocol,
        )
    elif kind == "websockets":
        from uvicorn.protocols.websockets.websockets_impl import (
            WebSocketProtocol as Protocol,
        )
    else:
        from uvicorn.protocols.websockets.wsproto_impl import WSProtocol as Protocol

    config = Config(app=ws_echo, access_log=False, ws=kind, ws_ping_interval=None, log_config=None)
    config.load()
    protocol = Protocol(config, ServerState(), {})
    transport = MemoryTransport()
    protocol.connection_made(transport)
    protocol.data_received(HANDSHAKE)
    await _turns(6)
    return protocol, transport


def feed(protocol: Any, frame: bytes, count: int) -> asyncio.Future[None]:
    """`count` reads of `frame`, one per event-loop turn: in the turn after each, the app's
    Task takes the message and echoes it. A callback, not a coroutine that sleeps: that would
    add a Task step per message (8k instructions) to every server's figure."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = count

    def step() -> None:
        nonlocal left
        protocol.data_received(frame)
        left -= 1
        if left:
            loop.call_soon(step)
        else:
            loop.call_soon(done.set_result, None)

    loop.call_soon(step)
    return done


async def per_message(
    server: str, messages: int, message: bytes = MESSAGE, fast: bool = True
) -> float:
    if server == "aserve":
        protocol, transport = await open_aserve(fast)
    else:
        protocol, transport = await open_uvicorn(server.removeprefix("uvicorn-") or "")
    frame = masked_frame(0x1, message)
    await feed(protocol, frame, 1000)  # warm caches
    sent = transport.writes
    start = time.perf_counter()
    await feed(protocol, frame, messages)
    elapsed = time.perf_counter() - start
    await _turns()
    assert transport.writes - sent >= messages, "every message must be echoed"
    protocol.data_received(masked_frame(0x8, (1000).to_bytes(2, "big")))  # the app returns
    await _turns(6)
    protocol.connection_lost(None)
    await _turns(6)
    return elapsed / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "server", choices=["aserve", "uvicorn", "uvicorn-websockets", "uvicorn-wsproto"]
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, help="a text message of this many bytes instead")
    parser.add_argument(
        "--no-fast-path", action="store_true", help="aserve: websockets reads every frame"
    )
    args = parser.parse_args()
    server = "uvicorn-websockets-sansio" if args.server == "uvicorn" else args.server
    message = (
        MESSAGE if args.size is None else (MESSAGE * (args.size // len(MESSAGE) + 1))[: args.size]
    )

    async def runs() -> list[float]:
        return [
            await per_message(server, args.messages, message, not args.no_fast_path)
            for _ in range(args.runs)
        ]

    try:
        import uvloop

        results = uvloop.run(runs())
    except ImportError:
        results = asyncio.run(runs())
    micros = [r * 1e6 for r in results]
    print(f"{args.server}: {statistics.median(micros):.2f} µs/message (median of {args.runs})")


if __name__ == "__main__":
    main()
