"""The request cycle knows no HTTP version: driven here through an in-memory framing.

`MemoryCycle` implements the framing side of the contract (protocols/cycle.py) by recording
what the cycle asks of it, as events, with no bytes of any HTTP version: what the app sees
(`receive`, `send`), and what the framing is told, must follow from the cycle alone.

A Python class cannot subclass a class compiled by mypyc, so where the hot path runs compiled
these tests load the same source of protocols/cycle.py as Python; the compiled class runs under
every HTTP/1.1 test of the suite.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path
from typing import Any

import pytest

import aserve.protocols
from aserve.asgi import ClientDisconnected, InvalidResponse
from aserve.config import Config
from aserve.flow_control import READY
from aserve.protocols.extensions import accepts_trailers
from aserve.state import ServerState


def _cycle_module() -> Any:
    import aserve.protocols.cycle as cycle

    if cycle.__file__.endswith(".py"):
        return cycle
    path = Path(aserve.protocols.__file__).with_name("cycle.py")
    spec = importlib.util.spec_from_file_location("aserve_cycle_source", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cycle_module = _cycle_module()


class MemoryCycle(cycle_module.RequestCycle):  # type: ignore[misc]
    """The framing side of the contract, as a list of events."""

    __slots__ = ("events", "pressure")

    def __init__(self, state: ServerState, scope: dict[str, Any], head_only: bool = False):
        super().__init__(state, scope, head_only)
        self.events: list[tuple[Any, ...]] = []
        self.pressure: Any = READY

    def write_start(self) -> None:
        assert self.block is not None
        self.events.append(("start", self.status, self.block.content_length))

    def write_body(self, body: bytes, more_body: object) -> None:
        if not self.head_written:
            self.head_written = True
            self.events.append(("head",))
        self.events.append(("body", body, bool(more_body)))

    def write_informational(self, status: int, block: Any) -> None:
        self.events.append(("informational", status, block.data))

    def trailers_possible(self) -> bool:
        return True

    def write_trailers(self, blocks: list[Any]) -> None:
        self.events.append(("trailers", [block.data for block in blocks]))

    def write_pressure(self) -> Any:
        return self.pressure

    def body_consumed(self, size: int) -> None:
        self.events.append(("consumed", size))

    def ask_for_body(self) -> None:
        self.events.append(("ask",))

    def response_done(self) -> None:
        self.events.append(("done",))

    def abort(self) -> None:
        self.events.append(("abort",))


def make_state(app: Any, **config: Any) -> ServerState:
    config.setdefault("access_log", False)
    return ServerState(Config(app=app, **config), app, asyncio.get_running_loop())


def make_scope(state: ServerState, method: str = "POST", path: bytes = b"/upload") -> Any:
    return cycle_module.build_scope(
        state,
        "1.1",
        method,
        path,
        b"",
        [(b"host", b"example.com")],
        ("127.0.0.1", 8000),
        ("127.0.0.1", 5555),
        "http",
        state.http_scope_template["extensions"],
        None,
    )


async def run(cycle: MemoryCycle) -> None:
    """Run the app of `cycle` until it is done."""
    task = cycle.run_app()
    if task is not None:
        # Waited for, not awaited: a failing app's exception is the cycle's to read (its
        # done callback does), as it is with eager tasks, where run_app returns None.
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "the app did not finish within 5 s"
        await asyncio.sleep(0)  # its done callback


async def until(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never came true")


async def test_a_body_in_pieces_reaches_the_app_and_the_answer_the_framing():
    received: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            received.append(message)
            if not message.get("more_body"):
                break
        body = b"".join(m["body"] for m in received)
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body[:3], "more_body": True})
        await send({"type": "http.response.body", "body": body[3:]})

    state = make_state(app)
    cycle = MemoryCycle(state, make_scope(state))
    task = cycle.run_app()
    assert task is not None  # waits in receive: nothing came yet
    await until(lambda: cycle.waiter is not None)
    assert cycle.events == [("ask",)]  # the app waits for a body: the framing may ask for it
    for piece in (b"hello", b", ", b"world"):
        cycle.feed_body(piece)
        await until(lambda: not cycle.chunks)  # taken by the app
    cycle.end_body()
    await asyncio.wait_for(task, 5)
    assert [m["body"] for m in received] == [b"hello", b", ", b"world", b""]
    assert [m["more_body"] for m in received] == [True, True, True, False]
    assert cycle.received == 12
    events = [e for e in cycle.events if e[0] != "ask"]
    assert events == [
        ("consumed", 5),
        ("consumed", 2),
        ("consumed", 5),
        ("start", 201, 12),
        ("head",),
        ("body", b"hel", True),
        ("body", b"lo, world", False),
        ("done",),
    ]
    assert cycle.complete and cycle.bytes_sent == 12


async def test_body_fed_before_the_app_asks_arrives_whole():
    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": message["body"]})

    state = make_state(app)
    cycle = MemoryCycle(state, make_scope(state))
    cycle.feed_body(b"ab")
    cycle.feed_body(b"cd")
    cycle.end_body()
    await run(cycle)
    assert cycle.events == [
        ("consumed", 4),
        ("start", 200, -1),
        ("head",),
        ("body", b"abcd", False),
        ("done",),
    ]


async def test_a_disconnect_wakes_the_app_waiting_in_receive():
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await receive())
        try:
            await send({"type": "http.response.start", "status": 200})
        except ClientDisconnected as exc:
            seen.append(exc)

    state = make_state(app)
    cycle = MemoryCycle(state, make_scope(state))
    task = cycle.run_app()
    assert task is not None
    await until(lambda: cycle.waiter is not None)
    cycle.lose_connection()
    await asyncio.wait_for(task, 5)
    assert seen[0] == {"type": "http.disconnect"}
    assert isinstance(seen[1], ClientDisconnected)
    assert [e for e in cycle.events if e[0] != "ask"] == []  # nothing for the framing to write


async def test_an_app_error_before_the_start_is_a_500(caplog: pytest.LogCaptureFixture):
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    state = make_state(app)
    cycle = MemoryCycle(state, make_scope(state, "GET", b"/"))
    with caplog.at_level(logging.ERROR, logger="aserve.error"):
        await run(cycle)
    assert cycle.events == [
        ("start", 500, -1),
        ("head",),
        ("body", b"Internal Server Error", False),
        ("done",),
    ]
    assert "Exception in ASGI application" in caplog.text and "boom" in caplog.text


async def test_an_app_error_after_the_start_aborts():
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("boom")

    state = make_state(app)
    cycle = MemoryCycle(state, make_scope(state, "GET", b"/"))
    await run(cycle)
    assert cycle.events == [
        ("start", 200, -1),
        ("head",),
        ("body", b"part", True),
        ("abort",),  # the head is out: no 500, and no completed response
    ]
    assert not cycle.complete


async def test_a_body_longer_than_its_content_length_is_refused():
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with pytest.raises(InvalidResponse):
            await send({"type": "http.response.body", "body": b"abc"})
        raise InvalidResponse("gave up")

    state = make_state(app)
    cycle = MemoryCycle(state, make_scope(state, "GET", b"/"))
    await run(cycle)
    assert cycle.events == [("start", 200, 2), ("abort",)]


async def test_write_pressure_is_what_send_returns():
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    order: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        order.append("started")
        await send({"type": "http.response.body", "body": b"x"})
        order.append("sent")

    state = make_state(app)
    cycle = MemoryCycle(state, make_scope(state, "GET", b"/"))
    cycle.pressure = waiter  # the transport (or the stream's window) is full
    task = cycle.run_app()
    assert task is not None
    await asyncio.sleep(0.01)
    assert order == []  # held at its first send
    waiter.set_result(None)
    cycle.pressure = READY
    await asyncio.wait_for(task, 5)
    assert order == ["started", "sent"]


async def test_the_access_log_and_the_metrics_count_each_response(
    caplog: pytest.LogCaptureFixture,
):
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body", "body": b""})

    with caplog.at_level(logging.INFO, logger="aserve.access"):
        state = make_state(app, access_log=True, metrics_port=0)
        cycle = MemoryCycle(state, make_scope(state, "DELETE", b"/item%201"))
        await run(cycle)
    assert cycle.head_only  # 204: no body, whatever the request
    lines = [r.getMessage() for r in caplog.records if r.name == "aserve.access"]
    assert len(lines) == 1
    assert '"DELETE /item 1 HTTP/1.1" 204' in lines[0]
    metrics = state.metrics
    assert metrics is not None
    # (Requests are counted by the framing, which knows a WebSocket's stream is none:
    # test_metrics, test_websocket_h2.)
    assert (metrics.completed, metrics.responses[2]) == (1, 1)


async def test_timeout_request_answers_503_and_cancels_the_app(
    caplog: pytest.LogCaptureFixture,
):
    cancelled = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    state = make_state(app)
    cycle = MemoryCycle(state, make_scope(state, "GET", b"/slow"))
    task = cycle.run_app()
    assert task is not None
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="aserve.error"):
        cycle.request_timed_out(task, 2.5)
    await asyncio.wait_for(cancelled.wait(), 5)
    assert cycle.events == [
        ("start", 503, -1),
        ("head",),
        ("body", b"Service Unavailable", False),
        ("done",),
    ]
    assert "Request cancelled after 2.5s without a response: GET /slow" in caplog.text


async def test_limit_concurrency_answers_503_in_the_apps_place():
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called past the limit")

    state = make_state(app, limit_concurrency=1)
    state.connections.update({object(), object()})  # more connections than the limit
    cycle = MemoryCycle(state, make_scope(state, "GET", b"/"))
    await run(cycle)
    assert cycle.events[0] == ("start", 503, -1)
    assert cycle.events[-2:] == [("body", b"Service Unavailable", False), ("done",)]


async def test_trailers_and_early_hints_go_through_the_framing():
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.early_hint", "links": [b"</a.css>; rel=preload"]})
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"data"})
        await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")]})

    state = make_state(app)
    cycle = MemoryCycle(state, make_scope(state, "GET", b"/"))
    cycle.ext = accepts_trailers(b"trailers")  # the request said `TE: trailers`
    await run(cycle)
    assert cycle.events == [
        ("informational", 103, b"link: </a.css>; rel=preload\r\n"),
        ("start", 200, -1),
        ("head",),
        ("body", b"data", True),  # the end of the body waits for the trailers
        ("trailers", [b"grpc-status: 0\r\n"]),
        ("done",),
    ]


async def test_build_scope_decodes_the_path_and_applies_the_root_path():
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    state = make_state(app, root_path="/api")
    scope = cycle_module.build_scope(
        state, "2", "GET", b"/a%20b", b"x=1", [], None, None, "https", {"tls": {}}, None
    )
    assert scope["path"] == "/api/a b"
    assert scope["raw_path"] == b"/api/a%20b"
    assert scope["root_path"] == "/api"
    assert (scope["http_version"], scope["scheme"], scope["query_string"]) == ("2", "https", b"x=1")
    assert scope["extensions"] == {"tls": {}}
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
