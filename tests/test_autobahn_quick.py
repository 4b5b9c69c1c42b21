"""Quick Autobahn TestSuite conformance check (kosoku) against a live aserve server.

Runs every case except 9.* (limits/performance) and 12.*/13.* (permessage-deflate), about
250 cases in a few seconds. The full suite is ``python benchmarks/autobahn.py``.

Set ``ASERVE_AUTOBAHN_SERVER_CMD`` to point the test at another server, e.g.
``python -m uvicorn benchmarks.autobahn_app:app --port {port} --ws websockets-sansio``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

try:
    import kosoku  # noqa: F401
except ImportError as exc:  # not installed, or its native extension does not load
    pytest.skip(f"kosoku cannot be imported ({exc}); pip install kosoku", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import autobahn  # noqa: E402

RUN_TIMEOUT = 120.0  # seconds for the whole quick run; it normally takes < 15 s
PARALLELISM = 4


def test_autobahn_quick(tmp_path: Path) -> None:
    template = os.environ.get("ASERVE_AUTOBAHN_SERVER_CMD", autobahn.DEFAULT_SERVER_CMD)
    port = autobahn.free_port()
    url = f"ws://{autobahn.HOST}:{port}"
    argv = autobahn.build_command(template, port)
    exclude = list(autobahn.QUICK_EXCLUDE)

    with autobahn.running_server(argv, port, tmp_path / "server.log"):
        started = time.monotonic()
        results = asyncio.run(
            autobahn.run_cases(url, exclude=exclude, parallelism=PARALLELISM, timeout=RUN_TIMEOUT)
        )
        elapsed = time.monotonic() - started

    summary = autobahn.summarize(
        results, url=url, server_cmd=argv, include=None, exclude=exclude, elapsed_s=elapsed
    )
    report = autobahn.write_outputs(results, summary, tmp_path / "report")
    assert summary.total > 200, f"only {summary.total} cases ran"
    if not summary.ok:
        pytest.fail(f"{autobahn.format_summary(summary)}\nreport: {report}", pytrace=False)
