"""aserve: an asyncio-native ASGI server."""

from aserve.config import Config
from aserve.server import Server, serve

__version__ = "0.1.0"
__all__ = ["Config", "Server", "__version__", "serve"]
