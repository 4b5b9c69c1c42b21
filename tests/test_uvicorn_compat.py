"""A uvicorn command line or `uvicorn.run` call runs unchanged with aserve.

The options and keywords come from the uvicorn installed with the dev extra, so an option a new
uvicorn adds fails here until aserve accepts it. Each is checked with representative values: the
value reaches aserve's `Config` as uvicorn would have it, and an option that means nothing here
logs exactly one line saying so (compat.py); the others log none.
"""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import inspect
import itertools
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import trustme
import uvicorn
from click.core import ParameterSource
from websockets.sync.client import connect

import aserve
from aserve import compat
from aserve.cli import cli, main
from aserve.config import Config, read_env_file
from aserve.errors import ConfigError
from aserve.logging import configure_logging
from aserve.server import Server, loop_factory
from conftest import serve
from processes import ASERVE, AserveProcess
from test_settings import aserve as aserve_command
from test_settings import printed

APPS = Path(__file__).parent / "apps"
MIGRATING = Path(__file__).parent.parent / "docs" / "migrating.md"
UVICORN_OPTIONS = [param for param in uvicorn.main.params if isinstance(param, click.Option)]
ASERVE_OPTIONS = {
    opt: param for param in cli.params for opt in (*param.opts, *param.secondary_opts)
}

# Options (with a value) that choose what aserve does not have: accepted, one line logged.
IGNORED = {
    ("--http", "h11"),
    ("--http", "httptools"),
    ("--http", "zttp"),
    ("--ws", "websockets-sansio"),
    ("--ws", "wsproto"),
    ("--loop", "zuvloop"),
    ("--h11-max-incomplete-event-size", "16384"),
    ("--reset-contextvars",),
    ("--http", "asyncio:Protocol"),
    ("--ws", "asyncio:Protocol"),
}

# What uvicorn imports for these when given "module:attribute".
IMPORTED = {
    "loop": "asyncio:new_event_loop",
    "http": "asyncio:Protocol",
    "ws": "asyncio:Protocol",
}

# Defaults that differ from uvicorn's on purpose (docs/migrating.md says why for each).
DIFFERENT_DEFAULTS = {
    "http2": "HTTP/2 is offered wherever a client can ask for it",
    "forwarded_allow_ips": "127.0.0.1 only: ::1 is not trusted unless listed",
    "timeout_keep_alive": "65 s, longer than load balancers' idle timeouts",
    "timeout_graceful_shutdown": "30 s, not unbounded",
    "timeout_worker_healthcheck": "30 s: a busy but healthy loop answers late",
}


def samples(tmp_path: Path) -> dict[str, str]:
    """A value for each uvicorn option that takes one (other than a choice)."""
    env_file = tmp_path / "empty.env"
    env_file.write_text("# nothing\n")
    log_config = tmp_path / "logging.json"
    log_config.write_text('{"version": 1, "disable_existing_loggers": false}')
    return {
        "host": "0.0.0.0",
        "port": "8123",
        "uds": str(tmp_path / "app.sock"),
        "fd": "3",
        "reload_dirs": str(tmp_path),
        "reload_includes": "*.html",
        "reload_excludes": "*.tmp",
        "reload_delay": "1.5",
        "workers": "3",
        "ws_max_size": "1024",
        "ws_max_queue": "8",
        "ws_ping_interval": "5",
        "ws_ping_timeout": "6",
        "ws_per_message_deflate": "false",
        "env_file": str(env_file),
        "log_config": str(log_config),
        "forwarded_allow_ips": "10.0.0.0/8,127.0.0.1,/run/app.sock",  # uvicorn's literal too
        "root_path": "/api",
        "limit_concurrency": "10",
        "backlog": "100",
        "limit_max_requests": "1000",
        "limit_max_requests_jitter": "50",
        "timeout_keep_alive": "7",
        "timeout_graceful_shutdown": "9",
        "timeout_worker_healthcheck": "11",
        "ssl_keyfile": "key.pem",
        "ssl_certfile": "cert.pem",
        "ssl_keyfile_password": "secret",
        "ssl_version": str(int(ssl.PROTOCOL_TLS_SERVER)),
        "ssl_cert_reqs": "1",
        "ssl_ca_certs": "ca.pem",
        "ssl_ciphers": "ECDHE+AESGCM",
        "headers": "X-Served-By:node-1",
        "app_dir": str(tmp_path),
        "h11_max_incomplete_event_size": "16384",
    }


