"""The command line. Flag names follow uvicorn's wherever a flag means the same thing."""

from __future__ import annotations

import json
import os
import ssl
import sys
from typing import Any

import click
from click.core import ParameterSource

from aserve import __version__
from aserve.compat import UVICORN_ENV_OPTIONS, UVICORN_ENV_PREFIX
from aserve.config import (
    DEFAULT_HTTP2_INITIAL_WINDOW_SIZE,
    DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
    DEFAULT_HTTP2_MAX_FRAME_SIZE,
    DEFAULT_LIMIT_REQUEST_FIELD_SIZE,
    DEFAULT_LIMIT_REQUEST_FIELDS,
    DEFAULT_LIMIT_REQUEST_HEAD,
    DEFAULT_LIMIT_REQUEST_LINE,
    DEFAULT_TIMEOUT_KEEP_ALIVE,
    DEFAULT_TIMEOUT_REQUEST_BODY_IDLE,
    DEFAULT_TIMEOUT_REQUEST_HEADER,
    DEFAULT_TIMEOUT_SSL_HANDSHAKE,
    DEFAULT_TIMEOUT_WORKER_HEALTHCHECK,
    DEFAULT_TIMEOUT_WORKER_STARTUP,
    DEFAULT_WSGI_THREADS,
    LOG_LEVELS,
    ConfigError,
    parse_header_option,
)

EXIT_CONFIG_ERROR = 1
EXIT_STARTUP_FAILURE = 3


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from aserve.protocols import http

        build = "compiled hot path" if http.COMPILED else "pure-Python hot path"
        python = f"{sys.implementation.name} {sys.version.split()[0]}"
        click.echo(f"aserve {__version__} ({python}, {build})")
        ctx.exit()


