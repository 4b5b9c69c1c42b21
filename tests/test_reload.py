"""`--reload`: the real CLI restarting on a changed file, and surviving a syntax error."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from aserve.config import Config, ConfigError
from aserve.reload import ChangeFilter, check, watched_dirs

APP = """
from pathlib import Path

MESSAGE = Path(__file__).with_name("message.txt").read_text().strip()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{{VERSION}} {{MESSAGE}}".encode()
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": body}})


VERSION = {version!r}
"""


# -- which changes restart ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "includes", "excludes", "restarts"),
    [
        ("/src/app.py", [], [], True),
        ("/src/pkg/models.py", [], [], True),
        ("/src/notes.txt", [], [], False),  # only *.py by default
        ("/src/templates/index.html", ["*.html"], [], True),
        ("/src/static/site.css", ["static/*.css"], [], True),
        ("/src/other/site.css", ["static/*.css"], [], False),
        ("/src/.app.py.swp", [], [], False),  # editor swap files, hidden files
        ("/src/app.pyc", [], [], False),
        ("/src/__pycache__/app.cpython-313.py", [], [], False),
        ("/src/.venv/lib/site.py", [], [], False),
        ("/src/node_modules/x.py", [], [], False),
        ("/src/.env", [".env"], [], True),  # an include takes a pattern out of the excludes
        ("/src/tests/test_app.py", [], ["tests"], False),  # an excluded directory
        ("/src/migrations/0001.py", [], ["migrations/*.py"], False),
        ("/src/app.py", [], ["app.py"], False),  # excludes win over includes
    ],
)
def test_change_filter_follows_uvicorns_include_and_exclude(path, includes, excludes, restarts):
    assert ChangeFilter(includes, excludes).matches(path) is restarts


def test_watched_dirs_default_to_cwd_and_app_dir(tmp_path, monkeypatch):
    inside, outside = tmp_path / "cwd" / "app", tmp_path / "elsewhere"
    inside.mkdir(parents=True)
    outside.mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert watched_dirs(Config(app="a:b", app_dir=str(inside))) == [tmp_path / "cwd"]
    assert watched_dirs(Config(app="a:b", app_dir=str(outside))) == [tmp_path / "cwd", outside]
    given = Config(app="a:b", reload_dirs=[str(inside), str(outside)])
    assert sorted(watched_dirs(given)) == sorted([inside, outside])
    with pytest.raises(ConfigError, match=r"reload directory .*nope.* does not exist"):
        watched_dirs(Config(app="a:b", reload_dirs=[str(tmp_path / "nope")]))


def test_reload_needs_an_import_string():
    async def app(scope, receive, send):
        pass

    with pytest.raises(ConfigError, match=r'import string \("module:attribute"\)'):
        Config(app=app, reload=True)
    check(Config(app="main:app", reload=True))  # watchfiles is installed with the dev extra


# -- the real command line ----------------------------------------------------------------


class Reloading:
    def __init__(self, directory: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aserve", "app:app", "--reload", "--port", "0", *args],
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log)
            if match:
                return match
            assert self.proc.poll() is None, "the reloader exited:\n" + self.log
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in the log:\n{self.log}")

    def wait_for_answer(self, url: str, expected: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the reloader exited:\n" + self.log
            try:
                seen = httpx.get(url, timeout=2).text
            except httpx.HTTPError as exc:
                seen = repr(exc)
            if seen == expected:
                return
            time.sleep(0.1)
        raise AssertionError(f"wanted {expected!r}, last answer {seen!r}; log:\n{self.log}")


@pytest.mark.once
def test_reload_restarts_on_change_and_survives_a_syntax_error(tmp_path):
    (tmp_path / "app.py").write_text(APP.format(version="v1"))
    (tmp_path / "message.txt").write_text("hello")
    server = Reloading(tmp_path, "--reload-include", "*.txt")
    try:
        port = int(server.wait_for_log(r"running on http://127\.0\.0\.1:(\d+)")[1])
        url = f"http://127.0.0.1:{port}/"
        server.wait_for_answer(url, "v1 hello")

        (tmp_path / "app.py").write_text(APP.format(version="version 2"))
        server.wait_for_answer(url, "version 2 hello")  # same port: the parent keeps it

        (tmp_path / "message.txt").write_text("bonjour")  # watched through --reload-include
        server.wait_for_answer(url, "version 2 bonjour")

        (tmp_path / "app.py").write_text("def broken(:\n")
        server.wait_for_log(r"SyntaxError")
        server.wait_for_log(r"exited with code 1; waiting for a file change")
        assert server.proc.poll() is None  # still watching
        assert server.log.count("SyntaxError") == 1  # said once, not in a restart loop

        (tmp_path / "app.py").write_text(APP.format(version="fixed"))
        server.wait_for_answer(url, "fixed bonjour")

        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    finally:
        server.proc.kill()
    assert "Traceback" not in server.log
    with pytest.raises(httpx.ConnectError):  # the port is closed with the reloader
        httpx.get(url, timeout=2)


@pytest.mark.once
def test_a_websocket_is_closed_1012_on_a_reload_and_1001_when_the_reloader_stops(tmp_path):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    app = (Path(__file__).parent / "apps" / "streams.py").read_text()
    (tmp_path / "app.py").write_text(app)
    server = Reloading(tmp_path)
    try:
        port = int(server.wait_for_log(r"running on http://127\.0\.0\.1:(\d+)")[1])
        with connect(f"ws://127.0.0.1:{port}/", open_timeout=15) as ws:
            first = ws.recv(15)
            (tmp_path / "app.py").write_text(app + "\n# changed\n")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(30)
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1012, "service restart")
        server.wait_for_log(r"Started server process(?s:.*)Started server process")
        deadline = time.monotonic() + 30
        while True:  # the new child's socket is the same: connect until it answers
            try:
                ws = connect(f"ws://127.0.0.1:{port}/", open_timeout=15)
                break
            except OSError:
                assert time.monotonic() < deadline, server.log
                time.sleep(0.1)
        with ws:
            assert ws.recv(15) != first  # another process
            server.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(30)
        assert closed.value.rcvd.code == 1001
        assert server.proc.wait(30) == 0
    finally:
        server.proc.kill()
    assert "streams-app: websocket.disconnect 1012" in server.log
    assert "streams-app: websocket.disconnect 1001" in server.log


@pytest.mark.once
def test_reload_dir_that_does_not_exist_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "aserve", "app:app", "--reload", "--reload-dir", "nope"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [
        "Error: Invalid value for '--reload-dir': Directory 'nope' does not exist."
    ], result.stderr


@pytest.mark.skipif(not hasattr(Config, "supervised"), reason="no --workers yet")
def test_reload_with_workers_is_refused():
    with pytest.raises(ConfigError, match="reload runs one server process"):
        Config(app="main:app", reload=True, workers=2)
