"""aserve: an asyncio-native ASGI server."""

from aserve import _build

_build.select()  # before anything imports the hot path (ASERVE_NO_EXTENSIONS)

from aserve.config import Config  # noqa: E402
from aserve.entry import serve  # noqa: E402
from aserve.errors import ConfigError  # noqa: E402
from aserve.server import Server  # noqa: E402

run = serve  # uvicorn's name for the blocking entry point: `aserve.run(app, port=8000)`

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "Server", "__version__", "run", "serve"]