def cases(param: click.Option) -> list[tuple[str, ...]]:
    """Command lines for one uvicorn option: each of its flags, or each choice, or a sample."""
    flag = param.opts[0]
    if param.is_flag:
        return [(opt,) for opt in (*param.opts, *param.secondary_opts)]
    if isinstance(param.type, click.Choice):
        return [(flag, str(choice)) for choice in param.type.choices]
    if param.metavar and param.metavar.startswith("[") and "|" in param.metavar:
        # A name among those shown, or (uvicorn's --loop, --http, --ws) an import string.
        names = param.metavar.strip("[]").split("|")
        return [(flag, name) for name in names] + [(flag, IMPORTED[param.name])]
    return [(flag, f"<{param.name}>")]  # the sample, made in the test's tmp_path


CASES = [
    pytest.param(param, args, id=" ".join(args))
    for param in UVICORN_OPTIONS
    if param.name != "version"
    for args in cases(param)
]


@pytest.fixture
def clean(tmp_path, monkeypatch):
    """No settings from the test's own environment or a pyproject.toml."""
    monkeypatch.chdir(tmp_path)
    for name in ("WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith(("ASERVE_", "UVICORN_")) and name not in ("ASERVE_NO_EXTENSIONS",):
            monkeypatch.delenv(name)
    return tmp_path


def aserve_config(monkeypatch, args: list[str]) -> Config:
    """The Config `aserve ARGS` would serve, from the real command line, without serving."""
    made: list[Config] = []
    monkeypatch.setattr(
        "aserve.entry.serve", lambda app, **options: made.append(Config(app, **options))
    )
    cli.main(args, prog_name="aserve", standalone_mode=False)
    return made[0]


def same(name: str, value: Any) -> Any:
    """A setting in one form for both servers: uvicorn's CLI keeps headers as NAME:VALUE text
    and repeated options as tuples, and says "" where aserve says "." for the app directory."""
    if name == "headers" and value:
        value = [tuple(part.strip() for part in str(item).split(":", 1)) for item in value]
    if name == "app_dir" and value in ("", "."):
        return None
    if isinstance(value, tuple):
        value = list(value)
    return None if value in ((), [], "") else value


@pytest.mark.parametrize("param", UVICORN_OPTIONS, ids=lambda param: param.opts[0])
def test_every_uvicorn_option_is_an_aserve_option(param):
    for opt in (*param.opts, *param.secondary_opts):
        assert opt in ASERVE_OPTIONS, f"uvicorn's {opt} is not accepted by aserve"
        assert ASERVE_OPTIONS[opt].name == param.name, f"{opt} sets another setting"
        if param.is_flag:
            assert ASERVE_OPTIONS[opt].is_flag, f"{opt} takes no value in uvicorn"


@pytest.mark.parametrize(("param", "args"), CASES)
def test_every_uvicorn_option_value_is_taken_as_uvicorn_takes_it(param, args, clean, monkeypatch):
    values = samples(clean)
    args = tuple(values[param.name] if arg == f"<{param.name}>" else arg for arg in args)
    expected = uvicorn.main.make_context("uvicorn", ["x:y", *args]).params[param.name]
    config = aserve_config(monkeypatch, ["x:y", *args])
    assert same(param.name, getattr(config, param.name)) == same(param.name, expected)
    about = [line for line in config.notices if line.startswith(args[0])]
    if args in IGNORED:
        assert len(about) == 1, config.notices
        assert about[0].endswith("option ignored")
        assert config.notices == about  # and nothing else
    else:
        assert config.notices == []


def test_each_ignored_option_is_explained_in_the_migration_guide():
    notes = {}
    for line in MIGRATING.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`--"):
            notes[cells[0].split("`")[1]] = cells[2]
    for args in IGNORED:
        assert "ignored" in notes[args[0]], args
        value = args[1] if len(args) == 2 else ""
        if value and not value.isdigit():  # a name, or an import string
            assert f"`{value}`" in notes[args[0]] or ":" in value, args
            assert ":" not in value or "`module:attribute`" in notes[args[0]], args
    for name in DIFFERENT_DEFAULTS:
        assert "default" in notes[f"--{name.replace('_', '-')}"].lower(), name


def test_defaults_are_uvicorns_except_where_documented(clean, monkeypatch):
    theirs = uvicorn.main.make_context("uvicorn", ["x:y"]).params
    config = aserve_config(monkeypatch, ["x:y"])
    differ = {
        name
        for name, value in theirs.items()
        if name != "app" and same(name, getattr(config, name)) != same(name, value)
    }
    assert differ == set(DIFFERENT_DEFAULTS)


# --- uvicorn's environment: UVICORN_* variables ---------------------------------------------

PREFIX = uvicorn.main.context_settings["auto_envvar_prefix"]
BOOLEAN_TEXTS = ("true", "0", "Yes", "off")  # some of click's spellings


def more_samples(tmp_path: Path) -> dict[str, str]:
    """A second value for each repeatable option, to show a variable's list splits as uvicorn's."""
    (tmp_path / "more").mkdir(exist_ok=True)
    return {
        "reload_dirs": str(tmp_path / "more"),
        "reload_includes": "*.css",
        "reload_excludes": "*.bak",
        "headers": "X-Region:eu",
    }


def env_cases(param: click.Option) -> list[str]:
    """Values of UVICORN_<NAME> for one uvicorn option: on/off in several spellings, or what
    the flag's cases give (each choice or name, or the option's sample)."""
    if param.is_flag or param.type is click.BOOL:
        return list(BOOLEAN_TEXTS)
    return [args[1] for args in cases(param)]


ENV_CASES = [
    pytest.param(param, text, id=f"{PREFIX}_{param.name.upper()}={text}")
    for param in UVICORN_OPTIONS
    if param.name != "version"
    for text in env_cases(param)
]


def test_aserve_reads_the_uvicorn_variables_uvicorn_reads_and_no_other():
    theirs = {param.name for param in UVICORN_OPTIONS if param.allow_from_autoenv}
    assert all(param.envvar is None for param in UVICORN_OPTIONS)  # all by the prefix
    ours = {
        param.name
        for param in cli.params
        if isinstance(param, click.Option) and param.allow_from_autoenv
    }
    assert ours == theirs == compat.UVICORN_ENV_OPTIONS
    assert cli.context_settings["auto_envvar_prefix"] == PREFIX == compat.UVICORN_ENV_PREFIX
    # The app argument: UVICORN_APP.
    their_app = [p.envvar for p in uvicorn.main.params if isinstance(p, click.Argument)]
    assert their_app == [p.envvar for p in cli.params if isinstance(p, click.Argument)]


@pytest.mark.parametrize(("param", "text"), ENV_CASES)
def test_every_uvicorn_variable_is_read_as_uvicorn_reads_it_and_means_its_flag(
    param, text, clean, monkeypatch
):
    items = [text]
    if text == f"<{param.name}>":
        items = [samples(clean)[param.name]]
        if param.multiple:
            items.append(more_samples(clean)[param.name])
        text = (param.type.envvar_list_splitter or " ").join(items)  # as uvicorn's user writes it
    variable = f"{PREFIX}_{param.name.upper()}"
    monkeypatch.setenv(variable, text)
    theirs = uvicorn.main.make_context("uvicorn", ["x:y"])
    assert theirs.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT
    value = theirs.params[param.name]
    config = aserve_config(monkeypatch, ["x:y"])
    assert same(param.name, getattr(config, param.name)) == same(param.name, value)
    # The same as the flag with that value, down to the line an ignored option logs.
    monkeypatch.delenv(variable)
    if param.is_flag:  # aserve's, which may have an --no-* where uvicorn's has none
        ours = ASERVE_OPTIONS[param.opts[0]]
        flag = ours.opts[:1] if value else ours.secondary_opts[:1]
    else:
        flag = [arg for item in items for arg in (param.opts[0], item)]
    by_flag = aserve_config(monkeypatch, ["x:y", *flag])
    assert getattr(config, param.name) == getattr(by_flag, param.name)
    assert config.notices == by_flag.notices


def test_an_empty_uvicorn_variable_is_unset_as_in_uvicorn(clean, monkeypatch):
    default = aserve_config(monkeypatch, ["x:y"])
    for param in UVICORN_OPTIONS:
        monkeypatch.setenv(f"{PREFIX}_{param.name.upper()}", "")
    theirs = uvicorn.main.make_context("uvicorn", ["x:y"])
    assert {theirs.get_parameter_source(name) for name in theirs.params} == {
        ParameterSource.COMMANDLINE,  # the app
        ParameterSource.DEFAULT,
    }
    assert aserve_config(monkeypatch, ["x:y"]) == default


def test_uvicorn_version_variable_shows_the_version_and_exits(clean):
    """uvicorn reads even UVICORN_VERSION: set, it prints its version instead of serving."""
    from click.testing import CliRunner

    runner = CliRunner()
    theirs = runner.invoke(uvicorn.main, ["x:y"], env={f"{PREFIX}_VERSION": "1"})
    ours = runner.invoke(cli, ["x:y"], env={f"{PREFIX}_VERSION": "1"}, prog_name="aserve")
    assert theirs.exit_code == ours.exit_code == 0
    assert theirs.output.startswith("Running uvicorn ")
    assert ours.output.startswith(f"aserve {aserve.__version__} (")


@pytest.mark.parametrize(
    ("variable", "text", "error"),
    [
        ("PORT", "eighty", "'eighty' is not a valid integer."),
        ("ACCESS_LOG", "maybe", "'maybe' is not a valid boolean. Recognized values: , 0, 1,"),
        ("LIFESPAN", "bogus", "'bogus' is not one of 'auto', 'on', 'off'."),
        ("HEADERS", "X-A:1 nocolon", "header 'nocolon' must be given as NAME:VALUE"),
        ("RELOAD_DIRS", "/no/such/dir", "Directory '/no/such/dir' does not exist."),
    ],
)
def test_a_value_uvicorn_refuses_is_one_line_naming_the_variable(
    variable, text, error, clean, monkeypatch, capsys
):
    monkeypatch.setenv(f"{PREFIX}_{variable}", text)
    with pytest.raises(click.BadParameter) as theirs:
        uvicorn.main.make_context("uvicorn", ["x:y"])
    with pytest.raises(SystemExit) as exited:
        main(["x:y", "--print-config"])
    assert exited.value.code == 1
    flag = theirs.value.param.opts[0]
    err = capsys.readouterr().err
    assert err.startswith(f"Error: Invalid value for UVICORN_{variable} ({flag}): {error}")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("variable", "text", "error"),
    [
        (
            "WORKERS",
            "0",
            "Invalid value for UVICORN_WORKERS (--workers): 0 is not in the range x>=1.",
        ),
        ("PORT", "99999", "env UVICORN_PORT: port must be between 0 and 65535, got 99999"),
        ("ROOT_PATH", "api", "env UVICORN_ROOT_PATH: root_path must start with '/', got 'api'"),
    ],
)
def test_a_value_aserve_refuses_is_one_line_naming_the_variable(
    variable, text, error, clean, monkeypatch, capsys
):
    monkeypatch.setenv(f"{PREFIX}_{variable}", text)
    with pytest.raises(SystemExit) as exited:
        main(["x:y", "--print-config"])
    assert exited.value.code == 1
    assert capsys.readouterr().err == f"Error: {error}\n"


