"""Settings from outside the command line: ASERVE_* variables, [tool.aserve] in pyproject.toml.

Both are derived from `Config`'s fields and their type hints, so a field added to `Config` can
be set both ways with no change here. This module only reads and converts; `Config` validates.
Precedence (applied by the CLI): flags > environment > pyproject.toml > defaults, where the
environment includes the variables of an --env-file that the process environment lacks, and
uvicorn's UVICORN_* variables (read by click, in cli.py) under ASERVE_* ones, over legacy ones.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from aserve.config import Config, read_env_file
from aserve.errors import ConfigError

ENV_PREFIX = "ASERVE_"
PYPROJECT = "pyproject.toml"
# ASERVE_* variables that are not settings: switches of the build, the benchmarks and the test
# suite (and any ASERVE_TEST_* a test passes to an app).
RESERVED_ENV = frozenset(
    {
        "ASERVE_COMPILE",
        "ASERVE_NO_EXTENSIONS",
        "ASERVE_REQUIRE_COMPILED",
        "ASERVE_AUTOBAHN_SERVER_CMD",
        "ASERVE_STALL_LOG",
    }
)
RESERVED_ENV_PREFIX = "ASERVE_TEST_"
# Variables other servers established; an ASERVE_* variable for the same setting wins.
LEGACY_ENV = {"FORWARDED_ALLOW_IPS": "forwarded_allow_ips", "WEB_CONCURRENCY": "workers"}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NONE = frozenset({"", "none"})


@dataclass(frozen=True)
class Setting:
    """A value from outside the command line and where it came from (for --print-config)."""

    value: Any
    source: str


def field_types() -> dict[str, Any]:
    """Config's settable fields and their type hints, in declaration order (not the
    callables only Python can give)."""
    hints = typing.get_type_hints(Config)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(Config)
        if f.init and not f.metadata.get("python_only")
    }


def is_reserved(key: str) -> bool:
    return key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIX)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load(
    environ: Mapping[str, str],
    directory: str | os.PathLike[str],
    env_file: str | os.PathLike[str] | None = None,
) -> dict[str, Setting]:
    """Settings from the environment and from `directory`'s pyproject.toml, environment first.

    The env file (`env_file`, else the one these settings name) counts as the environment for
    the variables the environment does not have, as when it is loaded with dotenv.
    """
    settings = from_pyproject(Path(directory) / PYPROJECT)
    settings.update(from_environment(environ))
    if env_file is None and "env_file" in settings:
        env_file = settings["env_file"].value
    if env_file is not None:
        settings.update(from_env_file(env_file, environ))
    return settings


def from_env_file(path: str | os.PathLike[str], environ: Mapping[str, str]) -> dict[str, Setting]:
    """The settings an env file adds to `environ`: its ASERVE_* and legacy variables that
    `environ` lacks, each credited to the file (`env ASERVE_PORT (from .env)`)."""
    name = os.fspath(path)
    added = {key: value for key, value in read_env_file(path).items() if key not in environ}
    try:
        merged = from_environment({**environ, **added})
    except ConfigError as exc:  # `environ` alone was read already: the file's variable
        raise ConfigError(f"env file {name!r}: {exc}") from None
    found = {}
    for field, setting in merged.items():
        variable = setting.source.removeprefix("env ")
        if variable not in added:
            continue
        if field == "env_file":
            raise ConfigError(f"env file {name!r}: {variable} cannot name another env file")
        found[field] = Setting(setting.value, f"{setting.source} (from {name})")
    return found


def from_environment(environ: Mapping[str, str]) -> dict[str, Setting]:
    types_ = field_types()
    settings: dict[str, Setting] = {}
    for legacy, name in LEGACY_ENV.items():
        if name in types_ and legacy in environ:
            settings[name] = _convert(name, environ[legacy], types_[name], f"env {legacy}")
    for key, text in environ.items():
        if not key.startswith(ENV_PREFIX) or is_reserved(key):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in types_ or key != env_name(name):
            known = [env_name(field) for field in types_]
            raise ConfigError(f"unknown environment variable {key}{_did_you_mean(key, known)}")
        settings[name] = _convert(name, text, types_[name], f"env {key}")
    return settings


def from_pyproject(path: Path) -> dict[str, Setting]:
    """`[tool.aserve]` of `path`, if the file exists and has that table."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    table = document.get("tool", {}).get("aserve")
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.aserve] must be a table")
    types_ = field_types()
    settings = {}
    for key, value in table.items():
        if key not in types_:
            hint = _did_you_mean(key, list(types_))
            raise ConfigError(f"{path} [tool.aserve]: unknown key {key!r}{hint}")
        settings[key] = _convert(key, value, types_[key], f"file {path}")
    return settings


