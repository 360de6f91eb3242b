"""Values for strict JSON (which has no NaN or infinity): :func:`json_safe`."""
from __future__ import annotations

import math
from typing import Any

__all__ = ["json_safe"]


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinite floats, nested in dicts, lists and tuples, replaced
    by ``None`` (written as ``null``); tuples become lists. The one cleaning of the run
    folder's files, ``metrics.json`` and the benchmarks' JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