def test_uvicorn_variables_in_an_env_file_are_not_options_as_in_uvicorn(clean, monkeypatch):
    """uvicorn loads its --env-file in Config, after click has parsed the command line: a
    UVICORN_* line there reaches the app's environment but sets no option (WEB_CONCURRENCY
    does: Config reads it). Shown with uvicorn's own code (dotenv's file reading aside); aserve
    does the same."""
    env_file = clean / "app.env"
    env_file.write_text("UVICORN_PORT=9999\nUVICORN_ROOT_PATH=/file\nWEB_CONCURRENCY=3\n")
    for key in read_env_file(env_file):  # absent again after the test, whoever loads them
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)

    def load_dotenv(dotenv_path: str) -> None:
        for key, value in read_env_file(dotenv_path).items():
            os.environ.setdefault(key, value)

    lines = printed(aserve_command("x:y", "--print-config", "--env-file", "app.env", cwd=clean))
    dotenv = types.ModuleType("dotenv")
    dotenv.load_dotenv = load_dotenv  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "dotenv", dotenv)
    params = uvicorn.main.make_context("uvicorn", ["x:y", "--env-file", str(env_file)]).params
    params.pop("app_dir")  # uvicorn.main puts it on sys.path itself
    theirs = uvicorn.Config(**params)
    assert os.environ["UVICORN_PORT"] == "9999"  # loaded...
    assert (theirs.port, theirs.root_path, theirs.workers) == (8000, "", 3)  # ...not an option
    assert lines["port"] == (str(theirs.port), "default")
    assert lines["root_path"] == ('""', "default")
    assert lines["workers"] == (str(theirs.workers), "env WEB_CONCURRENCY (from app.env)")