def _parse_headers(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> list[tuple[str, str]]:
    try:
        return [parse_header_option(header) for header in value]
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


# auto_envvar_prefix: uvicorn's options also read from UVICORN_* variables (see below the command).
@click.command(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "auto_envvar_prefix": UVICORN_ENV_PREFIX,
    }
)
@click.argument("app", required=False, envvar=f"{UVICORN_ENV_PREFIX}_APP")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind socket to this host.")
@click.option(
    "--port",
    type=int,
    default=8000,
    show_default=True,
    help="Bind socket to this port (0: any free port).",
)
@click.option("--uds", default=None, help="Bind to a UNIX domain socket.")
# Several listeners (addresses.py): gunicorn's --bind syntax, beside --uds and --fd.
@click.option(
    "--bind",
    "-b",
    "bind",
    multiple=True,
    metavar="ADDRESS",
    help="Listen on ADDRESS (repeatable): HOST:PORT, [IPV6]:PORT ([::]:PORT takes IPv4 too), "
    "unix:PATH or fd://N. Served beside --uds and --fd; --host and --port only make a "
    "listener without --bind.",
)
@click.option("--fd", type=int, default=None, help="Bind to a socket from this file descriptor.")
# --loop, --ws and --http take uvicorn's names or, as uvicorn's, a "module:attribute" to import;
# Config checks them (compat.py).
@click.option(
    "--loop",
    metavar="[auto|asyncio|uvloop|zuvloop]",
    default="auto",
    show_default=True,
    help='Event loop implementation, or a "module:attribute" loop factory. zuvloop: '
    "uvicorn's, auto is used.",
)
@click.option(
    "--ws",
    metavar="[auto|websockets|websockets-sansio|wsproto|none]",
    default="auto",
    show_default=True,
    help="WebSocket support; none answers upgrades as plain HTTP. websockets-sansio, wsproto "
    'and a "module:attribute": uvicorn\'s, auto is used.',
)
@click.option(
    "--ws-max-size",
    type=int,
    default=16 * 1024 * 1024,
    show_default=True,
    help="Largest WebSocket message in bytes.",
)
@click.option(
    "--ws-max-queue",
    type=int,
    default=32,
    show_default=True,
    help="Incoming WebSocket messages buffered before reading stops.",
)
@click.option(
    "--ws-ping-interval",
    type=float,
    default=20.0,
    show_default=True,
    help="Seconds between WebSocket pings (0 disables them).",
)
@click.option(
    "--ws-ping-timeout",
    type=float,
    default=20.0,
    show_default=True,
    help="Seconds to wait for a pong before dropping the peer.",
)
@click.option(
    "--ws-per-message-deflate",
    type=bool,
    default=True,
    show_default=True,
    help="Negotiate WebSocket per-message-deflate compression.",
)
@click.option(
    "--lifespan",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Lifespan implementation.",
)
@click.option(
    "--interface",
    type=click.Choice(["auto", "asgi3", "asgi2", "wsgi"]),
    default="auto",
    show_default=True,
    help="Application interface; auto tells ASGI 3, ASGI 2 and WSGI apps apart.",
)
# WSGI apps (wsgi.py)
@click.option(
    "--wsgi-threads",
    type=click.IntRange(min=1),
    default=DEFAULT_WSGI_THREADS,
    show_default=True,
    help="Threads running a WSGI app, per process: how many of its requests run at once.",
)
# --reload (reload.py): development restarts, uvicorn's flag names and defaults.
@click.option(
    "--reload",
    is_flag=True,
    default=False,
    help="Restart the server when files change (development; needs watchfiles).",
)
@click.option(
    "--reload-dir",
    "reload_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="Directory to watch with --reload (repeatable). Default: the current directory "
    "and --app-dir.",
)
@click.option(
    "--reload-include",
    "reload_includes",
    multiple=True,
    help="Glob of files that trigger a reload, besides '*.py' (repeatable).",
)
@click.option(
    "--reload-exclude",
    "reload_excludes",
    multiple=True,
    help="Glob of files or directories never triggering a reload (repeatable). "
    "Default: '.*', '.py[cod]', '.sw.*', '~*'.",
)
@click.option(
    "--env-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Environment configuration file (KEY=VALUE lines).",
)
@click.option(
    "--log-config",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Logging configuration file (.json, .yaml or .ini).",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=None,
    help="Log level. [default: info]",
)
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="Enable/disable the access log.",
)
@click.option(
    "--access-log-format",
    default=None,
    help="Access log line as a format string, e.g. "
    "'{client} \"{method} {full_path}\" {status} {bytes} {duration_ms}ms'. "
    "See docs/cli.md for the fields.",
)
@click.option(
    "--proxy-headers/--no-proxy-headers",
    default=True,
    show_default=True,
    help="Trust X-Forwarded-For and X-Forwarded-Proto from --forwarded-allow-ips.",
)
@click.option(
    "--forwarded-allow-ips",
    default=None,
    help="Comma-separated IPs or CIDR networks to trust proxy headers from, or '*'. "
    "Defaults to $FORWARDED_ALLOW_IPS or 127.0.0.1.",
)
@click.option(
    "--root-path", default="", help="Set the ASGI root_path for an app mounted below a path prefix."
)
@click.option(
    "--limit-concurrency",
    type=int,
    default=None,
    help="Maximum concurrent connections or tasks before answering 503.",
)
# Request limits (hardening; docs/security.md).
@click.option(
    "--limit-request-line",
    type=int,
    default=DEFAULT_LIMIT_REQUEST_LINE,
    show_default=True,
    help="Largest request line (method, target, version) in bytes; longer: 414.",
)
@click.option(
    "--limit-request-field-size",
    type=int,
    default=DEFAULT_LIMIT_REQUEST_FIELD_SIZE,
    show_default=True,
    help="Largest header field (name: value) in bytes; larger: 431.",
)
@click.option(
    "--limit-request-fields",
    type=int,
    default=DEFAULT_LIMIT_REQUEST_FIELDS,
    show_default=True,
    help="Most header fields in a request (and trailer fields); more: 431.",
)
@click.option(
    "--limit-request-head",
    type=int,
    default=DEFAULT_LIMIT_REQUEST_HEAD,
    show_default=True,
    help="Largest request head (request line and fields) in bytes; larger: 431.",
)
@click.option(
    "--limit-request-body",
    type=int,
    default=None,
    help="Largest request body in bytes; larger: 413. Default: unlimited.",
)
# HTTP/2 (docs/http2.md); --http2/--no-http2 is with uvicorn's options below.
@click.option(
    "--http2-max-concurrent-streams",
    type=int,
    default=DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
    show_default=True,
    help="Streams a client may have open at once on one HTTP/2 connection; more are refused "
    "(REFUSED_STREAM).",
)
@click.option(
    "--http2-initial-window-size",
    type=int,
    default=DEFAULT_HTTP2_INITIAL_WINDOW_SIZE,
    show_default=True,
    help="Bytes of a request body an HTTP/2 client may send before its app reads them "
    "(flow control window per stream, 65535 to 2147483647).",
)
@click.option(
    "--http2-max-frame-size",
    type=int,
    default=DEFAULT_HTTP2_MAX_FRAME_SIZE,
    show_default=True,
    help="Largest HTTP/2 frame payload accepted, in bytes (16384 to 16777215).",
)
# Request deadlines (hardening; docs/security.md).
@click.option(
    "--timeout-request-header",
    type=float,
    default=DEFAULT_TIMEOUT_REQUEST_HEADER,
    show_default=True,
    help="Seconds for a whole request head to arrive, from its first byte (from the "
    "accept for a connection's first request: on a TCP socket aserve binds, the kernel "
    "hands it over with its first bytes); late: 408. Also bounds a --proxy-protocol header.",
)
@click.option(
    "--timeout-request-body-idle",
    type=float,
    default=DEFAULT_TIMEOUT_REQUEST_BODY_IDLE,
    show_default=True,
    help="Seconds a request body may stop arriving; then 408, or a close once the response "
    "started.",
)
@click.option(
    "--timeout-request",
    type=float,
    default=None,
    help="Seconds an app may take to start its response before it is cancelled and the "
    "client gets 503. Default: no limit.",
)
@click.option(
    "--backlog",
    type=int,
    default=2048,
    show_default=True,
    help="Maximum number of waiting connections.",
)
@click.option(
    "--timeout-keep-alive",
    type=float,
    default=DEFAULT_TIMEOUT_KEEP_ALIVE,
    show_default=True,
    help="Close idle keep-alive connections after this many seconds. Keep it longer than "
    "the idle timeout of any load balancer in front.",
)
@click.option(
    "--timeout-graceful-shutdown",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for in-flight requests on shutdown.",
)
@click.option(
    "--header",
    "headers",
    multiple=True,
    callback=_parse_headers,
    help="Extra response header, NAME:VALUE (repeatable).",
)
@click.option(
    "--server-header/--no-server-header",
    default=True,
    show_default=True,
    help="Send a 'Server: aserve' header.",
)
@click.option(
    "--date-header/--no-date-header", default=True, show_default=True, help="Send a 'Date' header."
)
# Connection edge: PROXY protocol
@click.option(
    "--proxy-protocol",
    is_flag=True,
    default=False,
    help="Require a HAProxy PROXY protocol header (v1 or v2) on every connection; accepted "
    "only from --forwarded-allow-ips peers.",
)
# Connection edge: TLS (uvicorn's names and meanings)
@click.option("--ssl-keyfile", default=None, help="SSL key file.")
@click.option("--ssl-certfile", default=None, help="SSL certificate file; turns TLS on.")
@click.option("--ssl-keyfile-password", default=None, help="SSL keyfile password.")
@click.option(
    "--ssl-version",
    type=int,
    default=int(ssl.PROTOCOL_TLS_SERVER),
    show_default=True,
    help="SSL version to use (see stdlib ssl module's).",
)
@click.option(
    "--ssl-cert-reqs",
    type=int,
    default=int(ssl.CERT_NONE),
    show_default=True,
    help="Whether client certificate is required (see stdlib ssl module's): 0 none, "
    "1 optional, 2 required.",
)
@click.option("--ssl-ca-certs", default=None, help="CA certificates file to verify clients with.")
@click.option(
    "--ssl-ciphers",
    default=None,
    help="Ciphers to use (see stdlib ssl module's). [default: Python's own list]",
)
@click.option(
    "--timeout-ssl-handshake",
    type=float,
    default=DEFAULT_TIMEOUT_SSL_HANDSHAKE,
    show_default=True,
    help="Close a connection whose TLS handshake is not done after this many seconds.",
)
@click.option(
    "--factory", is_flag=True, default=False, help="APP is a factory: call it to get the app."
)
@click.option(
    "--app-dir",
    default="",
    help="Look for APP in this directory (added to sys.path). Default: the current directory.",
)
# Workers under a supervisor (supervisor.py)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Number of worker processes, under a supervisor (1 included). "
    "Defaults to $WEB_CONCURRENCY, else one process without a supervisor.",
)
@click.option(
    "--timeout-worker-healthcheck",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT_WORKER_HEALTHCHECK,
    show_default=True,
    help="Seconds a worker's event loop may go without answering its heartbeat before "
    "its stack is logged and it is replaced.",
)
@click.option(
    "--timeout-worker-startup",
    type=click.FloatRange(min=0),
    default=DEFAULT_TIMEOUT_WORKER_STARTUP,
    show_default=True,
    help="Seconds a worker may take to start (app import and lifespan startup) before its "
    "stack is logged and it is killed, as a start-up failure. 0: no limit.",
)
@click.option(
    "--limit-max-requests",
    type=click.IntRange(min=1),
    default=None,
    help="Replace a worker after it has served this many requests.",
)
@click.option(
    "--limit-max-requests-jitter",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Add a random 0..N to each worker's --limit-max-requests, so they do not all "
    "restart at once.",
)
@click.option(
    "--limit-worker-memory",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Replace a worker whose own memory (USS: not the pages it shares, such as a "
    "--preload app) passes this many megabytes.",
)
@click.option(
    "--preload",
    is_flag=True,
    default=False,
    help="Import the app once in the supervisor, before forking the workers, so they share "
    "its memory. SIGHUP then restarts the workers on the code already imported.",
)
# -- settings from the environment and pyproject.toml (settings.py) --
@click.option(
    "--print-config",
    is_flag=True,
    default=False,
    help="Show the effective settings and where each came from (flag, env, file, default), "
    "then exit.",
)
# Metrics
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve Prometheus metrics at /metrics on this port (its own listener, never the "
    "app's). Off by default. See docs/metrics.md.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Bind the metrics listener to this host.",
)
# Health for orchestrators and drain (health.py)
@click.option(
    "--health-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve GET /livez and /readyz on this port (a listener of its own, never the app's; "
    "under --workers the supervisor answers for all). Off by default. See docs/deployment.md.",
)
@click.option(
    "--health-host",
    default="127.0.0.1",
    show_default=True,
    help="Bind the health listener to this host (0.0.0.0 for Kubernetes probes, which come "
    "from the kubelet to the pod's IP).",
)
@click.option(
    "--drain-delay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="On SIGTERM/SIGINT, answer /readyz with 503 and keep serving for this many seconds "
    "(while load balancers stop sending traffic), then shut down gracefully.",
)
# WebSocket close wait, log format (extensions)
@click.option(
    "--ws-close-timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait for the peer to finish a WebSocket closing handshake.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Server and access logs as text lines or as one JSON object a line.",
)
# uvicorn's other options (compat.py, docs/migrating.md): every uvicorn flag is accepted.
@click.option(
    "--http2/--no-http2",
    default=True,
    show_default=True,
    help="HTTP/2 beside HTTP/1.1: by ALPN on TLS, by prior knowledge or Upgrade: h2c on "
    "cleartext (docs/http2.md).",
)
@click.option(
    "--http",
    metavar="[auto|h11|httptools|zttp]",
    default="auto",
    show_default=True,
    help="uvicorn's HTTP implementation choice: aserve always parses HTTP/1.1 with "
    "httptools, and says so once for any other value than auto.",
)
@click.option(
    "--use-colors/--no-use-colors",
    default=None,
    help="Colour the log level names. [default: when writing to a terminal]",
)
@click.option(
    "--reload-delay",
    type=click.FloatRange(min=0),
    default=0.25,
    show_default=True,
    help="Seconds between looks for changed files with --reload.",
)
@click.option(
    "--h11-max-incomplete-event-size",
    type=click.IntRange(min=1),
    default=None,
    help="uvicorn's h11 buffer size: ignored (no h11 here; --limit-request-head bounds a "
    "request head).",
)
@click.option(
    "--reset-contextvars",
    is_flag=True,
    default=False,
    help="uvicorn's: ignored, as every request already runs in its own copy of the context "
    "the server started in.",
)
@click.option(
    "--version",
    is_flag=True,
    callback=_print_version,
    expose_value=False,
    is_eager=True,
    help="Show the version and exit.",
)
def cli(
    app: str | None,
    headers: list[tuple[str, str]],
    app_dir: str,
    print_config: bool,
    **options: Any,
) -> None:
    """Serve APP, given as "module:attribute" (for example "main:app").

    Every option can also come from an ASERVE_* environment variable (ASERVE_PORT=8080) or from
    [tool.aserve] in ./pyproject.toml (port = 8080), and uvicorn's from their UVICORN_*
    variables too (UVICORN_PORT=8080): flags win, then ASERVE_*, then UVICORN_*, then the file.
    """
    from aserve.entry import serve
    from aserve.lifespan import LifespanFailure
    from aserve.supervisor import WorkerStartupFailure

    sources: dict[str, str] = {}
    try:
        options, sources = _settings(app=app, headers=headers, app_dir=app_dir or ".", **options)
        _check_bind(options, sources)
        for name in ("ws_ping_interval", "ws_ping_timeout", "timeout_worker_startup"):
            if options[name] == 0:  # 0 turns it off, on the command line and everywhere else
                options[name] = None
        if print_config:
            _print_config(options, sources)
            return
        if options["app"] is None:
            raise ConfigError("no APP given (the argument, ASERVE_APP or app in [tool.aserve])")
        for name in ("reload_dirs", "reload_includes", "reload_excludes"):
            options[name] = list(options[name] or ()) or None
        serve(**options)
    except ConfigError as exc:
        _fail(_credited(str(exc), sources), EXIT_CONFIG_ERROR)
    except LifespanFailure as exc:
        _fail(f"application startup failed: {exc}", EXIT_STARTUP_FAILURE)
    except WorkerStartupFailure as exc:
        _fail(str(exc), EXIT_STARTUP_FAILURE)


# uvicorn reads each of its options from UVICORN_<NAME>: so does aserve, for those options only
# (an option of aserve's own is read from ASERVE_<NAME>, by settings.py). Click parses the value
# as uvicorn's click does: booleans, choices, and repeatable options split on whitespace (on ":"
# for paths).
for _param in cli.params:
    _param.allow_from_autoenv = _param.name in UVICORN_ENV_OPTIONS


def _settings(**options: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The options with ASERVE_* variables and [tool.aserve] applied where no flag was given.

    Returns the options and, for each, where it came from. A value click read from an
    environment variable (uvicorn's UVICORN_*, a legacy one) counts as the environment, under
    ASERVE_* variables and over the file.
    """
    from aserve import settings

    ctx = click.get_current_context()
    params = {param.name: param for param in ctx.command.params if param.name}
    sources: dict[str, str] = {}
    for name in options:
        source = ctx.get_parameter_source(name)
        if source is ParameterSource.COMMANDLINE:
            sources[name] = "argument" if name == "app" else f"flag {_flag_name(params[name])}"
        elif source is ParameterSource.ENVIRONMENT:
            sources[name] = f"env {_variable(ctx, params[name])}"
    # The env file whose ASERVE_* lines are settings: the flag's, or UVICORN_ENV_FILE's unless
    # ASERVE_ENV_FILE names one (settings.load then reads that, else pyproject's env_file).
    env_file = None
    if "env_file" in sources and not (
        sources["env_file"].startswith("env ") and settings.env_name("env_file") in os.environ
    ):
        env_file = options["env_file"]
    for name, setting in settings.load(os.environ, os.getcwd(), env_file).items():
        own_variable = sources.get(name, "").startswith("env ")
        if name in sources and not (
            own_variable and setting.source.startswith(f"env {settings.ENV_PREFIX}")
        ):
            continue  # a flag wins; so does an ASERVE_ variable over a parameter's own (legacy) one
        options[name] = setting.value
        sources[name] = setting.source
    return options, sources


def _check_bind(options: dict[str, Any], sources: dict[str, str]) -> None:
    """--bind with --host or --port given too: one would be silently unused, so say so."""
    options["bind"] = list(options.get("bind") or ())
    given = [name for name in ("host", "port") if name in sources]
    if options["bind"] and given:
        names = " and ".join(f"--{name}" for name in given)
        raise ConfigError(
            f"{names} ({', '.join(sources[name] for name in given)}) "
            f"make{'s' if len(given) == 1 else ''} a listener only without --bind: give that "
            "address as one more --bind HOST:PORT"
        )


def _flag_name(param: click.Parameter) -> str:
    return next((opt for opt in param.opts if opt.startswith("--")), param.name or "")


def _variable(ctx: click.Context, param: click.Parameter) -> str:
    """The environment variable click reads `param` from: its own, else UVICORN_<NAME>."""
    if isinstance(param.envvar, str):
        return param.envvar
    return f"{ctx.auto_envvar_prefix}_{(param.name or '').upper()}"


def _credited(message: str, sources: dict[str, str]) -> str:
    """A setting's error (`port must be ...`) prefixed with where the setting came from when it
    was not the command line (`env UVICORN_PORT: port must be ...`): the variable or file to fix."""
    source = sources.get(message.split(" ", 1)[0], "")
    return f"{source}: {message}" if source.startswith(("env ", "file ")) else message


def _print_config(options: dict[str, Any], sources: dict[str, str]) -> None:
    """Every setting with its effective value (after validation) and its source, then as
    comments the listeners and the lines the server would log for options it ignores."""
    from aserve.config import Config
    from aserve.settings import field_types

    config = Config(**options)
    for name in field_types():
        value = getattr(config, name)
        click.echo(f"{name} = {_show(value)}  # {sources.get(name, 'default')}")
    # What bind, uds, fd, host and port add up to (socket activation aside).
    click.echo(f"# listeners: {', '.join(str(address) for address in config.listeners)}")
    for line in config.notices:
        click.echo(f"# {line}")


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value) if not isinstance(value, str) else value)


def main(argv: list[str] | None = None) -> None:
    """Entry point: a usage error is one line naming the problem and exit code 1."""
    try:
        code = cli.main(args=argv, prog_name="aserve", standalone_mode=False)
    except click.BadParameter as exc:
        param, ctx = exc.param, exc.ctx
        source = param and param.name and ctx and ctx.get_parameter_source(param.name)
        if source is ParameterSource.ENVIRONMENT:
            # Nowhere on the command line: name the variable, and the flag it stands for.
            exc.param_hint = f"{_variable(ctx, param)} ({_flag_name(param)})"
        _fail(exc.format_message(), EXIT_CONFIG_ERROR)
    except click.UsageError as exc:
        _fail(exc.format_message() + " (see 'aserve --help')", EXIT_CONFIG_ERROR)
    except click.Abort:
        _fail("aborted", EXIT_CONFIG_ERROR)
    else:
        sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)
