"""Run folders: evaluate a run or checkpoint, and write its report files.

A run folder (written by :class:`~fairdefense.trainer.Trainer`) holds
``config.json``, ``metrics.jsonl`` (one line per epoch), ``last.pt`` and, with
``select_best``, ``best.pt``; :class:`~fairdefense.run_folder.RunFolder` knows their
names and formats. The report files are :data:`REPORT_FILES`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from fairdefense.errors import ConfigError
from fairdefense.metrics import ClassReport
from fairdefense.reports.markdown import confusion_attack, render_report
from fairdefense.reports.plots import plot_classwise, plot_confusion, plot_curves
from fairdefense.reports.schema import build_metrics, load_metrics, save_metrics
from fairdefense.run_folder import REPORT_FILES, RunFolder, load_training_state, writable_folder

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


def resolve_checkpoint(target: str | Path, which: str | None = None) -> tuple[Path, Path]:
    """``(checkpoint file, run folder)`` for a run folder or a checkpoint file.

    In a run folder, ``which`` picks ``"last"`` (default, ``last.pt``) or ``"best"``
    (``best.pt``, written with ``select_best``); a checkpoint file is used as it is.
    """
    ckpt, folder = RunFolder.resolve(target, which)
    return ckpt, folder.path


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epochs of ``run_dir/metrics.jsonl`` in order (an epoch logged twice keeps its last line)."""
    return RunFolder(run_dir).read_history()


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
    """Write ``metrics.json``, ``classwise.png``, ``curves.png`` (when there is a history),
    ``confusion.png`` (when an attack has a confusion matrix) and ``report.md`` into
    ``out_dir``; returns ``{file name: path}``. The curves mark
    ``metrics["evaluated"]["best_epoch"]`` when it is set."""
    folder = RunFolder(out_dir)
    folder.path.mkdir(parents=True, exist_ok=True)
    files = {"metrics.json": save_metrics(metrics, folder.report_file("metrics.json")),
             "classwise.png": plot_classwise(metrics, folder.report_file("classwise.png"))}
    if history:
        title = f"{metrics['run']['strategy']} on {metrics['run']['dataset']}: robust accuracy per epoch"
        files["curves.png"] = plot_curves(history, folder.report_file("curves.png"), title=title,
                                          best_epoch=metrics["evaluated"].get("best_epoch"))
    shown = confusion_attack(metrics)
    if shown is not None:
        files["confusion.png"] = plot_confusion(metrics, shown, folder.report_file("confusion.png"))
    report = folder.report_file("report.md")
    report.write_text(render_report(metrics, [name for name in files if name.endswith(".png")]))
    files["report.md"] = report
    return files