# --- the Python API: uvicorn.run() and uvicorn.Config() keywords -----------------------------


def uvicorn_keywords(function: Any) -> dict[str, Any]:
    parameters = inspect.signature(function).parameters
    return {name: p.default for name, p in parameters.items() if name not in ("self", "app")}


@pytest.mark.parametrize("function", [uvicorn.run, uvicorn.Config.__init__], ids=["run", "Config"])
def test_every_uvicorn_keyword_is_a_config_field_with_uvicorns_default(function):
    fields = {field.name: field for field in dataclasses.fields(Config)}
    keywords = uvicorn_keywords(function)
    assert sorted(set(keywords) - set(fields)) == []
    ours = Config("x:y")
    differ = {
        name
        for name, default in keywords.items()
        if same(name, getattr(ours, name)) != same(name, default)
        and not (name == "forwarded_allow_ips" and default is None)  # resolved later by both
    }
    # uvicorn's default log_config is its own logging dict; aserve's (None) is its own too.
    assert differ == set(DIFFERENT_DEFAULTS) - {"forwarded_allow_ips"} | {"log_config"}


def test_aserve_run_takes_every_uvicorn_run_keyword(monkeypatch):
    served: list[Config] = []
    monkeypatch.setattr("aserve.entry.Server.run", lambda server: served.append(server.config))
    monkeypatch.setattr("aserve.entry.configure_logging", lambda *args, **kwargs: None)
    keywords = uvicorn_keywords(uvicorn.run)
    keywords["log_config"] = None  # uvicorn's own dict would reconfigure the test's logging
    aserve.run("x:y", **keywords)
    assert len(served) == 1
    assert served[0].http == "auto" and served[0].notices == []  # uvicorn's defaults: silent


