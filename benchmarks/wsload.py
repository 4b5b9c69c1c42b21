"""WebSocket echo load client: N connections, each doing send/receive round trips.

Each connection is an `asyncio.Protocol` that sends the next prebuilt masked frame from
`data_received` as soon as the echo is complete: no streams, no coroutine per message, so the
client costs a few microseconds per round trip and the server, not the client, sets the rate.
Run as ``python -m benchmarks.wsload --port P`` (prints one JSON line), normally pinned to the
load core with taskset.
"""

import argparse
import asyncio
import base64
import json
import os
import time

HOST = "127.0.0.1"
MESSAGE = b"hello, websocket echo benchmark!"
EXPECTED = bytes([0x81, len(MESSAGE)]) + MESSAGE  # the unmasked echo of MESSAGE


def masked_frame(opcode, payload):
    """One final, masked client frame (payload < 126 bytes)."""
    mask = os.urandom(4)
    body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


class EchoClient(asyncio.Protocol):
    """Handshake, then one message in flight: each complete echo sends the next message."""

    def __init__(self, port, measure_from, stop_at):
        self.port = port
        self.measure_from = measure_from
        self.stop_at = stop_at
        self.frame = masked_frame(0x1, MESSAGE)
        self.buffer = b""
        self.upgraded = False
        self.count = 0
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET / HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data):
        buffer = self.buffer + data
        if not self.upgraded:
            head, found, rest = buffer.partition(b"\r\n\r\n")
            if not found:
                self.buffer = buffer
                return
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self._fail(ConnectionError(f"handshake refused: {head[:80]!r}"))
                return
            self.upgraded = True
            self.buffer = rest
            self.transport.write(self.frame)
            return
        size = len(EXPECTED)
        if len(buffer) < size:
            self.buffer = buffer
            return
        if buffer[:size] != EXPECTED or len(buffer) > size:
            self._fail(ConnectionError(f"unexpected echo frame {buffer[:40]!r}"))
            return
        self.buffer = b""
        now = time.monotonic()
        self.count += now >= self.measure_from
        if now < self.stop_at:
            self.transport.write(self.frame)
        else:
            self.transport.write(masked_frame(0x8, (1000).to_bytes(2, "big")))
            self.transport.close()
            if not self.done.done():
                self.done.set_result(self.count)

    def connection_lost(self, exc):
        if not self.done.done():
            self._fail(exc or ConnectionError("connection closed before the run ended"))

    def _fail(self, exc):
        if not self.done.done():
            self.done.set_exception(exc)
        self.transport.close()


async def echo_loop(port, measure_from, stop_at):
    """Round trips until `stop_at`; returns how many completed after `measure_from`."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: EchoClient(port, measure_from, stop_at), HOST, port
    )
    return await client.done


async def run_load(port, connections, duration, warmup):
    measure_from = time.monotonic() + warmup
    stop_at = measure_from + duration
    results = await asyncio.gather(
        *(echo_loop(port, measure_from, stop_at) for _ in range(connections)),
        return_exceptions=True,
    )
    counts = [r for r in results if isinstance(r, int)]
    failures = [repr(r) for r in results if not isinstance(r, int)]
    return {
        "value": sum(counts) / duration,
        "messages": sum(counts),
        "connections_ok": len(counts),
        "errors": {"failed": len(failures)},
        "first_error": failures[0] if failures else None,
    }


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
