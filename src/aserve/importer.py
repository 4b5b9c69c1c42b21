"""Turning ``module:attribute`` into an ASGI 3 callable: ASGI 2 and WSGI apps are adapted."""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any

from aserve.asgi import ASGI2Adapter, ASGIApp
from aserve.config import Config, ConfigError
from aserve.logging import error_logger
from aserve.wsgi import WSGIAdapter


class AppLoadError(ConfigError):
    """The app could not be imported or is not an ASGI app. One line, names the problem."""


def import_from_string(target: str) -> Any:
    module_name, sep, attrs = target.partition(":")
    if not sep or not module_name or not attrs:
        raise AppLoadError(f'app must be given as "module:attribute", got {target!r}')
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise AppLoadError(f"could not import module {module_name!r}") from None
        raise AppLoadError(
            f"error while importing {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    except Exception as exc:
        raise AppLoadError(
            f"error while importing {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    obj: Any = module
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise AppLoadError(f"attribute {attrs!r} not found in module {module_name!r}") from None
    return obj


def load_app(config: Config) -> ASGIApp:
    """The app from the config, called if it is a factory, adapted to ASGI 3."""
    if config.app_dir is not None:
        sys.path.insert(0, config.app_dir)
    app = import_from_string(config.app) if isinstance(config.app, str) else config.app
    if config.factory:
        if not callable(app):
            raise AppLoadError("--factory was given but the app is not callable")
        try:
            app = app()
        except TypeError as exc:
            raise AppLoadError(f"the app factory could not be called: {exc}") from exc
    elif _looks_like_factory(app):
        raise AppLoadError(
            "the app looks like a factory (a function with no arguments); use --factory"
        )
    if not callable(app):
        raise AppLoadError(f"the app is not callable: {type(app).__name__}")
    interface = config.interface
    if interface == "auto":
        interface = detect_interface(app)
        if interface == "wsgi":
            error_logger.info(
                "The app is a WSGI callable: serving it from %d thread(s) (--wsgi-threads)",
                config.wsgi_threads,
            )
    if interface == "wsgi":
        workers = config.workers or 1
        return WSGIAdapter(app, threads=config.wsgi_threads, multiprocess=workers > 1)
    return ASGI2Adapter(app) if interface == "asgi2" else app


def detect_interface(app: Any) -> str:
    """`--interface auto`: "asgi3", "asgi2" or "wsgi", from how the app is called.

    1. ASGI 3 if calling it gives a coroutine: an `async def` function or `__call__`, or a
       class with `__await__` (uvicorn's rule).
    2. Otherwise its signature decides (`inspect.signature`: a function's parameters, a class's
       `__init__`, an object's `__call__`, through `functools.partial` and `functools.wraps`):
       exactly two positional arguments, not one, is WSGI's `app(environ, start_response)`
       (Flask, Django's WSGIHandler, WSGI middleware); exactly three, not two, is an ASGI 3
       app returning an awaitable from a plain call (never a class, whose call returns an
       instance).
    3. Anything else is ASGI 2, `app(scope)` returning the instance to await, as before: one
       argument, `*args` that takes any number, or no signature to read.
    """
    if _is_asgi3(app):
        return "asgi3"
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):
        return "asgi2"
    takes = [_binds(signature, count) for count in (1, 2, 3)]
    if takes[1] and not takes[0]:
        return "wsgi"
    if takes[2] and not takes[1] and not inspect.isclass(app):
        return "asgi3"
    return "asgi2"


def _binds(signature: inspect.Signature, count: int) -> bool:
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


def _looks_like_factory(app: Any) -> bool:
    if not inspect.isfunction(app) or inspect.iscoroutinefunction(app):
        return False
    try:
        return not inspect.signature(app).parameters
    except (TypeError, ValueError):
        return False


def _is_asgi3(app: Any) -> bool:
    if inspect.isclass(app):
        return hasattr(app, "__await__")
    if inspect.isfunction(app) or inspect.ismethod(app):
        return inspect.iscoroutinefunction(app)
    call = getattr(app, "__call__", None)  # noqa: B004 (we want the bound method itself)
    return inspect.iscoroutinefunction(call)
