"""Checkpoints that lose nothing: atomic writes, ``weights_only`` loads.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, so it loads
with ``torch.load(path, weights_only=True)``. It is written to a temporary file
in the same folder, flushed to disk, then renamed over the target, so a crash
never leaves a half-written checkpoint.

Keys: ``format`` (:data:`FORMAT_VERSION`), ``epoch`` (completed epochs), ``model``
(trained weights), ``eval_model`` (weights to evaluate, or ``None``), ``optimizer``,
``scheduler``, ``rng``, ``plugins`` (state per plugin name), ``plugin_names``,
``config``, ``data`` (dataset name, class names, input shape, mean/std, clip,
model name), ``best_score`` and ``versions``.
"""
from __future__ import annotations

import os
import platform
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fairdefense.errors import ConfigError
from fairdefense.version import __version__

__all__ = ["FORMAT_VERSION", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "versions"]

FORMAT_VERSION = 1


def versions() -> dict[str, str]:
    return {"fairdefense": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python RNG states, in weights_only-safe types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; errors say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"cannot load {str(path)!r} with torch.load(weights_only=True): {exc}. "
            f"It must be a fairdefense checkpoint or a plain state_dict."
        ) from exc
    return state
