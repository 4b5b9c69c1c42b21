"""Coverage-guided fuzzing of the HTTP/2 frame layer with atheris (libFuzzer).

Not a pytest module: `make fuzz` runs it after the HTTP/1.1 harness (FUZZ_SECONDS each). Each
input is split into the bytes a client sends after the HTTP/2 preface and the points where
they are cut into reads; they are fed into one in-memory connection (tests/memory.py), whole
and split, and the oracle of tests/test_fuzz_http2.py is checked on both: no exception
escapes, well-formed frames and HPACK out, responses, stream resets or a GOAWAY that ends
the connection, never a hang, bounded state. A violation raises, and libFuzzer saves the
input as crash-*.

    python tests/fuzz/fuzz_http2.py -max_total_time=60 [corpus_dir]
"""

from __future__ import annotations

import asyncio
import os
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import h2.config
import h2.connection

# Imported lazily by the HTTP/1.1 protocol: here, so that it is instrumented (`instrument_all`).
import aserve.protocols.http2  # noqa: F401
from memory import check_h2_outcome, cut, exchange_h2

# Every Python function loaded so far gets coverage feedback: aserve's hot path as Python source
# (ASERVE_NO_EXTENSIONS=1; the compiled module is exercised but not instrumented).
atheris.instrument_all()


def _seeds() -> list[bytes]:
    """Real clients' conversations (python-hyper's h2 writes them), after the preface."""
    seeds = []
    for body in (None, b"hello", b"x" * 40_000):
        client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        client.initiate_connection()
        fields = [(b":method", b"GET" if body is None else b"POST"), (b":path", b"/a?b=1")]
        fields += [(b":scheme", b"http"), (b":authority", b"example.com"), (b"te", b"trailers")]
        client.send_headers(1, fields, end_stream=body is None)
        if body is not None:
            client.send_data(1, body[:16_000])
            client.send_headers(1, [(b"x-trailer", b"1")], end_stream=True)
        client.ping(b"12345678")
        client.send_headers(3, fields[:4], end_stream=False)
        client.reset_stream(3)
        seeds.append(bytes(client.data_to_send())[24:])
    return seeds


loop = asyncio.new_event_loop()


def one_input(raw: bytes) -> None:
    provider = atheris.FuzzedDataProvider(raw)
    points = [provider.ConsumeIntInRange(0, 4096) for _ in range(provider.ConsumeIntInRange(0, 6))]
    data = provider.ConsumeBytes(provider.remaining_bytes())
    loop.run_until_complete(run(data, points))


async def run(data: bytes, points: list[int]) -> None:
    check_h2_outcome(data, await exchange_h2([data]))
    check_h2_outcome(data, await exchange_h2(cut(data, points)))


def main() -> None:
    corpus = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    for directory in corpus:
        os.makedirs(directory, exist_ok=True)
        for number, seed in enumerate(_seeds()):
            with open(os.path.join(directory, f"seed-h2-{number}"), "wb") as file:
                file.write(b"\x00" + seed)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
