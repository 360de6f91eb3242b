"""The run folder: the one place that knows a run's file names and formats.

A run folder holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one
JSON line per completed epoch), ``last.pt`` (the checkpoint of the last completed
epoch), ``best.pt`` (with ``select_best``: the best validation epoch) and the
report files :data:`REPORT_FILES`. The trainer, the Python API, the reports and the
command line all go through :class:`RunFolder`.

Only the main process writes: in a data-parallel run every process holds a
``RunFolder`` for the same path, and the writing methods do nothing on the other
ranks (:func:`fairdefense.distributed.is_main`). Checkpoints are written atomically
(:func:`fairdefense.checkpoint.save_checkpoint`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fairdefense import distributed
from fairdefense.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from fairdefense.errors import ConfigError

__all__ = ["RunFolder", "REPORT_FILES", "CHECKPOINTS", "load_training_state", "is_training_state"]

#: The files a report writes into its folder.
REPORT_FILES = ("metrics.json", "report.md", "classwise.png", "curves.png")
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

    def read_history(self) -> list[dict[str, Any]]:
        """The epochs of ``metrics.jsonl`` in order (an epoch logged twice keeps its last line)."""
        path = self.history_file
        if not path.is_file():
            return []
        by_epoch: dict[int, dict[str, Any]] = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as exc:
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
            self.config_file.write_text(json.dumps(config, indent=2, default=str))

    def append_history(self, entry: dict[str, Any]) -> None:
        """Append one epoch's line to ``metrics.jsonl`` (main process only)."""
        if distributed.is_main():
            with open(self.history_file, "a") as f:
                f.write(json.dumps(entry) + "\n")

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
