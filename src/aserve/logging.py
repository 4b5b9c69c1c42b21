"""Logging set-up and the access log.

Loggers: ``aserve.error`` (server events, app errors) and ``aserve.access`` (one line per
response). The access log does no work at all when it is off, and everything a client controls
is escaped before it reaches a log line, so a request cannot forge log lines or send terminal
escapes to an operator's screen.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import sys
from collections.abc import Callable
from typing import Any

from aserve.status import reason_phrase

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

error_logger = logging.getLogger("aserve.error")

LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}

_DEFAULT_FORMATTER = "aserve.logging.DefaultFormatter"
LOGGING_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "default": {"()": _DEFAULT_FORMATTER, "fmt": "%(levelprefix)s %(message)s"},
        "access": {"()": _DEFAULT_FORMATTER, "fmt": "%(levelprefix)s %(message)s"},
    },
    "handlers": {
        "default": {
            "formatter": "default",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
        },
        "access": {
            "formatter": "access",
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
        },
    },
    "loggers": {
        "aserve": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "aserve.error": {"level": "INFO"},
        "aserve.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
    },
}

# --log-format json: the same handlers, one JSON object a line (see JsonFormatter).
JSON_LOGGING_CONFIG: dict[str, Any] = {
    **LOGGING_CONFIG,
    "formatters": {
        "default": {"()": "aserve.logging.JsonFormatter"},
        "access": {"()": "aserve.logging.JsonFormatter"},
    },
}

_LEVEL_COLOURS = {
    TRACE: "\x1b[34m",
    logging.DEBUG: "\x1b[36m",
    logging.INFO: "\x1b[32m",
    logging.WARNING: "\x1b[33m",
    logging.ERROR: "\x1b[31m",
    logging.CRITICAL: "\x1b[91m",
}


class DefaultFormatter(logging.Formatter):
    """uvicorn's look: ``INFO:     message``, coloured only when writing to a terminal."""

    def __init__(
        self, fmt: str | None = None, datefmt: str | None = None, use_colors: bool | None = None
    ) -> None:
        super().__init__(fmt=fmt, datefmt=datefmt)
        self.use_colors = use_colors

    def formatMessage(self, record: logging.LogRecord) -> str:
        prefix = f"{record.levelname}:".ljust(9)
        if self._colours_for(record):
            colour = _LEVEL_COLOURS.get(record.levelno, "")
            prefix = f"{colour}{prefix}\x1b[0m"
        record.__dict__["levelprefix"] = prefix
        return super().formatMessage(record)

    def _colours_for(self, record: logging.LogRecord) -> bool:
        if self.use_colors is not None:
            return self.use_colors
        stream = sys.stdout if record.name == "aserve.access" else sys.stderr
        return bool(getattr(stream, "isatty", None) and stream.isatty())


class JsonFormatter(logging.Formatter):
    """One JSON object a line: `time` (UTC, ISO 8601), `level`, `logger`, `message`, the
    access-log fields of an access line, and `exc_info` (the traceback) when there is one.

    json.dumps escapes what a client controls (control characters, quotes, and everything
    outside ASCII), so a value can never break the line or reach a terminal raw.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__.get("access")
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def _iso_time(created: float) -> str:
    import datetime

    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def configure_logging(
    log_config: Any,
    log_level: str | int | None,
    access_log: bool,
    log_format: str = "text",
    use_colors: bool | None = None,
) -> None:
    """Apply the default config in the chosen format (or the user's file or dict, which then
    decides the format), then the level and access switch.

    `log_config` takes uvicorn's forms: a dictConfig dict, a .json/.yaml/.ini path, or a
    `configparser.RawConfigParser` or open file for `fileConfig`. `use_colors` (None: colours
    on a terminal) applies to aserve's text format, also where a dict config uses it.
    """
    if log_config is None:
        if log_format == "json":
            logging.config.dictConfig(JSON_LOGGING_CONFIG)
        else:
            logging.config.dictConfig(_with_colours(LOGGING_CONFIG, use_colors))
    elif isinstance(log_config, dict):
        logging.config.dictConfig(_with_colours(log_config, use_colors))
    elif isinstance(log_config, str | os.PathLike):
        _load_log_config_file(os.fspath(log_config))
    else:  # a RawConfigParser or an open file
        logging.config.fileConfig(log_config, disable_existing_loggers=False)
    if log_level is not None:
        set_log_level(log_level)
    if not access_log:
        access = logging.getLogger("aserve.access")
        access.handlers = []
        access.propagate = False


def _with_colours(config: dict[str, Any], use_colors: bool | None) -> dict[str, Any]:
    """`config` (a copy) with `use_colors` given to every formatter that is aserve's text one
    (another formatter class may not take the argument)."""
    if use_colors is None:
        return config
    formatters = {
        name: {**spec, "use_colors": use_colors}
        if isinstance(spec, dict) and spec.get("()") in (DefaultFormatter, _DEFAULT_FORMATTER)
        else spec
        for name, spec in config.get("formatters", {}).items()
    }
    return {**config, "formatters": formatters}


def set_log_level(log_level: str | int) -> None:
    """The level of aserve's loggers, by name (`"debug"`) or number."""
    level = LEVELS[log_level.lower()] if isinstance(log_level, str) else log_level
    for name in ("aserve", "aserve.error", "aserve.access"):
        logging.getLogger(name).setLevel(level)


