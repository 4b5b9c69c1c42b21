"""The blocking entry point (`aserve.serve`, `aserve.run`, the CLI): one server, workers, or reload.

It sits above `server.py`, `supervisor.py` and `reload.py` and picks between them, so none of
them imports another's caller.
"""

from __future__ import annotations

import sys
from typing import Any

from aserve.compat import log_notices
from aserve.config import Config
from aserve.logging import configure_logging
from aserve.server import Server
from aserve.supervisor import supervise


def serve(app: Any, **options: Any) -> None:
    """Serve `app` (an ASGI app or a "module:attribute" string) until SIGINT/SIGTERM.

    Options are `Config`'s fields. Raises `ConfigError` (or `AppLoadError`, `LifespanFailure`)
    with a one-line message when the server cannot start. With `reload=True` a parent process
    watches files and runs the server in a child it restarts on change (reload.py). With
    `workers` (or a `limit_*` recycling setting) a supervisor runs worker processes
    (supervisor.py); a worker that keeps failing to start raises `WorkerStartupFailure`.
    """
    config = Config(app, **options)
    configure_logging(
        config.log_config,
        config.log_level,
        config.access_log,
        config.log_format,
        use_colors=config.use_colors,
    )
    log_notices(config)  # once, here: not again by each worker or reloaded server
    if ":" in str(config.loop) and config.app_dir and config.app_dir not in sys.path:
        # A "module:attribute" loop factory is imported before the app: find it beside the
        # app, as uvicorn does (it puts --app-dir on sys.path first thing).
        sys.path.insert(0, config.app_dir)
    if config.reload:
        from aserve.reload import run_reloader  # multiprocessing and more: not at every start

        run_reloader(config)
        return
    if config.supervised:
        supervise(config)
        return
    Server(config).run()
