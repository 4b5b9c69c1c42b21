"""Fast unit tests of the pieces: no sockets."""

from __future__ import annotations

import os
from http import HTTPStatus

import pytest

from aserve.asgi import InvalidResponse
from aserve.config import Config, ConfigError, load_env_file, parse_header_option
from aserve.importer import AppLoadError, import_from_string, load_app
from aserve.logging import ACCESS_LOG_FIELDS, AccessRecord, escape
from aserve.protocols.headers import encode_headers, status_code, status_line
from aserve.protocols.rejection import error_response
from aserve.proxy import apply_forwarded_headers, parse_trusted
from aserve.status import reason_phrase


def test_encode_headers_validates_and_caches():
    headers = ((b"Content-Type", b"text/plain"), (b"content-length", b"5"))
    block = encode_headers(headers)
    assert block.data == b"Content-Type: text/plain\r\ncontent-length: 5\r\n"
    assert block.content_length == 5
    assert encode_headers(headers) is block  # same list of tuples: cached
    as_lists = [[b"Content-Type", b"text/plain"], [b"content-length", b"5"]]
    assert encode_headers(as_lists).data == block.data  # unhashable: encoded, not cached


def test_encode_headers_answers_each_list_for_what_it_holds():
    """A new list equal to the last one gets its block; one that differs in a value, or holds
    something else, does not (apps build a new list per response)."""
    first = encode_headers([(b"content-type", b"text/plain"), (b"content-length", b"13")])
    again = encode_headers([(b"content-type", b"text/plain"), (b"content-length", b"13")])
    assert again is first
    other = encode_headers([(b"content-type", b"text/plain"), (b"content-length", b"14")])
    assert other.content_length == 14
    assert other.data == b"content-type: text/plain\r\ncontent-length: 14\r\n"
    shorter = encode_headers([(b"content-type", b"text/plain")])
    assert shorter.content_length == -1
    with pytest.raises(InvalidResponse):
        encode_headers([(b"content-type", b"text/plain"), (b"content-length", b"1\n")])
    assert encode_headers([(b"content-type", b"text/plain"), (b"content-length", b"14")]) is other


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x", b"a\r\nb")],
        [(b"x", b"a\x00")],
        [(b"x", b"\x7f")],
        [(b"", b"v")],
        [(b"a b", b"v")],
        [("x", "str")],
        [(b"content-length", b"12a")],
        [(b"content-length", b"1"), (b"content-length", b"2")],
        [(b"transfer-encoding", b"gzip")],
        [(b"content-length", b"1"), (b"transfer-encoding", b"chunked")],
        [(b"only-one",)],
    ],
)
def test_encode_headers_refuses_what_cannot_go_on_the_wire(headers):
    with pytest.raises(InvalidResponse):
        encode_headers(headers)


def test_encode_headers_drops_hop_by_hop_and_notes_framing():
    block = encode_headers([(b"Connection", b"close"), (b"Transfer-Encoding", b"chunked")])
    assert block.data == b""
    assert block.close and block.chunked
    assert b"\t" in encode_headers([(b"x", b"tab\there")]).data


def test_status_line():
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(599) == b"HTTP/1.1 599 \r\n"
    with pytest.raises(InvalidResponse):
        status_line(42)
    with pytest.raises(InvalidResponse):
        status_line("200")  # type: ignore[arg-type]
    assert status_line(HTTPStatus.NOT_FOUND) == b"HTTP/1.1 404 Not Found\r\n"
    assert type(status_code(HTTPStatus.NOT_FOUND)) is int  # what the access log shows: 404
    for odd in (200.0, True, None, 1000):
        with pytest.raises(InvalidResponse, match="invalid HTTP status"):
            status_code(odd)


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        (413, b"Content Too Large"),  # 3.11's HTTPStatus: Request Entity Too Large
        (422, b"Unprocessable Content"),  # 3.11's HTTPStatus: Unprocessable Entity
        (416, b"Range Not Satisfiable"),
        (103, b"Early Hints"),
        (431, b"Request Header Fields Too Large"),
        (418, b""),  # RFC 9110: (Unused); no phrase rather than a joke
    ],
)
def test_reason_phrases_come_from_one_table_on_every_python(status, phrase):
    assert status_line(status) == b"HTTP/1.1 %d %s\r\n" % (status, phrase)
    assert reason_phrase(status) == phrase.decode()
    # The error answers aserve writes itself use the same table.
    assert error_response(status, "x", b"").startswith(status_line(status))