def _did_you_mean(word: str, choices: list[str]) -> str:
    import difflib  # only on an error

    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _convert(name: str, value: Any, hint: Any, source: str) -> Setting:
    where = source.split(" ", 1)[1] if source.startswith("env ") else f"{name} in {source[5:]}"
    try:
        converted = convert(value, hint)
    except ValueError:
        raise ConfigError(f"{where}: expected {describe(hint)}, got {value!r}") from None
    return Setting(converted, source)


# --- conversion by type hint ------------------------------------------------------------------


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _is_text(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    return hint in (str, Any, os.PathLike) or origin in (Literal, os.PathLike)


def _is_list(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return typing.get_args(hint)[-1:] == (Ellipsis,)
    return hint is list or origin in (list, collections.abc.Sequence, typing.Sequence)


def _is_pair(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple and Ellipsis not in typing.get_args(hint)


def _item_type(hint: Any) -> Any:
    args = typing.get_args(hint)
    return args[0] if args else str


def describe(hint: Any) -> str:
    """What a value for `hint` looks like, for error messages."""
    words = []
    for member in _members(hint):
        if member is type(None):
            continue
        if member is bool:
            words.append("true or false (1/0, yes/no)")
        elif member is int:
            words.append("an integer")
        elif member is float:
            words.append("a number")
        elif typing.get_origin(member) is Literal:
            words.append("one of " + ", ".join(map(str, typing.get_args(member))))
        elif _is_text(member):
            words.append("a string")
        elif _is_pair(member):
            count = len(typing.get_args(member))
            words.append("NAME:VALUE" if count == 2 else ":".join(["VALUE"] * count))
        elif _is_list(member):
            words.append(f"a (comma-separated) list of {describe(_item_type(member))}")
        elif member is dict or typing.get_origin(member) is dict:
            words.append("a table")
        else:
            words.append(getattr(member, "__name__", str(member)))
    return " or ".join(dict.fromkeys(words))


def convert(value: Any, hint: Any) -> Any:
    """`value` (an environment string or a TOML value) as the type `hint` asks for.

    Raises ValueError with `describe(hint)` when it cannot be one. Strings are parsed: booleans
    as 1/0, true/false, yes/no, on/off; lists comma-separated; an empty string or "none" is
    None where the setting allows None.
    """
    members = _members(hint)
    optional = type(None) in members
    if isinstance(value, str):
        return _from_text(value, members, optional, hint)
    for member in members:
        if member is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if member is int and isinstance(value, int):
            return value
        if member is float and isinstance(value, (int, float)):
            return float(value)
        if (_is_list(member) or _is_pair(member)) and isinstance(value, list):
            if _is_pair(member):
                return _pair([str(item) for item in value], member, hint)
            return [convert(item, _item_type(member)) for item in value]
        if (member is dict or typing.get_origin(member) is dict) and isinstance(value, dict):
            return value
        if member is Any:
            return value
    raise ValueError(describe(hint))


def _from_text(text: str, members: tuple[Any, ...], optional: bool, hint: Any) -> Any:
    stripped = text.strip()
    if optional and stripped.lower() in _NONE:
        return None
    for member in members:
        if member is bool:
            if stripped.lower() in _TRUE:
                return True
            if stripped.lower() in _FALSE:
                return False
        elif member is int:
            try:
                return int(stripped)
            except ValueError:
                pass
        elif member is float:
            try:
                return float(stripped)
            except ValueError:
                pass
    if any(_is_text(member) for member in members):
        return text
    for member in members:
        if _is_pair(member):
            return _pair(stripped.split(":", len(typing.get_args(member)) - 1), member, hint)
        if _is_list(member):
            item = _item_type(member)
            return [convert(part.strip(), item) for part in stripped.split(",") if part.strip()]
    raise ValueError(describe(hint))


def _pair(parts: list[str], member: Any, hint: Any) -> tuple[Any, ...]:
    args = typing.get_args(member)
    if len(parts) != len(args):
        raise ValueError(describe(hint))
    return tuple(convert(part.strip(), arg) for part, arg in zip(parts, args, strict=True))
