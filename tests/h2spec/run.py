"""`make h2spec`: the h2spec conformance suite (generic, http2, hpack, strict) against aserve,
over TLS (ALPN) and over h2c (prior knowledge); any failure fails the target.

Over TLS every test case runs. Over h2c, one is left out, http2/3.5/2 ("Sends invalid
connection preface": the bytes `INVALID CONNECTION PREFACE`, after which the test wants the
connection closed with nothing sent): on cleartext HTTP/1.1 and h2c share the port, and those
bytes are also a malformed HTTP/1.1 request, which aserve answers with `400` as it must for an
HTTP/1.1 client; h2spec cannot read that answer as a frame. Over TLS, where ALPN chose HTTP/2,
the same test passes. docs/http2.md says so.

Builds h2spec first when it is missing or older than its sources (tests/h2spec/build.sh, from
../shared/vendor/h2spec with Debian's Go packages), then starts aserve on a free port per
transport with the hello app, runs `h2spec -S` against each, and exits non-zero on any
failure, printing the failures h2spec lists.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BINARY = ROOT / ".h2spec" / "h2spec"

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})
"""


def build() -> Path:
    sources = [HERE / "main.go", HERE / "build.sh"]
    if BINARY.exists() and all(BINARY.stat().st_mtime >= s.stat().st_mtime for s in sources):
        return BINARY
    BINARY.parent.mkdir(exist_ok=True)
    subprocess.run(["bash", str(HERE / "build.sh"), str(BINARY)], check=True)
    return BINARY


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"aserve exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"aserve did not listen on port {port} in time")


# Every section of h2spec but http2/3.5/2 (see the module docstring): h2c's selection.
H2C_SECTIONS = ["generic", "hpack", "http2/3.5/1", *(f"http2/{n}" for n in range(4, 9))]


def run(binary: Path, tls: bool, workdir: Path, timeout: int) -> tuple[bool, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "aserve", "app:app", "--app-dir", str(workdir),
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--lifespan", "off",
    ]  # fmt: skip
    if tls:
        command += ["--ssl-certfile", str(workdir / "cert.pem")]
        command += ["--ssl-keyfile", str(workdir / "key.pem")]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_listening(port, server, time.monotonic() + 30)
        args = [str(binary), "-h", "127.0.0.1", "-p", str(port), "-S", "-o", str(timeout)]
        args += ["-t", "-k"] if tls else H2C_SECTIONS
        result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    finally:
        server.terminate()
        try:
            _, errors = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, errors = server.communicate()
    output = result.stdout + result.stderr
    summary = re.search(r"(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed", output)
    name = "TLS (ALPN h2)" if tls else "h2c (prior knowledge), all but http2/3.5/2"
    if summary is None:
        return False, f"h2spec over {name}: no summary\n{output}\n{errors.decode(errors='replace')}"
    total, passed, skipped, failed = (int(n) for n in summary.groups())
    ok = result.returncode == 0 and failed == 0 and skipped == 0 and passed == total
    text = f"h2spec over {name}: {summary.group(0)}"
    if not ok:
        failures = output[output.find("Failures:") :] if "Failures:" in output else output
        text += "\n" + failures
    return ok, text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=int, default=2, help="h2spec's per-test timeout (s)")
    options = parser.parse_args()
    binary = build()
    import trustme

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "app.py").write_text(APP)
        cert = trustme.CA().issue_cert("127.0.0.1", "localhost")
        cert.cert_chain_pems[0].write_to_path(workdir / "cert.pem")
        cert.private_key_pem.write_to_path(workdir / "key.pem")
        results = [run(binary, tls, workdir, options.timeout) for tls in (False, True)]
    for _, text in results:
        print(text)
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
