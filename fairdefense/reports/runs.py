"""Run folders: evaluate a run or checkpoint, and write its report files.

A run folder (written by :class:`~fairdefense.trainer.Trainer`) holds
``config.json``, ``metrics.jsonl`` (one line per epoch), ``last.pt`` and, with
``select_best``, ``best.pt``. The report files are :data:`REPORT_FILES`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from fairdefense.checkpoint import FORMAT_VERSION, load_checkpoint
from fairdefense.errors import ConfigError
from fairdefense.metrics import ClassReport
from fairdefense.reports.markdown import render_report
from fairdefense.reports.plots import plot_classwise, plot_curves
from fairdefense.reports.schema import build_metrics, load_metrics, save_metrics

__all__ = [
    "DEFAULT_ATTACKS",
    "REPORT_FILES",
    "resolve_checkpoint",
    "read_history",
    "evaluate_run",
    "write_report_files",
    "write_run_report",
    "metrics_from_training",
    "run_metrics",
]

#: Attacks ``fairdefense evaluate`` runs by default (the papers' set; clean is always measured).
DEFAULT_ATTACKS = ("pgd20", "cw20", "autoattack")
#: The files a report writes into its folder.
REPORT_FILES = ("metrics.json", "report.md", "classwise.png", "curves.png")


def resolve_checkpoint(target: str | Path, which: str | None = None) -> tuple[Path, Path]:
    """``(checkpoint file, run folder)`` for a run folder or a checkpoint file.

    In a run folder, ``which`` picks ``"last"`` (default, ``last.pt``) or ``"best"``
    (``best.pt``, written with ``select_best``); a checkpoint file is used as it is.
    """
    path = Path(target)
    if path.is_dir():
        which = which or "last"
        if which not in ("last", "best"):
            raise ConfigError(f"checkpoint must be 'last' or 'best', got {which!r}.")
        ckpt = path / f"{which}.pt"
        if ckpt.is_file():
            return ckpt, path
        if which == "best":
            raise ConfigError(
                f"{str(path)!r} has no best.pt: train with --select-best (it keeps the epoch with the highest "
                f"average + worst-class validation robust accuracy), or evaluate last.pt with --checkpoint last."
            )
        raise ConfigError(f"{str(path)!r} has no last.pt; give a fairdefense run folder or a checkpoint file.")
    if path.is_file():
        if which is not None:
            raise ConfigError(
                f"--checkpoint {which} picks a file in a run folder, but {str(path)!r} is a checkpoint file already; "
                f"drop --checkpoint or give the run folder."
            )
        return path, path.parent
    raise ConfigError(f"{str(path)!r} is neither a run folder nor a checkpoint file.")


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epochs of ``run_dir/metrics.jsonl`` in order (an epoch logged twice keeps its last line)."""
    path = Path(run_dir) / "metrics.jsonl"
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


def _training_state(path: Path) -> dict[str, Any]:
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ConfigError(f"{str(path)!r} is not a fairdefense training checkpoint (format {FORMAT_VERSION}).")
    return state


def _evaluated(
    config: dict[str, Any], state: dict[str, Any] | None, path: Path | None, selection: str, weights: str,
    epoch: int | None,
) -> dict[str, Any]:
    """``metrics.json``'s ``evaluated`` entry."""
    plugin = state is not None and weights == "eval" and state.get("eval_model") is not None
    return {
        "checkpoint": None if path is None else str(path),
        "selection": selection,
        "epoch": epoch,
        "best_epoch": state.get("best_epoch") if state is not None and config.get("select_best") else None,
        "weights": weights,
        "weights_used": "plugin" if plugin else "trained",
    }