def test_uvicorn_value_forms_in_python():
    class WSProtocol(asyncio.Protocol):
        pass

    config = Config("x:y", ws=WSProtocol, http="h11", reload_dirs="src", headers=None)
    assert config.reload_dirs == ["src"]
    assert config.headers == []
    assert len(config.notices) == 2
    assert config.notices[1].startswith(f"--ws {__name__}.")
    assert "WSProtocol" in config.notices[1]
    assert Config("x:y", loop="none").notices == []  # asyncio's own loop: it is honoured
    for bad, message in [
        ({"loop": "tokio"}, "loop must be one of auto, asyncio, uvloop, zuvloop, none or"),
        ({"http": "h3"}, "http must be one of auto, h11, httptools, zttp or a protocol class"),
        ({"ws": 3}, "ws must be one of"),
        ({"reload_delay": -1}, "reload_delay must be 0 or more"),
        ({"use_colors": "yes"}, "use_colors must be true, false or None"),
        ({"h11_max_incomplete_event_size": 0}, "h11_max_incomplete_event_size must be a positive"),
        ({"timeout_notify": 0}, "timeout_notify must be greater than 0"),
        ({"callback_notify": 5}, "callback_notify must be a callable"),
        ({"ssl_context_factory": "x"}, "ssl_context_factory must be a callable"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Config("x:y", **bad)


def test_loop_takes_uvicorns_names_and_a_factory_to_import():
    assert loop_factory("none") is asyncio.new_event_loop
    assert loop_factory("asyncio:new_event_loop") is asyncio.new_event_loop
    zuvloop, auto = loop_factory("zuvloop"), loop_factory("auto")
    assert zuvloop is auto
    with pytest.raises(ConfigError, match="loop 'nosuchmodule:f': could not import module"):
        loop_factory("nosuchmodule:f")
    with pytest.raises(ConfigError, match="is not a callable loop factory"):
        loop_factory("asyncio:__name__")


# --- each implemented option behaves as uvicorn's ----------------------------------------------


def test_callback_notify_is_awaited_every_timeout_notify_seconds():
    calls: list[float] = []

    async def notify() -> None:
        calls.append(time.monotonic())

    with serve(hello, callback_notify=notify, timeout_notify=0.3):
        deadline = time.monotonic() + 20
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(calls) >= 3
    assert all(later - earlier >= 0.29 for earlier, later in itertools.pairwise(calls))


async def hello(scope, receive, send):
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["scheme"].encode()})


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("certs")
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(path / "cert.pem")
    cert.private_key_pem.write_to_path(path / "key.pem")
    ca.cert_pem.write_to_path(path / "ca.pem")
    return path