def _load_log_config_file(path: str) -> None:
    from aserve.errors import ConfigError

    if not os.path.exists(path):
        raise ConfigError(f"log config file {path!r} does not exist")
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as file:
            logging.config.dictConfig(json.load(file))
    elif path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"log config {path!r} is YAML; install PyYAML to read it") from None
        with open(path, encoding="utf-8") as file:
            logging.config.dictConfig(yaml.safe_load(file))
    else:
        logging.config.fileConfig(path, disable_existing_loggers=False)


# --- escaping -------------------------------------------------------------------------------

_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}
_ESCAPES[ord('"')] = '\\"'
_ESCAPES[ord("\\")] = "\\\\"


def escape(text: str) -> str:
    """Make client-controlled text safe for one log line (no CR/LF/ESC, quotes escaped)."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(_ESCAPES.get(ord(ch), ch if ch.isprintable() else repr(ch)[1:-1]) for ch in text)


def escape_bytes(raw: bytes) -> str:
    return escape(raw.decode("latin-1"))


# --- access log -----------------------------------------------------------------------------

DEFAULT_ACCESS_LOG_FORMAT = (
    '{client} - "{method} {full_path} HTTP/{http_version}" {status} {status_phrase}'
)


def _header(name: bytes) -> Callable[[AccessRecord], str]:
    def get(record: AccessRecord) -> str:
        for key, value in record.scope["headers"]:
            if key == name:
                return escape_bytes(value)
        return "-"

    return get


def _client(record: AccessRecord) -> str:
    client = record.scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


def _full_path(record: AccessRecord) -> str:
    scope = record.scope
    path = escape(scope["path"])
    query = scope["query_string"]
    return f"{path}?{escape_bytes(query)}" if query else path


def _status_phrase(record: AccessRecord) -> str:
    return reason_phrase(record.status)


ACCESS_LOG_FIELDS: dict[str, Callable[[AccessRecord], object]] = {
    "client": _client,
    "client_ip": lambda r: r.scope["client"][0] if r.scope.get("client") else "-",
    "method": lambda r: escape(r.scope["method"]),
    "path": lambda r: escape(r.scope["path"]),
    "query": lambda r: escape_bytes(r.scope["query_string"]),
    "full_path": _full_path,
    "http_version": lambda r: r.scope["http_version"],
    "scheme": lambda r: r.scope["scheme"],
    "status": lambda r: r.status,
    "status_phrase": _status_phrase,
    "bytes": lambda r: r.body_bytes,
    "duration": lambda r: f"{r.duration:.6f}",
    "duration_ms": lambda r: f"{r.duration * 1000:.3f}",
    "user_agent": _header(b"user-agent"),
    "referer": _header(b"referer"),
    "request_id": _header(b"x-request-id"),
}


class AccessRecord:
    """What the access log needs about one response; built only when the log is on."""

    __slots__ = ("body_bytes", "duration", "scope", "status")

    def __init__(self, scope: dict[str, Any], status: int, body_bytes: int, duration: float):
        self.scope = scope
        self.status = status
        self.body_bytes = body_bytes
        self.duration = duration


def access_fields(record: AccessRecord) -> dict[str, Any]:
    """Every access-log field as a JSON value, unescaped (the JSON encoder escapes): numbers
    as numbers, a missing header or client as null."""
    scope = record.scope
    client = scope.get("client")
    wanted: dict[bytes, str | None] = {b"user-agent": None, b"referer": None, b"x-request-id": None}
    for name, value in scope["headers"]:
        if name in wanted and wanted[name] is None:
            wanted[name] = value.decode("latin-1")
    path = scope["path"]
    query = scope["query_string"].decode("latin-1")
    return {
        "client": f"{client[0]}:{client[1]}" if client else None,
        "client_ip": client[0] if client else None,
        "method": scope.get("method", "GET"),  # (a WebSocket scope has none)
        "path": path,
        "query": query,
        "full_path": f"{path}?{query}" if query else path,
        "http_version": scope["http_version"],
        "scheme": scope["scheme"],
        "status": record.status,
        "status_phrase": _status_phrase(record),
        "bytes": record.body_bytes,
        "duration": round(record.duration, 6),
        "duration_ms": round(record.duration * 1000, 3),
        "user_agent": wanted[b"user-agent"],
        "referer": wanted[b"referer"],
        "request_id": wanted[b"x-request-id"],
    }


class AccessLog:
    """Formats and emits access lines; `enabled` is False when nothing would be written.

    `structured` (`--log-format json`): each line also carries every field, unescaped, as the
    record's `access` attribute, which `JsonFormatter` (or any formatter) can write out.
    """

    __slots__ = ("_fields", "_format", "_logger", "enabled", "structured")

    def __init__(self, enabled: bool, fmt: str | None = None, structured: bool = False) -> None:
        import string

        self.structured = structured
        self._logger = logging.getLogger("aserve.access")
        self._format = fmt or DEFAULT_ACCESS_LOG_FORMAT
        self._fields = tuple(
            name for _, name, _, _ in string.Formatter().parse(self._format) if name
        )
        self.enabled = enabled and self._logger.isEnabledFor(logging.INFO)

    def log(self, scope: dict[str, Any], status: int, body_bytes: int, duration: float) -> None:
        record = AccessRecord(scope, status, body_bytes, duration)
        values = {name: ACCESS_LOG_FIELDS[name](record) for name in self._fields}
        if self.structured:
            extra = {"access": access_fields(record)}
            self._logger.info(self._format.format_map(values), extra=extra)
        else:
            self._logger.info(self._format.format_map(values))
