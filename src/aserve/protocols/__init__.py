"""Per-connection protocols: HTTP/1.1 (`http`) and WebSocket (`websocket`).

`http` may be installed compiled (mypyc, see setup.py). ASERVE_NO_EXTENSIONS=1 in the
environment runs its pure-Python source instead, as aiohttp's AIOHTTP_NO_EXTENSIONS does: for
tracebacks with every frame, a debugger, or testing both variants from one install.
"""

import os

if os.environ.get("ASERVE_NO_EXTENSIONS", "") not in ("", "0"):
    import importlib.util
    import sys
    from pathlib import Path

    def _load_source(name: str) -> None:
        spec = importlib.util.spec_from_file_location(
            f"{__name__}.{name}", Path(__file__).with_name(f"{name}.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        globals()[name] = module

    _load_source("http")
