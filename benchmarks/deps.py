"""Install missing tools: wrk, h2load (apt-get) and python packages (pip, this interpreter)."""

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys

# import name -> pip requirement (same list as the project's `bench` extra)
PYTHON_REQUIREMENTS = {
    "uvicorn": "uvicorn[standard]",
    "zttp": "zttp",  # uvicorn's second HTTP backend (--http zttp), and its HTTP/2
    "wsproto": "wsproto",  # uvicorn's third WebSocket backend
    "granian": "granian",
    "hypercorn": "hypercorn",
    "h2": "httpx[http2]",  # the HTTP/2 check request
    "trustme": "trustme",  # the certificate of the TLS workload
    "fastapi": "fastapi",
    "matplotlib": "matplotlib",
    "websockets": "websockets",
    "httptools": "httptools",
    "uvloop": "uvloop",
}


def _apt(*args):
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    cmd = [*prefix, "apt-get", *args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False).returncode == 0


def _ensure_tool(command, package):
    """Make sure `command` is on PATH: apt-get install, with apt-get update on failure."""
    if shutil.which(command):
        return
    if not _apt("install", "-y", package):
        _apt("update")
        _apt("install", "-y", package)
    if not shutil.which(command):
        sys.exit(f"error: {command} is not installed and `apt-get install -y {package}` failed")


def ensure_wrk():
    _ensure_tool("wrk", "wrk")


def ensure_h2load():
    _ensure_tool("h2load", "nghttp2-client")


def _pip_install_command(requirements):
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip", "install", *requirements]
    if shutil.which("uv"):
        return ["uv", "pip", "install", "--python", sys.executable, *requirements]
    subprocess.run([sys.executable, "-m", "ensurepip"], check=False)
    return [sys.executable, "-m", "pip", "install", *requirements]


def ensure_python_packages():
    """pip-install whatever of PYTHON_REQUIREMENTS cannot be imported."""
    missing = [
        req
        for module, req in PYTHON_REQUIREMENTS.items()
        if importlib.util.find_spec(module) is None
    ]
    if not missing:
        return
    cmd = _pip_install_command(missing)
    print("+", " ".join(cmd), flush=True)
    if subprocess.run(cmd, check=False).returncode != 0:
        sys.exit(f"error: could not install {', '.join(missing)}")
    importlib.invalidate_caches()
