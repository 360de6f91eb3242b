"""Exceptions raised by fairdefense.

Every error says what is wrong and what to do about it; errors caused by a
plugin name the plugin and the hook at fault.
"""
from __future__ import annotations

__all__ = [
    "FairDefenseError",
    "ConfigError",
    "PluginError",
    "PluginNotFoundError",
    "PluginOptionError",
    "HookReturnError",
    "NonFiniteLossError",
    "DiskFullError",
    "MissingDependencyError",
]


class FairDefenseError(Exception):
    """Base class of every error fairdefense raises on purpose."""


class ConfigError(FairDefenseError, ValueError):
    """A setting, an argument or the data is out of range or inconsistent."""


class PluginError(FairDefenseError):
    """A plugin cannot be registered or activated (names the plugin and hook)."""


class PluginNotFoundError(PluginError, KeyError):
    """The user named a plugin that is not installed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PluginOptionError(PluginError, ValueError):
    """An unknown or ill-typed plugin option (the message lists the valid ones)."""


class HookReturnError(PluginError, ValueError):
    """A hook implementation returned a value of the wrong shape, range or type."""


class NonFiniteLossError(FairDefenseError, FloatingPointError):
    """The training loss became NaN or infinite; training stopped."""

    def __init__(self, message: str, epoch: int, batch: int) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.batch = batch


class DiskFullError(FairDefenseError, OSError):
    """A file could not be written because its disk is full (the previous file is intact)."""


class MissingDependencyError(FairDefenseError, ImportError):
    """An optional dependency is not installed (the message names the extra)."""


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency or raise :class:`MissingDependencyError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the optional package '{module}', which is not installed. "
            f"Install it with: pip install 'fairdefense[{extra}]' (or pip install {module})."
        ) from exc