def test_ssl_context_factory_is_called_with_the_config_and_the_default_factory(certs):
    seen = []

    def with_default(config, default):
        context = default()  # from the --ssl-* settings
        seen.append((config, context))
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        return context

    options = {"ssl_certfile": str(certs / "cert.pem"), "ssl_keyfile": str(certs / "key.pem")}
    client = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with serve(hello, ssl_context_factory=with_default, **options) as live:
        url = f"https://127.0.0.1:{live.port}/"
        assert httpx.get(url, verify=client).text == "https"
        old = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(httpx.ConnectError):  # the factory's change is in force
            httpx.get(url, verify=old)
    assert len(seen) == 1
    assert seen[0][0].ssl_certfile == options["ssl_certfile"]


def test_ssl_context_factory_alone_turns_tls_on(certs):
    def own(config, default):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs / "cert.pem", certs / "key.pem")
        return context

    client = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with serve(hello, ssl_context_factory=own) as live:
        assert httpx.get(f"https://127.0.0.1:{live.port}/", verify=client).text == "https"


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda config, default: default(), "called the default factory, which needs ssl_certfile"),
        (lambda config, default: "context", "must return an ssl.SSLContext, got str"),
    ],
)
def test_ssl_context_factory_mistakes_are_one_line(factory, message):
    server = Server(Config(hello, ssl_context_factory=factory, port=0, lifespan="off"))
    with pytest.raises(ConfigError, match=message):
        asyncio.run(server.serve())


def test_log_config_takes_a_configparser_or_an_open_file(tmp_path):
    log_file = tmp_path / "server.log"
    text = f"""
[loggers]
keys=root,aserve_error
[handlers]
keys=file
[formatters]
keys=plain
[logger_root]
handlers=
[logger_aserve_error]
handlers=file
qualname=aserve.error
propagate=0
level=INFO
[handler_file]
class=FileHandler
formatter=plain
args=({str(log_file)!r},)
[formatter_plain]
format=%(message)s
"""
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    ini = tmp_path / "logging.ini"
    ini.write_text(text)
    logger = logging.getLogger("aserve.error")
    try:
        with ini.open() as file:
            for form, line in ((parser, "from a parser"), (file, "from a file")):
                configure_logging(Config("x:y", log_config=form).log_config, None, True)
                logger.info(line)
                for handler in logger.handlers:
                    handler.flush()
    finally:
        for handler in logger.handlers:
            handler.close()
        logger.handlers.clear()
        logger.propagate = True
    assert log_file.read_text().splitlines() == ["from a parser", "from a file"]


@pytest.mark.parametrize("use_colors", [True, False])
def test_use_colors_decides_for_aserves_formatter(use_colors):
    logger = logging.getLogger("aserve.error")
    try:
        configure_logging(None, None, True, use_colors=use_colors)
        formatters = [handler.formatter for handler in logging.getLogger("aserve").handlers]
        assert [getattr(f, "use_colors", "?") for f in formatters] == [use_colors]
        record = logger.makeRecord("aserve.error", logging.INFO, __file__, 1, "hi", (), None)
        assert ("\x1b[32m" in formatters[0].format(record)) is use_colors
    finally:
        logging.getLogger("aserve").handlers.clear()
        logging.getLogger("aserve.access").handlers.clear()


# --- the real command line ---------------------------------------------------------------


