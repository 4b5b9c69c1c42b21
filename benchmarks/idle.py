"""Memory test: hold many idle keep-alive connections and read the server's RSS."""

import asyncio
import resource
import time

from benchmarks.servers import HOST, tree_rss_kib

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"
BATCH = 200


def raise_nofile_limit(wanted):
    """Raise the soft RLIMIT_NOFILE (inherited by servers and wrk); return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _open_one(port):
    """Open a connection, do one keep-alive request, return the open stream pair."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return reader, writer


async def _open_many(port, count, timeout):
    """Open `count` connections in batches; stop early once a batch has failures."""
    streams, failures = [], 0
    for start in range(0, count, BATCH):
        batch = [
            asyncio.wait_for(_open_one(port), timeout) for _ in range(min(BATCH, count - start))
        ]
        for result in await asyncio.gather(*batch, return_exceptions=True):
            if isinstance(result, BaseException):
                failures += 1
            else:
                streams.append(result)
        if failures:
            failures += count - start - len(batch)  # never attempted
            break
    return streams, failures


async def _close_all(streams):
    for _, writer in streams:
        writer.close()
    await asyncio.sleep(0.2)


async def _measure(pid, port, count, settle):
    await asyncio.sleep(settle)
    before = tree_rss_kib(pid)
    started = time.monotonic()
    streams, failures = await _open_many(port, count, timeout=10.0)
    await asyncio.sleep(settle)
    after = tree_rss_kib(pid)
    alive = sum(not reader.at_eof() for reader, _ in streams)
    await _close_all(streams)
    opened = len(streams)
    return {
        "value": (after - before) / opened if opened else None,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "opened": opened,
        "alive_at_measure": alive,
        "open_seconds": round(time.monotonic() - started, 2),
        "errors": {"failed": failures, "closed_early": opened - alive},
    }


def idle_memory(pid, port, count, settle=1.0):
    """KiB of server RSS per idle keep-alive connection, with `count` connections held open."""
    return asyncio.run(_measure(pid, port, count, settle))
