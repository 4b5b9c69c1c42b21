"""Settings beyond flags: ASERVE_* variables, [tool.aserve] in pyproject.toml, --print-config."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from aserve import settings
from aserve.config import Config
from aserve.errors import ConfigError

SRC = Path(__file__).parent.parent / "src" / "aserve"


# --- every field, both ways -------------------------------------------------------------------


# The converter's order of preference: a value that parses as a bool is one, and so on.
def _rank(member: Any) -> int:
    if member is bool:
        return 0
    if member is int:
        return 1
    if member is float:
        return 2
    if settings._is_text(member):
        return 3
    if settings._is_pair(member):
        return 4
    if settings._is_list(member):
        return 5
    return 99


def sample(hint: Any) -> tuple[str, Any]:
    """A text form for a field of type `hint`, and the value it must become."""
    member = min(settings._members(hint), key=_rank)
    if member is bool:
        return "yes", True
    if member is int:
        return "7", 7
    if member is float:
        return "2.5", 2.5
    if typing.get_origin(member) is Literal:
        choice = typing.get_args(member)[-1]
        return str(choice), choice
    if settings._is_text(member):
        return "some text", "some text"
    if settings._is_pair(member):
        count = len(typing.get_args(member))
        parts = [f"p{i}" for i in range(count)]
        return ":".join(parts), tuple(parts)
    if settings._is_list(member):
        text, value = sample(settings._item_type(member))
        return f"{text}, {text}", [value, value]
    raise AssertionError(f"a field of type {hint} cannot be set from text")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return json.dumps(":".join(value))
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value)


FIELDS = settings.field_types()


def test_fields_are_read_from_config():
    # Fields added to Config later (by anyone) are picked up: the list is Config's own, less
    # the callables only Python can give.
    python_only = {"ssl_context_factory", "callback_notify"}
    assert list(FIELDS) == [f for f in Config.__dataclass_fields__ if f not in {"_", *python_only}]
    assert {"app", "port", "root_path", "headers", "access_log"} <= set(FIELDS)
    for name in python_only:
        assert Config.__dataclass_fields__[name].metadata["python_only"]


@pytest.mark.parametrize("name", list(FIELDS))
def test_every_field_can_be_set_from_the_environment(name):
    text, expected = sample(FIELDS[name])
    loaded = settings.from_environment({settings.env_name(name): text})
    assert loaded == {name: settings.Setting(expected, f"env ASERVE_{name.upper()}")}


@pytest.mark.parametrize("name", list(FIELDS))
def test_every_field_can_be_set_in_pyproject(name, tmp_path):
    _, expected = sample(FIELDS[name])
    path = tmp_path / "pyproject.toml"
    path.write_text(f"[project]\nname = 'x'\n\n[tool.aserve]\n{name} = {toml_value(expected)}\n")
    assert settings.from_pyproject(path) == {name: settings.Setting(expected, f"file {path}")}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("0", False), ("true", True), ("False", False), ("YES", True), ("no", False)],
)
def test_booleans(text, expected):
    assert settings.from_environment({"ASERVE_ACCESS_LOG": text})["access_log"].value is expected


def test_conversions_by_type():
    env = {
        "ASERVE_PORT": "8080",
        "ASERVE_TIMEOUT_KEEP_ALIVE": "5",
        "ASERVE_LIMIT_CONCURRENCY": "",  # empty: None, where the setting allows None
        "ASERVE_UDS": "none",
        "ASERVE_HEADERS": "X-A: 1, X-B:two",
        "ASERVE_FORWARDED_ALLOW_IPS": "10.0.0.0/8,127.0.0.1",  # str | list: kept as text
        "ASERVE_LOG_LEVEL": "debug",
    }
    values = {k: s.value for k, s in settings.from_environment(env).items()}
    assert values == {
        "port": 8080,
        "timeout_keep_alive": 5.0,
        "limit_concurrency": None,
        "uds": None,
        "headers": [("X-A", "1"), ("X-B", "two")],
        "forwarded_allow_ips": "10.0.0.0/8,127.0.0.1",
        "log_level": "debug",
    }
    assert isinstance(values["timeout_keep_alive"], float)
    Config(app="x:y", **values)  # and Config takes them as they are


def test_build_switches_and_other_variables_are_not_settings():
    env = {
        "ASERVE_NO_EXTENSIONS": "1",
        "ASERVE_COMPILE": "0",
        "ASERVE_TEST_MARKER": "/tmp/x",
        "PATH": "/bin",
        "ASERVEX": "1",
    }
    assert settings.from_environment(env) == {}


def test_every_aserve_variable_in_the_source_is_a_setting_or_reserved():
    # An ASERVE_* variable the code reads for another purpose must be in RESERVED_ENV, or a
    # user who sets it would get "unknown environment variable".
    root = SRC.parent.parent
    files = [root / "setup.py", *SRC.rglob("*.py"), *(root / "benchmarks").rglob("*.py")]
    files += (root / "tests" / "apps").rglob("*.py")
    used = set()
    for path in files:
        if path.name != "settings.py":
            used.update(re.findall(r"\bASERVE_[A-Z0-9_]+", path.read_text()))
    fields = {settings.env_name(name) for name in FIELDS}
    assert {key for key in used - fields if not settings.is_reserved(key)} == set()
    assert "ASERVE_STALL_LOG" in used  # the scan reads the benchmarks


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ASERVE_PROT": "1"},
            "unknown environment variable ASERVE_PROT (did you mean ASERVE_PORT?)",
        ),
        ({"ASERVE_port": "1"}, "unknown environment variable ASERVE_port"),
        ({"ASERVE_PORT": "eighty"}, "ASERVE_PORT: expected an integer, got 'eighty'"),
        ({"ASERVE_ACCESS_LOG": "maybe"}, "ASERVE_ACCESS_LOG: expected true or false"),
        (
            {"ASERVE_HEADERS": "no-colon"},
            "ASERVE_HEADERS: expected a (comma-separated) list of NAME:VALUE",
        ),
    ],
)
def test_bad_environment_is_one_line_naming_the_variable(env, message):
    with pytest.raises(ConfigError) as info:
        settings.from_environment(env)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("root_pth = '/x'", "[tool.aserve]: unknown key 'root_pth' (did you mean root_path?)"),
        ("port = 'eighty'", "port in "),
        ("access_log = 3", "access_log in "),
        ("port = true", "port in "),
        ("port = [", "is not valid TOML"),
    ],
)
def test_bad_pyproject_is_one_line_naming_the_key(tmp_path, body, message):
    path = tmp_path / "pyproject.toml"
    path.write_text(f"[tool.aserve]\n{body}\n")
    with pytest.raises(ConfigError) as info:
        settings.from_pyproject(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_no_pyproject_or_no_table_is_nothing(tmp_path):
    assert settings.from_pyproject(tmp_path / "pyproject.toml") == {}
    (tmp_path / "pyproject.toml").write_text("[tool.other]\nport = 1\n")
    assert settings.from_pyproject(tmp_path / "pyproject.toml") == {}


def test_environment_wins_over_the_file(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.aserve]\nport = 1\nroot_path = "/file"\n')
    loaded = settings.load({"ASERVE_PORT": "2"}, tmp_path)
    assert loaded["port"].value == 2
    assert loaded["root_path"].value == "/file"


def test_legacy_variable_counts_as_environment_but_aserve_wins(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.aserve]\nforwarded_allow_ips = "1.1.1.1"\n')
    legacy = {"FORWARDED_ALLOW_IPS": "2.2.2.2"}
    assert settings.load(legacy, tmp_path)["forwarded_allow_ips"].value == "2.2.2.2"
    both = {**legacy, "ASERVE_FORWARDED_ALLOW_IPS": "3.3.3.3"}
    assert settings.load(both, tmp_path)["forwarded_allow_ips"].value == "3.3.3.3"


# --- the CLI: precedence, --print-config, a real server ---------------------------------------


def aserve(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ASERVE_", "UVICORN_"))}
    clean.pop("FORWARDED_ALLOW_IPS", None)
    for key in ("ASERVE_NO_EXTENSIONS", "ASERVE_REQUIRE_COMPILED"):
        if key in os.environ:
            clean[key] = os.environ[key]
    return subprocess.run(
        [sys.executable, "-m", "aserve", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def printed(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    assert result.returncode == 0, result.stderr
    lines = {}
    for line in result.stdout.splitlines():
        if line.startswith("# "):  # a note after the fields (listeners, ignored options)
            continue
        name, _, rest = line.partition(" = ")
        value, _, source = rest.rpartition("  # ")
        lines[name] = (value, source)
    return lines


def test_print_config_shows_every_field_with_its_source(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.aserve]\napp = "main:app"\nroot_path = "/file"\nport = 1\nbacklog = 10\n'
    )
    result = aserve(
        "--print-config",
        "--port",
        "3",
        cwd=tmp_path,
        env={"ASERVE_PORT": "2", "ASERVE_ROOT_PATH": "/env", "FORWARDED_ALLOW_IPS": "10.0.0.1"},
    )
    lines = printed(result)
    assert list(lines) == list(FIELDS)
    assert lines["port"] == ("3", "flag --port")
    assert lines["root_path"] == ('"/env"', "env ASERVE_ROOT_PATH")
    assert lines["backlog"] == ("10", f"file {tmp_path / 'pyproject.toml'}")
    assert lines["app"] == ('"main:app"', f"file {tmp_path / 'pyproject.toml'}")
    assert lines["forwarded_allow_ips"] == ('"10.0.0.1"', "env FORWARDED_ALLOW_IPS")
    assert lines["host"] == ('"127.0.0.1"', "default")


def test_print_config_names_the_legacy_variables_also_from_an_env_file(tmp_path):
    env = {"WEB_CONCURRENCY": "3", "FORWARDED_ALLOW_IPS": "10.0.0.1"}
    lines = printed(aserve("x:y", "--print-config", cwd=tmp_path, env=env))
    assert lines["workers"] == ("3", "env WEB_CONCURRENCY")
    assert lines["forwarded_allow_ips"] == ('"10.0.0.1"', "env FORWARDED_ALLOW_IPS")
    # An --env-file is read by Config, after the environment: its variables were "default".
    (tmp_path / "app.env").write_text("WEB_CONCURRENCY=4\nFORWARDED_ALLOW_IPS=10.0.0.2\n")
    lines = printed(aserve("x:y", "--print-config", "--env-file", "app.env", cwd=tmp_path))
    assert lines["workers"] == ("4", "env WEB_CONCURRENCY (from app.env)")
    assert lines["forwarded_allow_ips"] == ('"10.0.0.2"', "env FORWARDED_ALLOW_IPS (from app.env)")
    # Set in both: the environment wins (as with dotenv), and so does the flag over both.
    lines = printed(
        aserve(
            "x:y",
            "--print-config",
            "--env-file",
            "app.env",
            "--workers",
            "2",
            cwd=tmp_path,
            env=env,
        )
    )
    assert lines["workers"] == ("2", "flag --workers")
    assert lines["forwarded_allow_ips"] == ('"10.0.0.1"', "env FORWARDED_ALLOW_IPS")


def test_print_config_shows_0_as_off_for_the_timeouts_it_turns_off(tmp_path):
    flags = ("--timeout-worker-startup", "0", "--ws-ping-interval", "0")
    lines = printed(aserve("x:y", "--print-config", *flags, cwd=tmp_path))
    assert lines["timeout_worker_startup"] == ("none", "flag --timeout-worker-startup")
    assert lines["ws_ping_interval"] == ("none", "flag --ws-ping-interval")
    lines = printed(
        aserve("x:y", "--print-config", cwd=tmp_path, env={"ASERVE_TIMEOUT_WORKER_STARTUP": "0"})
    )
    assert lines["timeout_worker_startup"] == ("none", "env ASERVE_TIMEOUT_WORKER_STARTUP")


def test_print_config_validates(tmp_path):
    result = aserve("x:y", "--print-config", cwd=tmp_path, env={"ASERVE_ROOT_PATH": "api"})
    assert result.returncode == 1
    # The error names where the bad value came from: nothing on the command line says.
    assert (
        result.stderr.strip()
        == "Error: env ASERVE_ROOT_PATH: root_path must start with '/', got 'api'"
    )
    (tmp_path / "pyproject.toml").write_text("[tool.aserve]\nport = 99999\n")
    result = aserve("x:y", "--print-config", cwd=tmp_path)
    assert result.stderr.strip() == (
        f"Error: file {tmp_path / 'pyproject.toml'}: port must be between 0 and 65535, got 99999"
    )
    result = aserve("x:y", "--print-config", "--port", "99999", cwd=tmp_path)
    assert result.stderr.strip() == "Error: port must be between 0 and 65535, got 99999"


@pytest.mark.parametrize(
    ("env", "file", "error"),
    [
        ({"ASERVE_PROT": "1"}, "", "Error: unknown environment variable ASERVE_PROT"),
        ({}, "prot = 1", "Error: " + "{path} [tool.aserve]: unknown key 'prot'"),
        ({}, "", "Error: no APP given"),
    ],
)
def test_cli_errors_are_one_line_exit_1(tmp_path, env, file, error):
    (tmp_path / "pyproject.toml").write_text(f"[tool.aserve]\n{file}\n")
    result = aserve(cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(error.format(path=tmp_path / "pyproject.toml"))


APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{scope['root_path']}|{scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


def test_a_server_configured_by_file_and_environment(tmp_path):
    """No flags at all: the app and root_path from pyproject.toml, port and a header from env."""
    (tmp_path / "confapp.py").write_text(APP)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.aserve]\napp = "confapp:app"\nroot_path = "/api"\nlifespan = "off"\n'
    )
    env = {"ASERVE_PORT": "0", "ASERVE_HEADERS": "X-From:env", "ASERVE_ACCESS_LOG": "0"}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ASERVE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "aserve"],
        cwd=tmp_path,
        env={**clean, **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if match:
                break
        else:
            raise AssertionError("".join(lines))
        response = httpx.get(f"http://127.0.0.1:{match.group(1)}/items", timeout=10)
        assert response.text == "/api|/api/items"
        assert response.headers["x-from"] == "env"
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


# --- ASERVE_* settings from an --env-file ----------------------------------------------------


def test_env_file_settings_sit_between_the_environment_and_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.aserve]\napp = "main:app"\nbacklog = 10\nroot_path = "/pyproject"\n'
    )
    (tmp_path / "app.env").write_text(
        "ASERVE_PORT=9001\nASERVE_ROOT_PATH=/file\nexport ASERVE_HOST=0.0.0.0\n"
        "ASERVE_BACKLOG=5\nASERVE_ACCESS_LOG=off\nDATABASE_URL=postgres://db\n"
    )
    result = aserve(
        "--print-config",
        "--env-file",
        "app.env",
        "--port",
        "3",
        cwd=tmp_path,
        env={"ASERVE_ROOT_PATH": "/env"},
    )
    lines = printed(result)
    assert lines["port"] == ("3", "flag --port")  # a flag wins over the file
    assert lines["root_path"] == ('"/env"', "env ASERVE_ROOT_PATH")  # so does the environment
    assert lines["host"] == ('"0.0.0.0"', "env ASERVE_HOST (from app.env)")
    assert lines["backlog"] == ("5", "env ASERVE_BACKLOG (from app.env)")  # over pyproject
    assert lines["access_log"] == ("false", "env ASERVE_ACCESS_LOG (from app.env)")
    assert lines["env_file"] == ('"app.env"', "flag --env-file")


@pytest.mark.parametrize("named_by", ["env", "pyproject"])
def test_env_file_named_by_the_environment_or_pyproject_is_read_too(tmp_path, named_by):
    (tmp_path / "app.env").write_text("ASERVE_PORT=9002\n")
    env = {"ASERVE_ENV_FILE": "app.env"} if named_by == "env" else {}
    table = 'env_file = "app.env"\n' if named_by == "pyproject" else ""
    (tmp_path / "pyproject.toml").write_text(f'[tool.aserve]\napp = "main:app"\n{table}')
    lines = printed(aserve("--print-config", cwd=tmp_path, env=env))
    assert lines["port"] == ("9002", "env ASERVE_PORT (from app.env)")


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (
            "ASERVE_PROT=1",
            "Error: env file 'app.env': unknown environment variable ASERVE_PROT "
            "(did you mean ASERVE_PORT?)",
        ),
        ("ASERVE_PORT=eighty", "Error: env file 'app.env': ASERVE_PORT: expected an integer"),
        ("ASERVE_ENV_FILE=other.env", "Error: env file 'app.env': ASERVE_ENV_FILE cannot name"),
        ("not a line", "Error: env file 'app.env' line 1: expected KEY=VALUE"),
    ],
)
def test_env_file_mistakes_are_one_line_naming_the_file(tmp_path, line, error):
    (tmp_path / "app.env").write_text(line + "\n")
    result = aserve("x:y", "--env-file", "app.env", cwd=tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(error), result.stderr


def test_env_file_unit(tmp_path):
    (tmp_path / "a.env").write_text("ASERVE_PORT=1\nWEB_CONCURRENCY=3\nASERVE_TEST_X=1\n")
    loaded = settings.load({"ASERVE_HOST": "h"}, tmp_path, tmp_path / "a.env")
    assert loaded["port"] == settings.Setting(1, f"env ASERVE_PORT (from {tmp_path / 'a.env'})")
    assert loaded["workers"].value == 3  # a legacy variable from the file
    assert loaded["host"] == settings.Setting("h", "env ASERVE_HOST")
    # The environment's variable wins over the file's, as with dotenv; ASERVE_* over legacy.
    loaded = settings.load(
        {"ASERVE_PORT": "2", "ASERVE_WORKERS": "5"}, tmp_path, tmp_path / "a.env"
    )
    assert loaded["port"] == settings.Setting(2, "env ASERVE_PORT")
    assert loaded["workers"] == settings.Setting(5, "env ASERVE_WORKERS")


def test_a_server_configured_by_an_env_file_alone(tmp_path):
    (tmp_path / "confapp.py").write_text(APP)
    (tmp_path / "prod.env").write_text(
        "ASERVE_APP=confapp:app\nASERVE_PORT=0\nASERVE_ROOT_PATH=/api\nASERVE_LIFESPAN=off\n"
        "ASERVE_HEADERS=X-From:env-file\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ASERVE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "aserve", "--env-file", "prod.env"],
        cwd=tmp_path,
        env=clean,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            if match:
                break
        else:
            raise AssertionError("".join(lines))
        response = httpx.get(f"http://127.0.0.1:{match.group(1)}/items", timeout=10)
        assert response.text == "/api|/api/items"
        assert response.headers["x-from"] == "env-file"
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


# --- uvicorn's UVICORN_* variables among the others ---------------------------------------------


def test_uvicorn_variables_sit_between_aserve_variables_and_pyproject(tmp_path):
    """flag > ASERVE_* (environment, then env file) > UVICORN_* > legacy > pyproject > default."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.aserve]\napp = "main:app"\nbacklog = 10\ntimeout_keep_alive = 7\n'
    )
    (tmp_path / "app.env").write_text(
        "ASERVE_HOST=0.0.0.0\n"
        # Not options here, as not for uvicorn, whose command line is parsed before it loads
        # the file: the app sees them in its environment, that is all.
        "UVICORN_LIMIT_CONCURRENCY=5\nUVICORN_ROOT_PATH=/from-file\n"
    )
    env = {
        "UVICORN_PORT": "1",
        "ASERVE_PORT": "2",
        "UVICORN_ROOT_PATH": "/uvicorn",
        "ASERVE_ROOT_PATH": "/aserve",
        "UVICORN_HOST": "127.0.0.2",  # the env file's ASERVE_HOST wins
        "UVICORN_BACKLOG": "5",  # over pyproject
        "UVICORN_WORKERS": "3",  # over WEB_CONCURRENCY, as in uvicorn
        "WEB_CONCURRENCY": "4",
        "UVICORN_FORWARDED_ALLOW_IPS": "10.0.0.1",
        "FORWARDED_ALLOW_IPS": "*",
        "UVICORN_METRICS_PORT": "9100",  # an aserve option: uvicorn has no such variable
        "UVICORN_HTTP": "h11",
    }
    result = aserve("--print-config", "--env-file", "app.env", "--port", "3", cwd=tmp_path, env=env)
    lines = printed(result)
    assert lines["port"] == ("3", "flag --port")
    assert lines["root_path"] == ('"/aserve"', "env ASERVE_ROOT_PATH")
    assert lines["host"] == ('"0.0.0.0"', "env ASERVE_HOST (from app.env)")
    assert lines["backlog"] == ("5", "env UVICORN_BACKLOG")
    assert lines["workers"] == ("3", "env UVICORN_WORKERS")
    assert lines["forwarded_allow_ips"] == ('"10.0.0.1"', "env UVICORN_FORWARDED_ALLOW_IPS")
    assert lines["http"] == ('"h11"', "env UVICORN_HTTP")
    assert lines["timeout_keep_alive"] == ("7.0", f"file {tmp_path / 'pyproject.toml'}")
    assert lines["limit_concurrency"] == ("none", "default")
    assert lines["metrics_port"] == ("none", "default")
    # What the server would log for an ignored option, whichever way it was given.
    assert "# --http h11: aserve parses HTTP/1.1 with httptools; option ignored" in result.stdout


@pytest.mark.parametrize("aserve_too", [False, True])
def test_uvicorn_env_file_variable_names_the_env_file(tmp_path, aserve_too):
    """UVICORN_ENV_FILE is --env-file: its ASERVE_* lines are settings, unless ASERVE_ENV_FILE
    names another file, which is then the one loaded and read."""
    (tmp_path / "uvicorn.env").write_text("ASERVE_PORT=9001\n")
    (tmp_path / "aserve.env").write_text("ASERVE_PORT=9002\n")
    env = {"UVICORN_ENV_FILE": "uvicorn.env"}
    if aserve_too:
        env["ASERVE_ENV_FILE"] = "aserve.env"
    lines = printed(aserve("x:y", "--print-config", cwd=tmp_path, env=env))
    if aserve_too:
        assert lines["env_file"] == ('"aserve.env"', "env ASERVE_ENV_FILE")
        assert lines["port"] == ("9002", "env ASERVE_PORT (from aserve.env)")
    else:
        assert lines["env_file"] == ('"uvicorn.env"', "env UVICORN_ENV_FILE")
        assert lines["port"] == ("9001", "env ASERVE_PORT (from uvicorn.env)")
