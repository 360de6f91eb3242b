"""The version of fairdefense, in a module of its own.

``setup.cfg`` reads it, the package root re-exports it, and the modules that
record it (checkpoints, ``metrics.json``) import it from here without importing
the package root.
"""
from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
