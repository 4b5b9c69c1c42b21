"""Coverage-guided fuzzing of the HTTP/1.1 request path with atheris (libFuzzer).

Not a pytest module (pytest collects test_*.py only): run it with `make fuzz`, which installs
atheris and runs this for FUZZ_SECONDS (default 60). Each input is split into a request and the
points where it is cut into reads; it is fed into one in-memory connection (tests/memory.py),
whole and split, and the same properties as tests/test_fuzz_requests.py are checked. A
violation raises, and libFuzzer saves the input as crash-*.

    python tests/fuzz/fuzz_requests.py -max_total_time=60 [corpus_dir]
"""

from __future__ import annotations

import asyncio
import os
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from memory import check_outcomes, cut, exchange

# Every Python function loaded so far gets coverage feedback: aserve's hot path as Python source
# (ASERVE_NO_EXTENSIONS=1; the compiled module is exercised but not instrumented).
atheris.instrument_all()

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;e=1\r\nabc\r\n0\r\nT: v\r\n\r\n",
]

loop = asyncio.new_event_loop()


def one_input(raw: bytes) -> None:
    provider = atheris.FuzzedDataProvider(raw)
    points = [provider.ConsumeIntInRange(0, 4096) for _ in range(provider.ConsumeIntInRange(0, 6))]
    data = provider.ConsumeBytes(provider.remaining_bytes())
    loop.run_until_complete(run(data, points))


async def run(data: bytes, points: list[int]) -> None:
    whole = await exchange([data])
    split = await exchange(cut(data, points))
    check_outcomes(data, whole, split)


def main() -> None:
    corpus = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
    for directory in corpus:
        os.makedirs(directory, exist_ok=True)
        for number, seed in enumerate(SEEDS):
            with open(os.path.join(directory, f"seed-{number}"), "wb") as file:
                file.write(b"\x00" + seed)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