def write_report_files(
    out_dir: str | Path, metrics: dict[str, Any], history: Sequence[dict[str, Any]]
) -> dict[str, Path]:
    """Write ``metrics.json``, ``classwise.png``, ``curves.png`` (when there is a history) and
    ``report.md`` into ``out_dir``; returns ``{file name: path}``. The curves mark
    ``metrics["evaluated"]["best_epoch"]`` when it is set."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics.json": save_metrics(metrics, out / "metrics.json"),
             "classwise.png": plot_classwise(metrics, out / "classwise.png")}
    if history:
        title = f"{metrics['run']['strategy']} on {metrics['run']['dataset']}: robust accuracy per epoch"
        files["curves.png"] = plot_curves(history, out / "curves.png", title=title,
                                          best_epoch=metrics["evaluated"].get("best_epoch"))
    report = out / "report.md"
    report.write_text(render_report(metrics, [name for name in files if name.endswith(".png")]))
    files["report.md"] = report
    return files


def evaluate_run(
    target: str | Path,
    attacks: Sequence[str] | None = None,
    *,
    checkpoint: str | None = None,
    eps: float | None = None,
    n_samples: int | None = None,
    batch_size: int | None = None,
    weights: str = "eval",
    device: str | None = None,
    seed: int = 0,
    autoattack: Sequence[str] | None = None,
    progress: bool = False,
    out: str | Path | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate a run folder or checkpoint on its test split and write the report files.

    ``attacks`` defaults to :data:`DEFAULT_ATTACKS`; ``checkpoint`` is ``"last"`` or
    ``"best"`` for a run folder; the files go to ``out`` (default: the run folder, or
    the checkpoint's folder). Returns the ``metrics.json`` dict and the written files.
    """
    from fairdefense.api import evaluate_checkpoint

    ckpt, run_dir = resolve_checkpoint(target, checkpoint)
    state = _training_state(ckpt)
    config = state["config"]
    attacks = list(attacks or DEFAULT_ATTACKS)
    bar = (lambda it: tqdm(it, desc=f"evaluating {ckpt.name}", unit="batch")) if progress else None
    report = evaluate_checkpoint(
        ckpt, attacks, eps=eps, n_samples=n_samples, batch_size=batch_size, weights=weights, device=device,
        seed=seed, progress=bar, autoattack=autoattack,
    )
    selection = checkpoint or ("last" if Path(target).is_dir() else "file")
    metrics = build_metrics(
        report, config=config, evaluated=_evaluated(config, state, ckpt, selection, weights, int(state["epoch"])),
        eps=eps or config["eps"], norm=config["norm"], seed=seed, autoattack=autoattack, run_dir=run_dir,
    )
    history = read_history(run_dir) or list(state.get("history") or [])
    files = write_report_files(out or run_dir, metrics, history)
    return metrics, files


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} has no config.json; give a fairdefense run folder.")
    return json.loads(path.read_text())


def metrics_from_training(run_dir: str | Path) -> dict[str, Any]:
    """The ``metrics.json`` dict of a run's last test evaluation during training (``metrics.jsonl``)."""
    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    tested = [e for e in read_history(run_dir) if e.get("test")]
    if not tested:
        raise ConfigError(
            f"{str(run_dir)!r} has no test evaluation in metrics.jsonl; run `fairdefense evaluate {run_dir}`."
        )
    last = tested[-1]
    ckpt = run_dir / "last.pt"
    state = _training_state(ckpt) if ckpt.is_file() else None
    return build_metrics(
        ClassReport.from_dict(last["test"]), config=config,
        evaluated=_evaluated(config, state, ckpt if state else None, "training", "eval", int(last["epoch"])),
        eps=config["eps"], norm=config["norm"], seed=config["seed"], run_dir=run_dir,
    )


def write_run_report(run_dir: str | Path) -> dict[str, Path]:
    """Report files for a finished training run, from its final test evaluation.

    Call it at the end of training; ``fairdefense evaluate`` rewrites them with
    stronger attacks.
    """
    return write_report_files(run_dir, metrics_from_training(run_dir), read_history(run_dir))


def run_metrics(target: str | Path) -> dict[str, Any]:
    """A run's ``metrics.json`` (or the given file), else its final test evaluation during training."""
    path = Path(target)
    if path.is_file():
        return load_metrics(path)
    if (path / "metrics.json").is_file():
        return load_metrics(path / "metrics.json")
    if path.is_dir():
        return metrics_from_training(path)
    raise ConfigError(f"{str(path)!r} is neither a run folder nor a metrics.json file.")
