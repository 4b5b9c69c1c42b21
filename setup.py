"""The optional compiled hot path; all other packaging metadata lives in pyproject.toml.

The modules every request runs through are compiled together with mypyc when the build can:
compiled as one group, their calls and attribute reads between each other are native, which
cuts a request's cost by about a third (docs/performance.md). They stay plain Python and ship
as source too, so a build that cannot compile (no C compiler, no mypyc, PyPy, or
ASERVE_COMPILE=0) installs them as Python instead of failing, and ASERVE_NO_EXTENSIONS=1
selects the source at run time (aserve/_build.py).
"""

from __future__ import annotations

import inspect
import os
import platform
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

# Keep in step with HOT_PATH_MODULES in src/aserve/_build.py.
COMPILED_MODULES = [
    "src/aserve/protocols/cycle.py",
    "src/aserve/protocols/http.py",
    "src/aserve/protocols/http2.py",
    "src/aserve/protocols/headers.py",
    "src/aserve/protocols/hpack.py",
    "src/aserve/protocols/wsframes.py",
    "src/aserve/state.py",
    "src/aserve/flow_control.py",
    "src/aserve/tasks.py",
    "src/aserve/metrics.py",
]


def _warn(message: str) -> None:
    print(f"aserve: {message}; installing the pure-Python hot path", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """A compiler failure falls back to the pure-Python modules instead of failing the install.

    mypyc builds one shared library (`aserve.hot_path__mypyc`, built first) plus a small
    extension per module that loads it. If the library fails, the modules' extensions are
    skipped too, so no module is left installed compiled against a library that is missing.
    """

    _library_failed = False

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            _warn(f"compiling the hot path failed ({exc})")

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        if self._library_failed:
            return
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._library_failed = self._library_failed or ext.name.endswith("__mypyc")
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
        options = {"opt_level": "3"}
        if "group_name" in inspect.signature(mypycify).parameters:
            options["group_name"] = "aserve.hot_path"  # else a hash-named library at top level
        return mypycify([*flags, *COMPILED_MODULES], **options)
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error
        _warn(f"mypyc could not compile the hot path ({exc!r})")
        return []


setup(ext_modules=compiled_extensions(), cmdclass={"build_ext": OptionalBuildExt})