class _Fingerprinted:
    """The batches of a loader, passed through unchanged while a SHA-256 digest reads every
    sample in order: its inputs as float32 bytes, then its label as int64 bytes (the digest
    does not depend on the batch size), so ``metrics.json`` says exactly which samples were scored."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader, self.digest = loader, hashlib.sha256()

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.loader:
            rows = x.detach().cpu().float().reshape(len(x), -1).contiguous().numpy().view(np.uint8)
            labels = y.detach().cpu().long().reshape(-1, 1).numpy().view(np.uint8)
            self.digest.update(np.concatenate([rows, labels], axis=1).tobytes())
            yield x, y


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
    progress: bool | Callable[[Iterable], Iterable] = False,
    out: str | Path | None = None,
    write: bool = True,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Evaluate a run folder or checkpoint on its test split (its fold's, for a k-fold run)
    and write the report files. The one public way to evaluate a checkpoint.

    ``attacks`` defaults to :data:`DEFAULT_ATTACKS`; ``checkpoint`` is ``"last"`` or
    ``"best"`` for a run folder; ``weights="eval"`` uses the weights a plugin supplied
    for evaluation (EMA, FAWA) when there are any, ``"trained"`` the trained ones;
    ``n_samples`` takes the first N test samples; ``progress`` is ``True`` for a tqdm
    bar or a wrapper of the batch iterable. The files go to ``out`` (default: the run
    folder, or the checkpoint's folder); ``write=False`` writes nothing. Returns the
    ``metrics.json`` dict and the written files.
    """
    from fairdefense.config import TrainConfig, select_device
    from fairdefense.data import load_dataset
    from fairdefense.evaluation import evaluate
    from fairdefense.loading import model_from_state

    for name, value, low in (("n_samples", n_samples, 1), ("batch_size", batch_size, 1)):
        if value is not None and not value >= low:
            raise ConfigError(f"{name} must be >= {low}, got {value}; leave it unset for the default.")
    if eps is not None and not eps > 0:
        raise ConfigError(f"eps must be > 0, got {eps}; it is the attack radius (leave it unset for the run's).")
    ckpt, run_dir = resolve_checkpoint(target, checkpoint)
    if write:  # before any computing: results that cannot be written are lost
        writable_folder(out or run_dir)
    state = load_training_state(ckpt)
    config = state["config"]
    run = TrainConfig.from_dict(config)
    meta = state["data"]
    if "dataset" not in meta:
        own, load = ("data", f"model, class_names = fairdefense.load_model({str(ckpt)!r})") if "model" in meta else (
            "data and a model", f"load its weights into your model (fairdefense.trainer.load_weights(model, {str(ckpt)!r}))")
        raise ConfigError(
            f"{str(ckpt)!r} was trained from Python on {own} of your own (no dataset name recorded), so it cannot "
            f"be evaluated here. Evaluate it from Python: {load}, then call fairdefense.evaluate(model, test_batches, "
            f"class_names, attacks, eps=..., clip=...); or train with a named dataset (fairdefense.train) to "
            f"evaluate from the command line."
        )
    model = model_from_state(state, weights, str(ckpt)).model
    dev = select_device(device)
    data = load_dataset(meta["dataset"], run.data_dir, fold=run.fold).test
    if n_samples is not None:
        data = Subset(data, range(min(n_samples, len(data))))
    batches = _Fingerprinted(DataLoader(data, batch_size=batch_size if batch_size is not None else run.batch_size, shuffle=False))
    bar = (lambda it: tqdm(it, desc=f"evaluating {ckpt.name}", unit="batch")) if progress is True else progress or None
    report = evaluate(
        model.to(dev), batches, meta["class_names"], list(attacks or DEFAULT_ATTACKS), eps=eps if eps is not None else run.eps,
        norm=run.norm, clip=tuple(meta["clip"]), device=dev, seed=seed, progress=bar, autoattack=autoattack,
    )
    selection = checkpoint or ("last" if Path(target).is_dir() else "file")
    metrics = build_metrics(
        report, config=config, evaluated=_evaluated(config, state, ckpt, selection, weights, int(state["epoch"])),
        eps=eps if eps is not None else run.eps, norm=run.norm, seed=seed, autoattack=autoattack, run_dir=run_dir,
        samples={"first_n": n_samples, "sha256": batches.digest.hexdigest()},
    )
    if not write:
        return metrics, {}
    history = read_history(run_dir) or list(state.get("history") or [])
    return metrics, write_report_files(out or run_dir, metrics, history)


def metrics_from_training(run_dir: str | Path) -> dict[str, Any]:
    """The ``metrics.json`` dict of a run's last test evaluation during training (``metrics.jsonl``)."""
    folder = RunFolder(run_dir)
    config = folder.read_config()
    tested = [e for e in folder.read_history() if e.get("test")]
    if not tested:
        raise ConfigError(
            f"{str(run_dir)!r} has no test evaluation in metrics.jsonl; run `fairdefense evaluate {run_dir}`."
        )
    last = tested[-1]
    ckpt = folder.last
    state = load_training_state(ckpt) if ckpt.is_file() else None
    return build_metrics(
        ClassReport.from_dict(last["test"]), config=config,
        evaluated=_evaluated(config, state, ckpt if state else None, "training", "eval", int(last["epoch"])),
        eps=config["eps"], norm=config["norm"], seed=config["seed"], run_dir=folder.path,
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
    if path.is_dir() and RunFolder(path).report_file("metrics.json").is_file():
        return load_metrics(RunFolder(path).report_file("metrics.json"))
    if path.is_dir():
        return metrics_from_training(path)
    raise ConfigError(f"{str(path)!r} is neither a run folder nor a metrics.json file.")
