"""WebSocket echo load client: N connections, each doing send/receive round trips.

Uses raw asyncio streams (masked frames prebuilt once) so the client stays cheap.
Run as ``python -m benchmarks.wsload --port P`` (prints one JSON line), normally
pinned to the load core with taskset.
"""

import argparse
import asyncio
import base64
import contextlib
import json
import os
import time

HOST = "127.0.0.1"
MESSAGE = b"hello, websocket echo benchmark!"


def masked_frame(opcode, payload):
    """One final, masked client frame (payload < 126 bytes)."""
    mask = os.urandom(4)
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


async def handshake(port):
    reader, writer = await asyncio.open_connection(HOST, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        writer.close()
        raise ConnectionError(f"handshake refused: {head[:80]!r}")
    return reader, writer


async def close_connection(reader, writer):
    writer.write(masked_frame(0x8, (1000).to_bytes(2, "big")))
    with contextlib.suppress(TimeoutError, OSError):
        await asyncio.wait_for(reader.read(64), timeout=1.0)
    writer.close()


async def echo_loop(port, measure_from, stop_at):
    """Round trips until `stop_at`; returns how many completed after `measure_from`."""
    reader, writer = await handshake(port)
    frame = masked_frame(0x1, MESSAGE)
    expected = bytes([0x81, len(MESSAGE)]) + MESSAGE
    count = 0
    now = time.monotonic()
    while now < stop_at:
        writer.write(frame)
        if await reader.readexactly(len(expected)) != expected:
            raise ConnectionError("unexpected echo frame")
        now = time.monotonic()
        count += now >= measure_from
    await close_connection(reader, writer)
    return count


async def run_load(port, connections, duration, warmup):
    measure_from = time.monotonic() + warmup
    stop_at = measure_from + duration
    results = await asyncio.gather(*(echo_loop(port, measure_from, stop_at)
                                     for _ in range(connections)), return_exceptions=True)
    counts = [r for r in results if isinstance(r, int)]
    failures = [repr(r) for r in results if not isinstance(r, int)]
    return {"value": sum(counts) / duration, "messages": sum(counts),
            "connections_ok": len(counts), "errors": {"failed": len(failures)},
            "first_error": failures[0] if failures else None}


def _run(coroutine):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    print(json.dumps(_run(run_load(args.port, args.connections, args.duration, args.warmup))))


if __name__ == "__main__":
    main()
