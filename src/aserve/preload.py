"""`--preload`: the supervisor imports the app once, before forking, so workers share its memory.

Each worker then starts on pages it inherited copy-on-write instead of importing the app (and
its framework) again. `gc.freeze()` after the import moves every object the supervisor holds
into the collector's permanent generation: a collection in a worker then never writes to the
header of an inherited object, which would copy its page (Instagram's finding, and what the
`gc` documentation recommends before `fork()` without `exec()`). The supervisor never runs the
app: lifespan and requests run in the workers, and the supervisor starts no event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sys
import threading
import time
import traceback

from aserve.config import Config, ConfigError
from aserve.importer import load_app
from aserve.logging import error_logger

# What the supervisor loaded: each module file and its modification time, to tell on SIGHUP
# which files changed since (they are not loaded again: see `sighup_note`).
_loaded_files: dict[str, int] = {}


class PreloadFailure(RuntimeError):
    """The app could not be loaded in the supervisor; the message is one line."""


def preload(config: Config) -> Config:
    """Load the app in this process; return the config the workers get (the app as an object).

    Raises `PreloadFailure` with a one-line message if the app cannot be loaded (an unexpected
    exception's traceback is logged first, as a worker would print it).
    """
    started = time.monotonic()
    threads = threading.active_count()
    try:
        app = load_app(config)
    except ConfigError as exc:
        raise PreloadFailure(f"could not load the app (--preload): {exc}") from None
    except Exception as exc:
        error_logger.error(
            "The app could not be loaded (--preload):\n%s",
            "".join(traceback.format_exception(exc)).rstrip(),
        )
        raise PreloadFailure(
            f"could not load the app (--preload): {type(exc).__name__}: {exc}"
        ) from None
    _loaded_files.clear()
    _loaded_files.update(module_files())
    freeze()
    error_logger.info(
        "Loaded the app in the supervisor [%d] in %.2f s (--preload)",
        os.getpid(),
        time.monotonic() - started,
    )
    if threading.active_count() > threads:
        # os.fork() copies only the calling thread: a lock one of these threads holds at that
        # moment stays locked forever in the worker.
        error_logger.warning(
            "Importing the app started %d thread(s) in the supervisor; with --preload they "
            "are not copied into the workers, and a lock they hold at fork time stays "
            "locked there. Start threads in lifespan startup instead.",
            threading.active_count() - threads,
        )
    # Workers take the object as it is: no factory to call again, no ASGI 2 adapter to add,
    # and --app-dir is on sys.path already.
    return dataclasses.replace(config, app=app, factory=False, interface="asgi3", app_dir=None)


def module_files() -> dict[str, int]:
    """The source (or extension) file of every imported module, with its mtime in ns."""
    files: dict[str, int] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path not in files:
            with contextlib.suppress(OSError):
                files[path] = os.stat(path).st_mtime_ns
    return files


def changed_files() -> list[str]:
    """Files loaded at preload time that changed (or went away) since."""
    now = module_files()
    return sorted(path for path, mtime in _loaded_files.items() if now.get(path) != mtime)


def sighup_note() -> str:
    """What SIGHUP does with --preload, and which loaded files it will not pick up."""
    note = (
        "--preload: the new workers run the code the supervisor imported at start; "
        "SIGHUP does not import the app again (restart aserve to load new code)"
    )
    changed = changed_files()
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        note += f". Changed since then, not loaded: {', '.join(changed[:3])}{more}"
    return note


def freeze() -> None:
    """Keep the collector in the workers away from what the supervisor holds (see above)."""
    gc.freeze()
