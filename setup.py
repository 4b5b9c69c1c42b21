"""The optional compiled hot path; all other packaging metadata lives in pyproject.toml.

`src/aserve/protocols/http.py` is compiled with mypyc when the build can: it is the code that
runs for every request, and compiling it cuts its cost by about a quarter (docs/performance.md).
The module stays plain Python and is shipped as source too, so a build that cannot compile (no
C compiler, no mypyc, PyPy, or ASERVE_COMPILE=0) installs the pure-Python module instead of
failing, and ASERVE_NO_EXTENSIONS=1 selects the pure module at run time.
"""

from __future__ import annotations

import os
import platform
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

COMPILED_MODULES = ["src/aserve/protocols/http.py"]


def _warn(message: str) -> None:
    print(f"aserve: {message}; installing the pure-Python hot path", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """A compiler failure falls back to the pure-Python module instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            _warn(f"compiling the hot path failed ({exc})")

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(f"compiling {ext.name} failed ({exc})")


def compiled_extensions() -> list:
    if os.environ.get("ASERVE_COMPILE", "1") == "0":
        return []
    if platform.python_implementation() != "CPython":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _warn("mypyc is not available")
        return []
    try:
        flags = ["--ignore-missing-imports", "--follow-imports=silent"]
        return mypycify([*flags, *COMPILED_MODULES], opt_level="3")
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error
        _warn(f"mypyc could not compile the hot path ({exc!r})")
        return []


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": OptionalBuildExt})
