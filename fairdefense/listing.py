"""The one filter rule of every ``list_*`` function (``list_plugins``, ``list_models``).

A filter is matched case-insensitively. A filter with a shell wildcard (``*``,
``?`` or ``[...]``) must match the whole name (``"wrn*"``); a filter without one
matches anywhere in the name (``"resnet"`` is ``"*resnet*"``).
"""
from __future__ import annotations

import fnmatch

__all__ = ["matches"]

_WILDCARDS = frozenset("*?[")


def matches(name: str, filter: str | None) -> bool:
    """Whether ``name`` passes ``filter`` (an empty or ``None`` filter passes every name)."""
    if not filter:
        return True
    name, filter = name.lower(), filter.lower()
    if _WILDCARDS & set(filter):
        return fnmatch.fnmatchcase(name, filter)
    return filter in name
