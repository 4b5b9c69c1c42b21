"""Which build of the hot path runs: the modules setup.py compiles with mypyc, or their source.

ASERVE_NO_EXTENSIONS=1 in the environment runs the Python source of a compiled install (as
aiohttp's AIOHTTP_NO_EXTENSIONS does): for tracebacks with every frame, a debugger, or testing
both variants from one install. It must take effect before any of these modules is imported,
so `aserve/__init__.py` calls `select()` first thing.
"""

from __future__ import annotations

import os
import sys

# Keep in step with COMPILED_MODULES in setup.py (tests/test_build.py checks that they agree).
HOT_PATH_MODULES = (
    "aserve.flow_control",
    "aserve.metrics",
    "aserve.protocols.cycle",
    "aserve.protocols.headers",
    "aserve.protocols.hpack",
    "aserve.protocols.http",
    "aserve.protocols.http2",
    "aserve.protocols.wsframes",
    "aserve.state",
    "aserve.tasks",
)


def source_requested() -> bool:
    return os.environ.get("ASERVE_NO_EXTENSIONS", "") not in ("", "0")


class _SourceFinder:
    """Finds the `.py` file of a hot-path module even where a compiled one sits beside it.

    A meta path finder needs only `find_spec` (no `importlib.abc` base class, whose import
    pulls in `importlib.resources`, `tempfile` and more: a cost paid at every start-up).
    """

    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname not in HOT_PATH_MODULES:
            return None
        import importlib.machinery
        import importlib.util

        leaf = fullname.rpartition(".")[2] + ".py"
        for entry in path or ():
            source = os.path.join(entry, leaf)
            if os.path.isfile(source):
                loader = importlib.machinery.SourceFileLoader(fullname, source)
                return importlib.util.spec_from_file_location(fullname, source, loader=loader)
        return None


def select() -> None:
    if source_requested() and not any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())