def test_a_uvicorn_dockerfile_line_runs_unchanged():
    """`uvicorn main:app --host 0.0.0.0 --port 80 --http httptools --loop uvloop --ws wsproto`
    with `aserve` for `uvicorn` (and a free port): it serves HTTP and WebSockets, and says once
    for each option it ignores what it does instead."""
    server = AserveProcess(
        "lifespan_apps:echo",
        "--app-dir",
        str(APPS),
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--ws",
        "wsproto",
    )
    try:
        running = re.compile(r"running on http://0\.0\.0\.0:(\d+)")
        server.wait_until(lambda: running.search(server.output), "aserve to start")
        port = int(running.search(server.output)[1])
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=10) as websocket:
            websocket.send("ping")
            assert websocket.recv(timeout=10) == "ping"
    finally:
        assert server.stop() == 0
    warnings = [line for line in server.lines if line.startswith("WARNING:")]
    assert warnings == [
        "WARNING:  --http httptools: aserve parses HTTP/1.1 with httptools; option ignored\n",
        "WARNING:  --ws wsproto: aserve runs WebSockets on websockets' sans-I/O layer "
        "(--ws auto); option ignored\n",
    ]


def test_a_uvicorn_environment_runs_unchanged():
    """A deployment configured through uvicorn's environment (a Dockerfile's
    `ENV UVICORN_PORT=80`...) with `aserve` for `uvicorn`: served where and as those variables
    say, the ignored option's line logged as for the flag."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = AserveProcess(
        env={
            "UVICORN_APP": "listeners:app",
            "UVICORN_APP_DIR": str(APPS),
            "UVICORN_HOST": "0.0.0.0",
            "UVICORN_PORT": str(port),
            "UVICORN_ROOT_PATH": "/api",
            "UVICORN_HEADERS": "X-Served-By:node-1 X-Region:eu",
            "UVICORN_ACCESS_LOG": "false",
            # Trust proxy headers from 10.9.9.9 only: UVICORN_* wins over the legacy variable.
            "UVICORN_FORWARDED_ALLOW_IPS": "10.9.9.9",
            "FORWARDED_ALLOW_IPS": "*",
            "UVICORN_HTTP": "h11",
        }
    )
    try:
        server.wait_until(lambda: f"running on http://0.0.0.0:{port}" in server.output, "start")
        response = httpx.get(
            f"http://127.0.0.1:{port}/items", headers={"X-Forwarded-For": "203.0.113.7"}
        )
        assert response.json()["path"] == "/api/items"
        assert response.json()["client"][0] == "127.0.0.1"  # the header was not trusted
        assert response.headers["x-served-by"] == "node-1"
        assert response.headers["x-region"] == "eu"
    finally:
        assert server.stop() == 0
    assert "GET /items" not in server.output  # no access log
    warnings = [line for line in server.lines if line.startswith("WARNING:")]
    assert warnings == [
        "WARNING:  --http h11: aserve parses HTTP/1.1 with httptools; option ignored\n"
    ]


@pytest.mark.once
def test_ignored_options_are_logged_once_for_all_workers():
    server = AserveProcess(
        "lifespan_apps:echo",
        "--app-dir",
        str(APPS),
        "--port",
        "0",
        "--workers",
        "2",
        "--http",
        "h11",
        "--reset-contextvars",
    )
    try:
        port = server.wait_for_port()
        server.wait_until(
            lambda: server.output.count("Application startup complete") == 2, "2 workers"
        )
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
    finally:
        assert server.stop() == 0
    assert server.output.count("--http h11: ") == 1
    assert server.output.count("--reset-contextvars: ") == 1


def test_use_colors_on_a_pipe():
    """--use-colors colours the level names even when stderr is not a terminal; by default a
    pipe gets none (the test's stderr is a pipe)."""
    for flags, coloured in ((["--use-colors"], True), ([], False)):
        server = AserveProcess("lifespan_apps:hello", "--app-dir", str(APPS), "--port", "0", *flags)
        try:
            server.wait_for_port()
        finally:
            server.stop()
        assert ("\x1b[32mINFO:" in server.output) is coloured, server.output


@pytest.mark.parametrize("kind", ["json", "yaml", "ini"])
def test_log_config_files_of_each_kind(kind, tmp_path):
    log_file = tmp_path / "server.log"
    dict_config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(levelname)s %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "filename": str(log_file),
                "formatter": "plain",
            }
        },
        "loggers": {"aserve.error": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    }
    path = tmp_path / f"logging.{kind}"
    if kind == "json":
        path.write_text(json.dumps(dict_config))
    elif kind == "yaml":
        yaml = pytest.importorskip("yaml")
        path.write_text(yaml.safe_dump(dict_config))
    else:
        path.write_text(
            "[loggers]\nkeys=root,aserve_error\n[handlers]\nkeys=file\n[formatters]\nkeys=plain\n"
            "[logger_root]\nhandlers=\n"
            "[logger_aserve_error]\nhandlers=file\nqualname=aserve.error\npropagate=0\n"
            "level=INFO\n"
            f"[handler_file]\nclass=FileHandler\nformatter=plain\nargs=({str(log_file)!r},)\n"
            "[formatter_plain]\nformat=%(levelname)s %(message)s\n"
        )
    server = AserveProcess(
        "lifespan_apps:hello", "--app-dir", str(APPS), "--port", "0", "--log-config", str(path)
    )
    try:
        server.wait_until(
            lambda: log_file.exists() and "running on" in log_file.read_text(), "the log file"
        )
    finally:
        assert server.stop() == 0
    assert "INFO Started server process" in log_file.read_text()
    assert "Started server process" not in server.output  # the file, not stderr