def test_trusted_proxies():
    trusted = parse_trusted("127.0.0.1, 10.0.0.0/8, ::1, unix:/run/proxy")
    assert "127.0.0.1" in trusted
    assert "10.1.2.3" in trusted
    assert "::1" in trusted
    assert "unix:/run/proxy" in trusted
    assert "192.168.0.1" not in trusted
    assert "not an ip" not in trusted
    assert "1.2.3.4" in parse_trusted("*")
    with pytest.raises(ConfigError):
        parse_trusted("10.0.0.0/33")
    # An IPv4 peer of a dual-stack listener ([::]:PORT) is its IPv4 address.
    assert "::ffff:127.0.0.1" in trusted and "::ffff:10.9.8.7" in trusted
    assert "::ffff:192.168.0.1" not in trusted


def test_forwarded_for_takes_rightmost_untrusted_hop():
    trusted = parse_trusted("127.0.0.1,10.0.0.0/8")
    headers = [(b"x-forwarded-for", b"198.51.100.1, 203.0.113.9, 10.0.0.2")]
    client, _ = apply_forwarded_headers(trusted, headers, ("127.0.0.1", 5), "http")
    assert client == ("203.0.113.9", 0)  # 198.51.100.1 was set by the client itself: unproven
    headers = [(b"x-forwarded-proto", b"https")]
    assert apply_forwarded_headers(trusted, headers, ("127.0.0.1", 5), "ws") == (
        ("127.0.0.1", 5),
        "wss",
    )
    headers = [(b"x-forwarded-proto", b"javascript")]
    assert apply_forwarded_headers(trusted, headers, ("127.0.0.1", 5), "http")[1] == "http"
    spoofed = [(b"x-forwarded-for", b"1.1.1.1")]
    assert apply_forwarded_headers(trusted, spoofed, ("8.8.8.8", 5), "http")[0] == ("8.8.8.8", 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": -1}, "port must be between"),
        ({"loop": "tokio"}, "loop must be one of"),
        ({"lifespan": "maybe"}, "lifespan must be one of"),
        ({"backlog": 0}, "backlog must be a positive integer"),
        ({"timeout_keep_alive": 0}, "timeout_keep_alive"),
        ({"limit_concurrency": 0}, "limit_concurrency"),
        ({"log_level": "loud"}, "log_level must be one of"),
        ({"root_path": "api"}, "root_path must start with '/'"),
        ({"headers": [("bad name", "v")]}, "not a valid HTTP token"),
        ({"headers": [("x", "a\nb")]}, "control character"),
        ({"access_log_format": "{nope}"}, "unknown field {nope}"),
        ({"ws_ping_interval": -1}, "ws_ping_interval"),
        ({"ws_close_timeout": 0}, "ws_close_timeout must be greater than 0"),
        ({"bind": ["[::1:8000"]}, "no ']' after the IPv6 address"),
    ],
)
def test_config_validation_names_the_setting(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        Config(app="x:y", **kwargs)


def test_config_defaults_follow_uvicorn_where_they_mean_the_same():
    config = Config(app="x:y")
    assert (config.host, config.port, config.backlog) == ("127.0.0.1", 8000, 2048)
    assert config.proxy_headers and config.forwarded_allow_ips == "127.0.0.1"
    assert config.timeout_keep_alive == 65.0  # longer than load balancers' idle timeouts
    assert Config(app="x:y", root_path="/api/").root_path == "/api"


def test_env_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ENVFILE_KEEP", "from environment")
    env = tmp_path / ".env"
    env.write_text(
        "# a comment\n\nENVFILE_A=1\nexport ENVFILE_B = 'two words'\nENVFILE_C=\"x\" \n"
        "ENVFILE_D=value # trailing comment\nENVFILE_KEEP=from file\n"
    )
    for key in ("ENVFILE_A", "ENVFILE_B", "ENVFILE_C", "ENVFILE_D"):
        monkeypatch.delenv(key, raising=False)
    load_env_file(env)
    assert os.environ["ENVFILE_A"] == "1"
    assert os.environ["ENVFILE_B"] == "two words"
    assert os.environ["ENVFILE_C"] == "x"
    assert os.environ["ENVFILE_D"] == "value"
    assert os.environ["ENVFILE_KEEP"] == "from environment"
    (tmp_path / "bad.env").write_text("NOT A PAIR\n")
    with pytest.raises(ConfigError, match="line 1: expected KEY=VALUE"):
        load_env_file(tmp_path / "bad.env")


def test_header_option():
    assert parse_header_option("X-Name: value") == ("X-Name", "value")
    with pytest.raises(ConfigError):
        parse_header_option("novalue")


def test_import_errors_are_one_line():
    with pytest.raises(AppLoadError, match="could not import module 'no_such_mod'"):
        import_from_string("no_such_mod:app")
    with pytest.raises(AppLoadError, match="attribute 'nope' not found in module 'os'"):
        import_from_string("os:nope")
    assert import_from_string("os.path:join") is os.path.join


def test_asgi2_detection():
    class ASGI2App:
        def __init__(self, scope):
            pass

    async def asgi3(scope, receive, send):
        pass

    class ASGI3Instance:
        async def __call__(self, scope, receive, send):
            pass

    assert type(load_app(Config(app=ASGI2App))).__name__ == "ASGI2Adapter"
    assert load_app(Config(app=asgi3)) is asgi3
    instance = ASGI3Instance()
    assert load_app(Config(app=instance)) is instance
    assert type(load_app(Config(app=asgi3, interface="asgi2"))).__name__ == "ASGI2Adapter"


def test_escape():
    assert escape("/plain/path") == "/plain/path"
    assert escape("a\r\nb") == "a\\x0d\\x0ab"
    assert escape('say "hi"\\') == 'say \\"hi\\"\\\\'
    assert escape("\x1b[31m") == "\\x1b[31m"
    assert escape("\u2028") == "\\u2028"
    assert escape("café") == "café"


def test_log_config_file_and_level(tmp_path):
    import json
    import logging

    from aserve.logging import configure_logging

    log_file = tmp_path / "aserve.log"
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_file)}},
        "loggers": {"aserve.error": {"handlers": ["file"], "level": "INFO"}},
    }
    path = tmp_path / "logging.json"
    path.write_text(json.dumps(config))
    configure_logging(str(path), "warning", access_log=False)
    logging.getLogger("aserve.error").warning("written")
    logging.getLogger("aserve.error").info("filtered by --log-level")
    for handler in logging.getLogger("aserve.error").handlers:
        handler.flush()
    assert log_file.read_text().splitlines() == ["written"]
    assert logging.getLogger("aserve.access").handlers == []
    with pytest.raises(ConfigError, match="does not exist"):
        configure_logging(str(tmp_path / "missing.json"), None, True)
    logging.getLogger("aserve.error").handlers.clear()
    logging.getLogger("aserve.error").setLevel(logging.NOTSET)
    logging.getLogger("aserve.access").setLevel(logging.NOTSET)
    logging.getLogger("aserve").setLevel(logging.NOTSET)


