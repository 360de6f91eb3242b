"""The run folder: the one place that knows a run's file names and formats.

A run folder holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one
JSON line per completed epoch), ``last.pt`` (the checkpoint of the last completed
epoch), ``best.pt`` (with ``select_best``: the best validation epoch) and the
report files :data:`REPORT_FILES`. The trainer, the Python API, the reports and the
command line all go through :class:`RunFolder`.

Only the main process writes: in a data-parallel run every process holds a
``RunFolder`` for the same path, and the writing methods do nothing on the other
ranks (:func:`fairdefense.distributed.is_main`). Every file is written whole: to a
temporary file in the folder, flushed, then renamed over the target
(:func:`fairdefense.checkpoint.save_checkpoint` for checkpoints), so a crash or a full
disk leaves the previous version, never a cut one.

A training run claims its folder with :meth:`RunFolder.open` and frees it with
:meth:`RunFolder.close`:

- a folder that already holds a run (``config.json``, ``metrics.jsonl``, ``last.pt``
  or ``best.pt``) is refused unless the run is resumed (its checkpoint was restored)
  or ``overwrite`` is asked, which removes the old run's files first;
- a lock file, :data:`LOCK`, names the process that holds the folder for the run's
  life; a second training into the folder is refused with that process's name. A
  lock left by a process that no longer runs (same machine), or by the previous
  attempt of a ``torchrun`` job that restarted, is stale and taken over;
- temporary files left by a write that was killed are removed.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from fairdefense import distributed
from fairdefense.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint, write_atomic
from fairdefense.errors import ConfigError
from fairdefense.jsonsafe import json_safe

__all__ = ["RunFolder", "REPORT_FILES", "CHECKPOINTS", "LOCK", "load_training_state", "is_training_state", "writable_folder"]

#: The lock file of a run folder in use.
LOCK = ".fairdefense.lock"
#: Seconds after which an unreadable lock file (its writer died while writing it) is stale.
_UNREADABLE_LOCK_AGE = 10.0

#: The files a report writes into its folder.
REPORT_FILES = ("metrics.json", "report.md", "classwise.png", "curves.png", "confusion.png")
#: Checkpoint names a run folder may hold (``fairdefense evaluate --checkpoint``).
CHECKPOINTS = ("last", "best")


def is_training_state(state: Any) -> bool:
    """Whether a loaded object is a fairdefense training checkpoint of the current format."""
    return isinstance(state, dict) and state.get("format") == FORMAT_VERSION and "model" in state


def load_training_state(path: str | Path, map_location: Any = "cpu", hint: str = "") -> dict[str, Any]:
    """Load a training checkpoint, or raise :class:`ConfigError` saying it is none (``hint``: what to do)."""
    state = load_checkpoint(path, map_location=map_location)
    if not is_training_state(state):
        raise ConfigError(
            f"{str(path)!r} is not a fairdefense training checkpoint (format {FORMAT_VERSION}){hint or '.'}"
        )
    return state


class RunFolder:
    """The files of one training run, in ``path``."""

    CONFIG = "config.json"
    HISTORY = "metrics.jsonl"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._locked = False

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ----------------------------------------------------------------- names
    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def history_file(self) -> Path:
        return self.path / self.HISTORY

    def checkpoint(self, which: str = "last") -> Path:
        """``last.pt`` or ``best.pt`` in this folder (the file may not exist yet)."""
        if which not in CHECKPOINTS:
            raise ConfigError(f"checkpoint must be one of {CHECKPOINTS}, got {which!r}.")
        return self.path / f"{which}.pt"

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    def report_file(self, name: str) -> Path:
        """One of :data:`REPORT_FILES` in this folder."""
        if name not in REPORT_FILES:
            raise ConfigError(f"unknown report file {name!r}; report files are {REPORT_FILES}.")
        return self.path / name

    # ----------------------------------------------------------------- reads
    def has_checkpoint(self, which: str = "last") -> bool:
        return self.checkpoint(which).is_file()

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as a dict."""
        if not self.config_file.is_file():
            raise ConfigError(f"{str(self.path)!r} has no {self.CONFIG}; give a fairdefense run folder.")
        return json.loads(self.config_file.read_text())

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    def run_files(self) -> list[Path]:
        """The files of a run this folder holds (config, history, checkpoints)."""
        names = [self.CONFIG, self.HISTORY] + [f"{which}.pt" for which in CHECKPOINTS]
        return [self.path / name for name in names if (self.path / name).is_file()]

    def read_history(self) -> list[dict[str, Any]]:
        """The epochs of ``metrics.jsonl`` in order (an epoch logged twice keeps its last line).

        A damaged last line (a write cut by a crash, from a version that appended in
        place) is skipped with a warning; a damaged line before it is an error naming it.
        """
        path = self.history_file
        if not path.is_file():
            return []
        lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
        by_epoch: dict[int, dict[str, Any]] = {}
        for number, line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                if number == lines[-1][0]:
                    warnings.warn(f"{str(path)!r}: the last line ({number}) is damaged and was skipped: {exc}",
                                  stacklevel=2)
                    break
                raise ConfigError(f"{str(path)!r} line {number} is not JSON: {exc}") from exc
            by_epoch[int(entry["epoch"])] = entry
        return [by_epoch[e] for e in sorted(by_epoch)]

    def load(self, which: str = "last", map_location: Any = "cpu") -> dict[str, Any]:
        """The training state in ``last.pt`` or ``best.pt`` (format checked)."""
        return load_training_state(self.checkpoint(which), map_location)

    # ---------------------------------------------------------------- writes
    def write_config(self, config: dict[str, Any]) -> None:
        """Create the folder and write ``config.json`` (main process only)."""
        if distributed.is_main():
            self.path.mkdir(parents=True, exist_ok=True)
            _write_whole(self.config_file, json.dumps(json_safe(config), indent=2, default=str, allow_nan=False))

    # ------------------------------------------------------------ claim, free
    def open(self, *, resume: bool = False, overwrite: bool = False) -> None:
        """Claim the folder for a training run (main process only; see the module docstring).

        ``resume``: the run continues the one in the folder. ``overwrite``: a run in the
        folder is replaced (its files are removed). Raises :class:`ConfigError` when the
        folder holds another run or is in use.
        """
        if not distributed.is_main():
            return
        writable_folder(self.path)
        self._lock()
        try:
            for orphan in self.path.glob(".*.tmp"):
                orphan.unlink(missing_ok=True)
            held = self.run_files()
            if held and not resume:
                if not overwrite:
                    raise ConfigError(
                        f"{str(self.path)!r} already holds a run ({', '.join(p.name for p in held)}). Continue it "
                        f"with --resume {self.last} (Python: fairdefense.resume), start afresh with --overwrite "
                        f"(its files are removed), or choose another --out."
                    )
                for path in held + [self.path / name for name in REPORT_FILES]:
                    path.unlink(missing_ok=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Free the folder (removes the lock this object holds; nothing otherwise)."""
        if self._locked:
            self.lock_file.unlink(missing_ok=True)
            self._locked = False

    def _lock(self) -> None:
        holder: dict[str, Any] = {
            "pid": os.getpid(), "host": socket.gethostname(), "run_id": os.environ.get("TORCHELASTIC_RUN_ID"),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        for _ in range(3):
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self._lock_holder()
                if other is not None and not _stale(other, holder):
                    raise ConfigError(
                        f"{str(self.path)!r} is in use by another training: process {other.get('pid')} on "
                        f"{other.get('host')}, since {other.get('started')}. Wait for it to finish or choose another "
                        f"--out; if that process no longer runs, delete {self.lock_file}."
                    ) from None
                self.lock_file.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(holder, f)
            self._locked = True
            return
        raise ConfigError(f"could not take the lock {self.lock_file}: other processes keep taking it; retry.")

    def _lock_holder(self) -> dict[str, Any] | None:
        """The lock's holder; ``None`` when the lock file is unreadable and old (stale)."""
        try:
            return json.loads(self.lock_file.read_text())
        except (OSError, ValueError):
            try:
                young = time.time() - self.lock_file.stat().st_mtime < _UNREADABLE_LOCK_AGE
            except OSError:
                return None
            return {"pid": "?", "host": "?", "started": "just now"} if young else None

    def append_history(self, entry: dict[str, Any]) -> None:
        """Add one epoch's line to ``metrics.jsonl`` (main process only).

        The line is strict JSON (NaN and infinities, e.g. the accuracy of a class absent
        from a split, become ``null``) and the file is rewritten whole, so that every
        line stays readable whatever happens during the write. Lines of this epoch and
        later ones (written before a failed checkpoint write, then rerun on resume) are
        replaced.
        """
        if not distributed.is_main():
            return
        lines = [json.dumps(e, allow_nan=False) for e in self.read_history() if int(e["epoch"]) < int(entry["epoch"])]
        lines.append(json.dumps(json_safe(entry), allow_nan=False))
        _write_whole(self.history_file, "\n".join(lines) + "\n")

    def save(self, state: dict[str, Any], which: str = "last") -> Path:
        """Write a checkpoint atomically (main process only); returns its path."""
        path = self.checkpoint(which)
        if distributed.is_main():
            save_checkpoint(state, path)
        return path

    # --------------------------------------------------------------- resolve
    @classmethod
    def resolve(cls, target: str | Path, which: str | None = None) -> tuple[Path, "RunFolder"]:
        """``(checkpoint file, run folder)`` for a run folder or a checkpoint file.

        In a run folder, ``which`` picks ``"last"`` (default) or ``"best"`` (written with
        ``select_best``); a checkpoint file is used as it is, its folder being the run's.
        """
        path = Path(target)
        if path.is_dir():
            folder = cls(path)
            ckpt = folder.checkpoint(which or "last")
            if ckpt.is_file():
                return ckpt, folder
            if which == "best":
                raise ConfigError(
                    f"{str(path)!r} has no best.pt: train with --select-best (it keeps the epoch with the highest "
                    f"average + worst-class validation robust accuracy), or evaluate last.pt with --checkpoint last."
                )
            raise ConfigError(f"{str(path)!r} has no last.pt; give a fairdefense run folder or a checkpoint file.")
        if path.is_file():
            if which is not None:
                raise ConfigError(
                    f"--checkpoint {which} picks a file in a run folder, but {str(path)!r} is a checkpoint file "
                    f"already; drop --checkpoint or give the run folder."
                )
            return path, cls(path.parent)
        raise ConfigError(f"{str(path)!r} is neither a run folder nor a checkpoint file.")


def writable_folder(path: str | Path, what: str = "--out") -> Path:
    """``path`` as a folder this process can write into (created if missing), checked before
    any work is done: a file, or a folder that cannot be created or written, raises
    :class:`ConfigError` naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a file, not a folder; give a folder (it is created if missing).")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{what} {str(path)!r} cannot be written ({exc.strerror or exc}); choose a folder you can write to, "
            f"or fix its permissions."
        ) from exc
    return path


def _stale(holder: dict[str, Any], me: dict[str, Any]) -> bool:
    """Whether a lock held by ``holder`` may be taken over by ``me``."""
    if holder.get("run_id") is not None and holder.get("run_id") == me["run_id"] and distributed.restart_count() > 0:
        return True  # the previous attempt of this restarted torchrun job
    if holder.get("host") != me["host"] or not isinstance(holder.get("pid"), int):
        return False
    if holder["pid"] == me["pid"]:
        return True  # this process, e.g. after an interrupted fit
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole (:func:`~fairdefense.checkpoint.write_atomic`)."""
    write_atomic(path, lambda f: f.write(text.encode()))
