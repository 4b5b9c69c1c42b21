"""Several listeners (--bind): the address syntax, and one app served on TCP, IPv6, Unix and fd."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from tests.conftest import serve
from tests.processes import AserveProcess

from aserve.addresses import Address, parse
from aserve.config import Config, ConfigError

APPS = Path(__file__).parent / "apps"


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 here (::1 cannot be bound)")


# -- the syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:8080", Address("tcp", host="127.0.0.1", port=8080)),
        ("0.0.0.0:0", Address("tcp", host="0.0.0.0", port=0)),
        ("localhost:9000", Address("tcp", host="localhost", port=9000)),
        ("localhost", Address("tcp", host="localhost", port=8000)),  # gunicorn's default port
        ("tcp://10.0.0.1:80", Address("tcp", host="10.0.0.1", port=80)),
        ("[::1]:8080", Address("tcp", host="::1", port=8080)),
        ("[::]:80", Address("tcp", host="::", port=80)),
        ("[fe80::1]", Address("tcp", host="fe80::1", port=8000)),
        ("unix:/run/app.sock", Address("unix", path="/run/app.sock")),
        ("unix:///run/app.sock", Address("unix", path="/run/app.sock")),
        ("unix:relative.sock", Address("unix", path="relative.sock")),
        ("fd://3", Address("fd", fd=3)),
    ],
)
def test_bind_addresses_in_gunicorn_syntax(text, address):
    assert parse(text) == address


@pytest.mark.parametrize(
    "text", ["127.0.0.1:8080", "[::1]:8080", "[::]:0", "unix:/run/app.sock", "fd://3"]
)
def test_an_address_is_shown_as_it_is_written(text):
    assert str(parse(text)) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("127.0.0.1:http", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:65536", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:-1", "the port must be a number from 0 to 65535"),
        ("127.0.0.1:", "the port must be a number from 0 to 65535"),
        (":8000", "no host (0.0.0.0:PORT for every IPv4 address, [::]:PORT for every address)"),
        ("", "empty: expected HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N"),
        ("::1:8000", "an IPv6 address goes in brackets: [::1]:8000, [::]:8000"),
        ("[::1:8000", "no ']' after the IPv6 address ([::1]:8000)"),
        ("[::1]8000", "expected ':PORT' after the ']' ([::1]:8000)"),
        ("[localhost]:80", "'localhost' is not an IPv6 address"),
        ("[127.0.0.1]:80", "'127.0.0.1' is not an IPv6 address"),
        ("unix:", "no path after 'unix:' (unix:/run/app.sock)"),
        ("fd://", "expected fd://N, N a file descriptor number (fd://3)"),
        ("fd://three", "expected fd://N, N a file descriptor number (fd://3)"),
        ("fd://-1", "expected fd://N, N a file descriptor number (fd://3)"),
        ("http://127.0.0.1:80", "unknown scheme 'http': use HOST:PORT, unix:PATH or fd://N"),
        ("my host:80", "'my host' is not a host name or address"),
    ],
)
def test_a_malformed_address_is_one_line_naming_it(text, why):
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value) == f"bind address {text!r}: {why}"


def test_listeners_are_the_bind_addresses_then_uds_and_fd_else_host_and_port():
    assert Config("x:y").listeners == [Address("tcp", host="127.0.0.1", port=8000)]
    assert Config("x:y", host="::", port=0).listeners == [Address("tcp", host="::", port=0)]
    assert Config("x:y", uds="/tmp/a.sock").listeners == [Address("unix", path="/tmp/a.sock")]
    config = Config("x:y", bind=["[::1]:81", "unix:/tmp/b.sock"], uds="/tmp/a.sock", fd=5)
    assert [str(address) for address in config.listeners] == [
        "[::1]:81",
        "unix:/tmp/b.sock",
        "unix:/tmp/a.sock",
        "fd://5",
    ]
    assert Config("x:y", bind="127.0.0.1:82").bind == ["127.0.0.1:82"]  # one, as a string


def test_bind_settings_that_would_be_ignored_or_clash_are_refused():
    with pytest.raises(ConfigError, match=r"host and port make a listener only when no bind"):
        Config("x:y", port=9000, bind=["unix:/tmp/a.sock"])
    with pytest.raises(ConfigError, match=r"bind address '127\.0\.0\.1:81' is given twice"):
        Config("x:y", bind=["127.0.0.1:81", "127.0.0.1:81"])
    with pytest.raises(ConfigError, match=r"bind address 'unix:/tmp/a\.sock' is given twice"):
        Config("x:y", bind=["unix:/tmp/a.sock"], uds="/tmp/a.sock")
    with pytest.raises(ConfigError, match="metrics_port must differ"):
        Config("x:y", bind=["unix:/tmp/a.sock", "0.0.0.0:9100"], metrics_port=9100)
    # Two listeners on port 0 are two free ports, not the same address twice.
    assert len(Config("x:y", bind=["127.0.0.1:0", "127.0.0.1:0"]).listeners) == 2


# -- served for real -------------------------------------------------------------------------


async def where(scope, receive, send):
    body = json.dumps({"server": scope["server"], "client": scope["client"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def get_json(url: str, uds: str | None = None) -> dict:
    transport = httpx.HTTPTransport(uds=uds) if uds else None
    with httpx.Client(transport=transport, timeout=10) as client:
        response = client.get(url)
    assert response.status_code == 200, response.text
    return response.json()


def test_every_listener_serves_the_app_and_names_itself_in_the_scope(tmp_path):
    """In one process (the embedding API): TCP, a Unix socket and an inherited descriptor."""
    path = str(tmp_path / "app.sock")
    inherited = socket.create_server(("127.0.0.1", 0))
    fd_port = inherited.getsockname()[1]
    fd = os.dup(inherited.fileno())  # the server's own copy: it closes it when it stops
    with inherited, serve(where, bind=["127.0.0.1:0", f"unix:{path}", f"fd://{fd}"]) as live:
        assert len(live.server.sockets) == 3
        tcp_port = live.server.sockets[0].getsockname()[1]
        assert get_json(f"http://127.0.0.1:{tcp_port}/")["server"] == ["127.0.0.1", tcp_port]
        # A Unix socket listener is [path, None], as the ASGI spec has it.
        assert get_json("http://localhost/", uds=path)["server"] == [path, None]
        assert get_json(f"http://127.0.0.1:{fd_port}/")["server"] == ["127.0.0.1", fd_port]
    assert not Path(path).exists()  # its socket file is removed on exit


@needs_ipv6
def test_ipv6_and_dual_stack_listeners(tmp_path):
    """`[::1]:PORT` takes IPv6 only; `[::]:PORT` takes IPv4 too, on one socket."""
    with serve(where, bind=["[::1]:0", "[::]:0"]) as live:
        only_v6, dual = (sock.getsockname()[1] for sock in live.server.sockets)
        assert get_json(f"http://[::1]:{only_v6}/")["server"] == ["::1", only_v6]
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", only_v6), timeout=5).close()
        assert get_json(f"http://[::1]:{dual}/")["server"] == ["::1", dual]
        seen = get_json(f"http://127.0.0.1:{dual}/")
        assert seen["server"] == ["::ffff:127.0.0.1", dual]  # IPv4 on the IPv6 socket
        assert seen["client"][0] == "::ffff:127.0.0.1"
        # A proxy on loopback reaching it over IPv4 is the trusted 127.0.0.1 (the default).
        with httpx.Client(timeout=10) as client:
            forwarded = client.get(
                f"http://127.0.0.1:{dual}/", headers={"x-forwarded-for": "203.0.113.7"}
            )
        assert forwarded.json()["client"][0] == "203.0.113.7"


def start(*args: str, **popen) -> AserveProcess:
    server = AserveProcess(
        "listeners:app", "--app-dir", str(APPS), "--no-access-log", *args, **popen
    )
    server.wait_until(lambda: "(Press CTRL+C to quit)" in server.output, "aserve to start")
    return server


@pytest.mark.parametrize(
    "workers",
    [
        pytest.param([], id="one-process"),
        pytest.param(["--workers", "2"], id="workers-2", marks=pytest.mark.once),
    ],
)
def test_several_listeners_through_the_cli(tmp_path, workers):
    """--bind (repeatable) beside --uds and --fd, each in the startup line and in the scope."""
    ipv6 = _has_ipv6()
    inherited = socket.create_server(("127.0.0.1", 0))
    inherited.set_inheritable(True)
    fd, fd_port = inherited.fileno(), inherited.getsockname()[1]
    bind_path, uds_path = tmp_path / "bind.sock", tmp_path / "uds.sock"
    binds = ["--bind", "127.0.0.1:0", "--bind", f"unix:{bind_path}"]
    if ipv6:
        binds += ["--bind", "[::1]:0"]
    server = start(*binds, "--uds", str(uds_path), "--fd", str(fd), *workers, pass_fds=[fd])
    inherited.close()  # the server holds its own copy
    try:
        count = 5 if ipv6 else 4
        server.wait_until(lambda: server.output.count("running on") == count, "every listener")
        suffix = " with 2 workers" if workers else ""
        tcp_port = int(server.output.split("running on http://127.0.0.1:")[1].split(" ")[0])
        lines = [f"http://127.0.0.1:{tcp_port}", f"unix socket {bind_path}"]
        if ipv6:
            v6_port = int(server.output.split("running on http://[::1]:")[1].split(" ")[0])
            lines.append(f"http://[::1]:{v6_port}")
        lines += [f"unix socket {uds_path}", f"http://127.0.0.1:{fd_port} (file descriptor {fd})"]
        for where in lines:
            assert f"aserve running on {where}{suffix} (Press CTRL+C to quit)" in server.output
        pids = set()
        for url, uds, expected in [
            (f"http://127.0.0.1:{tcp_port}/", None, ["127.0.0.1", tcp_port]),
            ("http://localhost/", str(bind_path), [str(bind_path), None]),
            ("http://localhost/", str(uds_path), [str(uds_path), None]),
            (f"http://127.0.0.1:{fd_port}/", None, ["127.0.0.1", fd_port]),
            *([(f"http://[::1]:{v6_port}/", None, ["::1", v6_port])] if ipv6 else []),
        ]:
            for _ in range(4):
                seen = get_json(url, uds)
                assert seen["server"] == expected
                pids.add(seen["pid"])
        if workers:
            assert server.proc.pid not in pids  # the workers answer, never the supervisor
    finally:
        assert server.stop() == 0, server.output
    assert not bind_path.exists() and not uds_path.exists()


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one error line (after "Started server process", when the server got that far)."""
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("INFO:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def aserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aserve", "listeners:app", "--app-dir", str(APPS), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_port_in_use_is_one_line_and_no_listener_is_left_behind(tmp_path):
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    path = tmp_path / "first.sock"
    with taken:
        result = aserve("--bind", f"unix:{path}", "--bind", f"127.0.0.1:{port}")
    error = one_line_error(result)
    assert error == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert not path.exists()  # the listener bound before it is undone


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--bind", "::1:80"], "bind address '::1:80': an IPv6 address goes in brackets"),
        (["--bind", "unix:"], "bind address 'unix:': no path after 'unix:'"),
        (["--bind", "fd://x"], "bind address 'fd://x': expected fd://N"),
        (
            ["--bind", "127.0.0.1:0", "--port", "9000"],
            "--port (flag --port) makes a listener only without --bind",
        ),
        (
            ["-b", "127.0.0.1:0", "--host", "0.0.0.0", "--port", "9000"],
            "--host and --port (flag --host, flag --port) make a listener only without --bind",
        ),
        (["--bind", "fd://987"], "cannot use file descriptor 987: Bad file descriptor"),
    ],
)
def test_bad_listeners_on_the_command_line_are_one_line(args, error):
    assert one_line_error(aserve(*args)).startswith(f"Error: {error}")


def test_print_config_shows_the_listeners(tmp_path):
    result = aserve("--print-config", "-b", "[::]:8080", "--bind", "unix:/run/a.sock", "--fd", "3")
    assert result.returncode == 0, result.stderr
    assert 'bind = ["[::]:8080", "unix:/run/a.sock"]  # flag --bind' in result.stdout
    assert "# listeners: [::]:8080, unix:/run/a.sock, fd://3" in result.stdout.splitlines()
    default = aserve("--print-config")
    assert "# listeners: 127.0.0.1:8000" in default.stdout.splitlines()