async def test_write_flow_waits_only_while_paused():
    import asyncio

    from aserve.flow_control import READY, WriteFlow

    flow = WriteFlow(asyncio.get_running_loop())
    assert flow.drained() is READY  # not paused: nothing to wait for
    flow.pause()
    first, second = flow.drained(), flow.drained()
    waiting = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in waiting)
    flow.resume()  # every sender waits on the same drain
    await asyncio.wait_for(asyncio.gather(*waiting), 1)
    assert flow.drained() is READY


async def test_ready_is_awaitable_and_runs_as_a_task():
    """`send` returns READY when it need not wait: it must do what a finished coroutine does."""
    import asyncio
    import inspect

    from aserve.flow_control import READY

    assert await READY is None
    assert inspect.isawaitable(READY) and asyncio.iscoroutine(READY)
    assert await asyncio.create_task(READY) is None
    assert await asyncio.ensure_future(READY) is None
    assert await asyncio.wait_for(READY, 1) is None
    assert await asyncio.gather(READY, READY) == [None, None]
    with pytest.raises(StopIteration):
        READY.send(None)
    with pytest.raises(ValueError, match="boom"):
        READY.throw(ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        READY.throw(ValueError, "boom")
    task = asyncio.get_running_loop().create_task(READY)  # not eager: cancelled before a step
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_access_log_names_the_status_from_the_same_table():
    record = AccessRecord({"path": "/", "query_string": b""}, 413, 0, 0.0)
    assert ACCESS_LOG_FIELDS["status_phrase"](record) == "Content Too Large"