@pytest.mark.once
def test_reload_delay_spaces_restarts_out(tmp_path):
    """uvicorn's --reload-delay: after a restart the reloader looks again only that much
    later, so a change made meanwhile restarts once, no sooner. An ignored option's line is
    logged by the reloader, not again by each server it starts."""
    from test_reload import APP, Reloading

    (tmp_path / "app.py").write_text(APP.format(version="v1"))
    (tmp_path / "message.txt").write_text("hi")
    server = Reloading(tmp_path, "--reload-delay", "3", "--http", "h11")
    try:
        port = int(server.wait_for_log(r"running on http://127\.0\.0\.1:(\d+)")[1])
        url = f"http://127.0.0.1:{port}/"
        server.wait_for_answer(url, "v1 hi")
        (tmp_path / "app.py").write_text(APP.format(version="v2"))
        server.wait_for_log(r"Reloading")
        first = time.monotonic()
        (tmp_path / "app.py").write_text(APP.format(version="v3"))
        server.wait_for_log(r"(?s)Reloading.*Reloading")
        second = time.monotonic()
        server.wait_for_answer(url, "v3 hi")
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    finally:
        server.proc.kill()
    assert second - first >= 2.5
    assert server.log.count("Reloading") == 2
    assert server.log.count("--http h11: ") == 1


def test_print_config_shows_the_lines_of_ignored_options(tmp_path):
    result = subprocess.run(
        [*ASERVE, "x:y", "--print-config", "--http", "h11", "--ws", "wsproto", "--http2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "http2 = true  # flag --http2\n" in result.stdout
    assert 'http = "h11"  # flag --http\n' in result.stdout
    comments = [line for line in result.stdout.splitlines() if line.startswith("# --")]
    assert comments == [
        "# --http h11: aserve parses HTTP/1.1 with httptools; option ignored",
        "# --ws wsproto: aserve runs WebSockets on websockets' sans-I/O layer (--ws auto); "
        "option ignored",
    ]


LOOP_FACTORY = """
import asyncio


class MyLoop(asyncio.SelectorEventLoop):
    pass


def factory():
    return MyLoop()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    name = type(asyncio.get_running_loop()).__name__.encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": name})
"""


def test_a_loop_factory_beside_the_app_as_uvicorn_finds_it(tmp_path):
    """`--loop module:attribute` (uvicorn's form) with the module in --app-dir, not the
    working directory: it is imported before the app, from there."""
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "myloop.py").write_text(LOOP_FACTORY)
    server = AserveProcess(
        "myloop:app",
        "--app-dir",
        str(tmp_path / "project"),
        "--loop",
        "myloop:factory",
        "--lifespan",
        "off",
        "--port",
        "0",
        cwd=tmp_path,
    )
    try:
        port = server.wait_for_port()
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "MyLoop"
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("tls", [False, True])
def test_the_supervisors_startup_line_says_https_for_an_ssl_context_factory(tls):
    from aserve.supervisor import Supervisor

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        factory = (lambda config, default: default()) if tls else None
        supervisor = Supervisor(Config(hello, port=0, ssl_context_factory=factory), [sock])
        scheme = "https" if tls else "http"
        assert supervisor._where() == [f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"]
