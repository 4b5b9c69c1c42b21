"""Workload definitions and the one-request correctness check run before loading a server."""

import http.client
import json
from dataclasses import dataclass

from benchmarks import apps
from benchmarks.servers import HOST, HTTP2_KINDS

UPLOAD_SIZE = 1024 * 1024
PIPELINE_DEPTH = 16
H2_POST_SIZE = 1024
# The 20 request headers of `h2-headers-20`, beside the pseudo-headers and h2load's own
# (user-agent, accept-encoding): what a browser behind a proxy sends, roughly.
H2_HEADERS = (
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("accept-language", "en-GB,en;q=0.9,fr;q=0.8"),
    ("cache-control", "no-cache"),
    ("pragma", "no-cache"),
    ("cookie", "session=3f9a1c2b7d8e4f60a1b2c3d4e5f60718; theme=dark; consent=1"),
    ("referer", "https://www.example.com/catalogue/items?page=2"),
    ("sec-fetch-dest", "document"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-site", "same-origin"),
    ("sec-fetch-user", "?1"),
    ("sec-ch-ua", '"Chromium";v="131", "Not_A Brand";v="24"'),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", '"Linux"'),
    ("upgrade-insecure-requests", "1"),
    ("x-forwarded-for", "203.0.113.7"),
    ("x-forwarded-proto", "https"),
    ("x-request-id", "6f1d2c3b-4a5e-4f60-8a9b-0c1d2e3f4a5b"),
    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("dnt", "1"),
    ("priority", "u=0, i"),
)


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
    # HTTP/2 (kind "h2", h2load): streams in flight per connection (-m), a POST body of this
    # many bytes, extra request headers, and TLS (ALPN) instead of h2c by prior knowledge.
    streams: int = 1
    body_size: int = 0
    headers: tuple = ()
    tls: bool = False

    @property
    def start_key(self):
        """Workloads sharing a key are measured on one server start."""
        return (self.app, self.kind, self.tls)

    @property
    def http2(self):
        return self.kind in HTTP2_KINDS


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
    # HTTP/2 (h2load, 64 connections): h2c by prior knowledge unless `tls`.
    Workload("h2-hello-m10", HELLO, "h2", streams=10),
    Workload("h2-hello-m100", HELLO, "h2", streams=100),
    Workload("h2-headers-20", HELLO, "h2", streams=10, headers=H2_HEADERS),
    Workload("h2-post-1k", "benchmarks.apps:upload", "h2", streams=10, body_size=H2_POST_SIZE),
    Workload("h2-tls", HELLO, "h2", streams=10, tls=True),
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
        size = workload.body_size or UPLOAD_SIZE
        return (lambda body: body == str(size).encode()), "upload size"
    return (lambda body: json.loads(body) == {"item_id": 42, "q": "hello"}), "fastapi item"


def _check_http2(workload, port, tls):
    """One HTTP/2 request (httpx: h2c by prior knowledge, or ALPN over TLS); returns
    (status, body), or raises RuntimeError if the answer did not come over HTTP/2."""
    import httpx

    scheme = "https" if workload.tls else "http"
    verify = tls.cafile if workload.tls else False
    with httpx.Client(http1=False, http2=True, verify=verify, timeout=10) as client:
        url = f"{scheme}://{HOST}:{port}{workload.path}"
        headers = dict(workload.headers)
        if workload.body_size:
            response = client.post(url, content=b"a" * workload.body_size, headers=headers)
        else:
            response = client.get(url, headers=headers)
    if response.http_version != "HTTP/2":
        raise RuntimeError(f"answered over {response.http_version}, not HTTP/2")
    return response.status_code, response.content


def check_response(workload, port, tls=None):
    """One request like the benchmark's; return None if correct, else an error message."""
    if workload.http2:
        try:
            status, body = _check_http2(workload, port, tls)
        except Exception as exc:  # httpx and h2 raise their own types
            return f"HTTP/2 check request failed: {exc!r}"
        is_ok, description = _expected_body(workload)
        if status == 200 and is_ok(body):
            return None
        return f"bad response (want 200 + {description}): {status} {body[:80]!r}"
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
