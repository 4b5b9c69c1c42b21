"""Workload definitions and the one-request correctness check run before loading a server."""

import http.client
import json
from dataclasses import dataclass

from benchmarks import apps
from benchmarks.servers import HOST

UPLOAD_SIZE = 1024 * 1024
PIPELINE_DEPTH = 16


@dataclass(frozen=True)
class Workload:
    name: str
    app: str  # ASGI target, "module:attribute"
    kind: str  # "http" (wrk), "ws" (websocket client) or "memory" (idle connections)
    connections: int = 64
    path: str = "/"
    script: str | None = None  # lua script in benchmarks/lua/
    script_args: tuple = ()
    unit: str = "req/s"
    higher_is_better: bool = True
    latency: bool = True  # False: wrk's latency histogram is meaningless with pipelining

    @property
    def start_key(self):
        """Workloads sharing a key are measured on one server start."""
        return (self.app, self.kind)


HELLO = "benchmarks.apps:hello"
WORKLOADS = (
    Workload(
        "memory-idle", HELLO, "memory", connections=5000, unit="KiB/conn", higher_is_better=False
    ),
    Workload("hello-64", HELLO, "http", connections=64),
    Workload("hello-256", HELLO, "http", connections=256),
    Workload("hello-1024", HELLO, "http", connections=1024),
    Workload(
        "pipeline-16",
        HELLO,
        "http",
        script="pipeline.lua",
        script_args=(PIPELINE_DEPTH,),
        latency=False,
    ),
    Workload("json", "benchmarks.apps:json_app", "http"),
    Workload("stream-64k", "benchmarks.apps:stream", "http"),
    Workload("upload-1m", "benchmarks.apps:upload", "http", script="upload.lua"),
    Workload("fastapi", "benchmarks.fastapi_app:app", "http", path="/items/42?q=hello"),
    Workload("ws-echo", "benchmarks.apps:ws_echo", "ws", unit="msg/s"),
)


def _expected_body(workload):
    """(predicate, description) for the response body of one plain request."""
    app = workload.app.split(":")[1]
    if app in ("hello", "ws_echo"):
        return (lambda body: body == apps.HELLO_BODY), "hello body"
    if app == "json_app":
        return (lambda body: json.loads(body) == apps.JSON_PAYLOAD), "json payload"
    if app == "stream":
        size = len(apps.STREAM_CHUNK) * apps.STREAM_CHUNKS
        return (lambda body: len(body) == size), f"{size} bytes"
    if app == "upload":
        return (lambda body: body == str(UPLOAD_SIZE).encode()), "upload size"
    return (lambda body: json.loads(body) == {"item_id": 42, "q": "hello"}), "fastapi item"


def check_response(workload, port):
    """One request like the benchmark's; return None if correct, else an error message."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        if workload.script == "upload.lua":
            conn.request("POST", workload.path, body=b"a" * UPLOAD_SIZE)
        else:
            conn.request("GET", workload.path)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return f"check request failed: {exc!r}"
    finally:
        conn.close()
    is_ok, description = _expected_body(workload)
    try:
        good = response.status == 200 and is_ok(body)
    except ValueError:
        good = False
    return (
        None
        if good
        else f"bad response (want 200 + {description}): {response.status} {body[:80]!r}"
    )
