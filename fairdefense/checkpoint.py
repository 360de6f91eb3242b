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

import errno
import os
import platform
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

from fairdefense.errors import ConfigError, DiskFullError
from fairdefense.version import __version__

__all__ = ["FORMAT_VERSION", "write_atomic", "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "versions"]

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


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Create ``path`` whole or not at all: ``write(file)`` fills a temporary file in the
    same folder, which is flushed to disk, given a plain file's permissions and renamed
    over ``path``. On any error the temporary file is removed and ``path`` is untouched;
    a full disk raises :class:`~fairdefense.errors.DiskFullError` naming the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # what open() would give, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(exc, path.parent):
            free = shutil.disk_usage(path.parent).free
            raise DiskFullError(
                f"cannot write {str(path)!r}: the disk holding {str(path.parent)!r} is full ({free / 2**20:.0f} MiB "
                f"free). {'The previous ' + path.name + ' is intact. ' if path.exists() else ''}Free some space "
                f"(or write to another disk with --out), then run again; a training run continues with "
                f"fairdefense train --resume {path.parent / 'last.pt'}."
            ) from exc
        raise
    return path


#: torch.save reports a failed write of its zip container as a RuntimeError naming this file
_TORCH_WRITER = "inline_container"
_NEARLY_FULL = 16 * 2**20


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (or an exception it chains) says that the disk is full or over quota; torch's
    own writer error counts when the folder's disk is nearly full (it does not always chain the cause)."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) for e in chain):
        return True
    torch_writer = any(isinstance(e, RuntimeError) and _TORCH_WRITER in str(e) for e in chain)
    return torch_writer and shutil.disk_usage(folder).free < _NEARLY_FULL


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename)."""
    return write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; errors say what is wrong with the file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p.name for p in path.glob("*.pt"))
        raise ConfigError(
            f"{str(path)!r} is a folder; pass a checkpoint file in it"
            + (f": {', '.join(str(path / f) for f in files)}." if files else " (it holds no .pt file).")
        )
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
