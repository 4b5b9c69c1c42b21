"""The benchmark harness's own logic: h2load's counts, and aserve set against uvicorn's best."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report
from benchmarks.h2load import latency_from_log, parse_h2load
from benchmarks.servers import variants
from benchmarks.workloads import WORKLOADS

# h2load 1.52's output, as printed (the progress lines left out).
H2LOAD_OK = """\
Application protocol: h2c

finished in 5.66ms, 7063.39 req/s, 307.64KB/s
requests: 40 total, 40 started, 40 done, 38 succeeded, 2 failed, 1 errored, 0 timeout
status codes: 36 2xx, 0 3xx, 2 4xx, 0 5xx
traffic: 1.74KB (1784) total, 434B (434) headers (space savings 88.46%), 520B (520) data
"""
H2LOAD_REFUSED = """\
finished in 4.23ms, 0.00 req/s, 0B/s
requests: 40 total, 0 started, 0 done, 0 succeeded, 40 failed, 40 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
"""


def test_h2load_failed_requests_are_counted():
    result = parse_h2load(H2LOAD_OK)
    assert result["value"] == 7063.39
    assert result["protocol"] == "h2c"
    assert result["requests"] == 38
    assert result["errors"] == {"failed": 2, "errored": 1, "timeout": 0, "non_2xx": 2}
    refused = parse_h2load(H2LOAD_REFUSED)
    assert refused["requests"] == 0
    assert refused["errors"]["failed"] == refused["errors"]["errored"] == 40


def test_h2load_latency_from_its_request_log(tmp_path):
    log = tmp_path / "log"
    log.write_text("".join(f"1700000000{i:06d}\t200\t{i * 1000}\n" for i in range(1, 101)))
    assert latency_from_log(log) == {"p50_ms": 50.5, "p99_ms": 100.0}


def test_each_uvicorn_backend_runs_and_the_best_is_compared():
    hello, memory, echo, h2 = (
        next(w for w in WORKLOADS if w.name == name)
        for name in ("hello-64", "memory-idle", "ws-echo", "h2-hello-m10")
    )
    assert variants("uvicorn", "http") == ["uvicorn-httptools", "uvicorn-zttp"]
    assert variants("uvicorn", "ws") == [
        "uvicorn-websockets-sansio",
        "uvicorn-websockets",
        "uvicorn-wsproto",
    ]
    assert variants("uvicorn", "h2") == ["uvicorn-zttp"]
    assert variants("hypercorn", "http") == []
    values = {
        (hello.name, "aserve"): 60.0,
        (hello.name, "uvicorn-httptools"): 20.0,
        (hello.name, "uvicorn-zttp"): 30.0,
        (memory.name, "aserve"): 3.0,
        (memory.name, "uvicorn-httptools"): 7.0,
        (memory.name, "uvicorn-zttp"): 8.0,
        (echo.name, "uvicorn-wsproto"): 10.0,
        (echo.name, "uvicorn-websockets-sansio"): 25.0,
        (h2.name, "uvicorn-zttp"): 20.0,
    }
    runs = [
        {"round": 1, "workload": w, "server": s, "ok": True, "value": v, "errors": {}}
        for (w, s), v in values.items()
    ]
    runs.append(
        {
            "round": 1,
            "workload": h2.name,
            "server": "aserve",
            "ok": False,
            "unsupported": True,
            "error": "aserve has no --http2 yet: HTTP/2 not supported",
        }
    )
    summary = report.summarize(runs, [hello, memory, echo, h2])
    assert summary[hello.name]["uvicorn"]["backend"] == "zttp"
    assert report.ratio(summary[hello.name], "aserve", "uvicorn") == 2.0
    assert summary[memory.name]["uvicorn"]["backend"] == "httptools"  # lower is better
    assert summary[echo.name]["uvicorn"]["backend"] == "websockets-sansio"
    assert summary[h2.name]["aserve"]["unsupported"]
    tables = report.format_tables(summary, [hello, memory, echo, h2], ["aserve", "uvicorn"])
    assert "zttp" in tables
    assert "n/a" in tables
