"""The error for a bad setting, in a module that imports nothing so that any module can raise it."""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting is invalid. The message is one line that names the setting."""
