"""``metrics.json``: the versioned, documented record of one evaluation.

Top-level fields (schema version 2; ``docs/evaluation.md`` describes each):
``schema_version``, ``fairdefense_version``, ``created``, ``run`` (config
summary and strategy label), ``evaluated`` (which checkpoint, epoch and weights),
``data`` (split, fold, which samples, sample count, class names and per-class
counts), ``settings`` (radius, norm, seed and every attack's exact settings),
``stats`` (how the intervals were computed), ``clean`` (per-class accuracy and
error with summaries and intervals), ``attacks`` (per attack, including the
``worst-case`` row: per-class correct counts, robust accuracy with intervals,
boundary and robust error, summaries with bootstrap intervals, and the confusion
matrix) and ``losses`` (per-class mean losses, possibly empty).

Accuracies and errors are fractions in ``[0, 1]``; a class without samples is
``null``. Summaries are :func:`fairdefense.metrics.summarize`'s ``avg``,
``worst``, ``best``, ``gap`` and ``std`` over classes. Version 1 files (no
intervals, no confusion) are still read: :func:`load_metrics` adds the intervals,
which follow from the per-class counts.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from fairdefense.errors import ConfigError
from fairdefense.jsonsafe import json_safe
from fairdefense.evaluation import AUTOATTACK, attack_settings
from fairdefense.metrics import WORST_CASE, ClassReport
from fairdefense.stats import BOOTSTRAP_SEED, LEVEL, RESAMPLES, bootstrap_summaries, class_intervals
from fairdefense.version import __version__

__all__ = [
    "SCHEMA_VERSION",
    "RUN_KEYS",
    "strategy_label",
    "build_metrics",
    "report_from_metrics",
    "save_metrics",
    "load_metrics",
    "headline_attack",
    "eps_text",
    "correct_counts",
    "add_intervals",
    "READABLE_VERSIONS",
]

#: Version of the ``metrics.json`` layout; raised on any incompatible change.
SCHEMA_VERSION = 2
#: Versions :func:`load_metrics` reads (older ones gain the intervals on reading).
READABLE_VERSIONS = (1, 2)
#: Config fields copied into ``metrics.json``'s ``run`` summary.
RUN_KEYS = (
    "dataset", "model", "objective", "beta", "epochs", "batch_size", "lr", "schedule", "eps", "eps_step",
    "attack_steps", "norm", "val_size", "select_best", "seed", "fold", "plugins", "plugin_options",
)


def strategy_label(config: Mapping[str, Any]) -> str:
    """``"bat"``, ``"cfa+ema"``, or ``"baseline (at)"`` / ``"baseline (trades)"`` without plugins."""
    plugins = list(config.get("plugins") or [])
    return "+".join(plugins) if plugins else f"baseline ({config.get('objective') or 'at'})"


def _values(t: Tensor) -> list[float | None]:
    return [None if math.isnan(v) else v for v in t.tolist()]


def _tensor(values: Sequence[float | None]) -> Tensor:
    return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)


def correct_counts(acc: Sequence[float | None], counts: Sequence[int]) -> list[int]:
    """Per-class numbers of correct samples from accuracies and sample counts (a class
    without samples: 0)."""
    return [0 if a is None or (isinstance(a, float) and math.isnan(a)) else int(round(a * n))
            for a, n in zip(acc, counts)]


def _stats_settings() -> dict[str, Any]:
    return {"level": LEVEL, "class_interval": "clopper-pearson",
            "summary_interval": "stratified percentile bootstrap", "resamples": RESAMPLES, "seed": BOOTSTRAP_SEED}


def _with_intervals(entry: dict[str, Any], acc_key: str, counts: Sequence[int], summary_key: str) -> None:
    """Add ``correct``, ``ci`` (per class) and ``summary_ci[summary_key]`` to an entry."""
    correct = correct_counts(entry[acc_key], counts)
    entry["correct"] = correct
    entry["ci"] = [None if n == 0 else list(ci) for ci, n in zip(class_intervals(correct, counts), counts)]
    entry["summary_ci"] = {summary_key: {k: list(v) for k, v in bootstrap_summaries(correct, counts).items()}}


def add_intervals(metrics: dict[str, Any]) -> dict[str, Any]:
    """Fill ``stats`` and every per-class and summary interval of a ``metrics.json`` dict
    from its accuracies and per-class counts (in place; returns it)."""
    counts = metrics["data"]["counts"]
    metrics["stats"] = _stats_settings()
    _with_intervals(metrics["clean"], "acc", counts, "acc")
    for entry in metrics["attacks"].values():
        _with_intervals(entry, "robust_acc", counts, "robust_acc")
    return json_safe(metrics)


def eps_text(eps: float) -> str:
    """A radius for people: ``0.2`` when short as a decimal, else ``8/255`` when a whole number of 255ths."""
    plain, k = f"{eps:g}", eps * 255
    return f"{round(k)}/255" if len(plain) > 5 and abs(k - round(k)) < 1e-6 else plain


def headline_attack(attacks: Sequence[str]) -> str:
    """The attack a report leads with: the worst case, else AutoAttack, else the first."""
    for name in (WORST_CASE, AUTOATTACK):
        if name in attacks:
            return name
    if not attacks:
        raise ConfigError("this evaluation has no attack; evaluate with at least one (e.g. --attacks pgd20).")
    return attacks[0]


def build_metrics(
    report: ClassReport,
    *,
    config: Mapping[str, Any],
    evaluated: Mapping[str, Any],
    eps: float,
    norm: str,
    seed: int,
    autoattack: Sequence[str] | None = None,
    run_dir: str | Path | None = None,
    split: str = "test",
    samples: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` dict of one evaluation.

    ``config`` is the run's :class:`~fairdefense.config.TrainConfig` as a dict;
    ``evaluated`` describes the weights (``checkpoint``, ``selection``, ``epoch``,
    ``weights``, ``weights_used``); ``eps``/``norm``/``seed``/``autoattack`` are the
    settings the report was produced with. ``samples`` says which samples were
    scored (``first_n``, ``sha256`` of the evaluated inputs and labels; unknown when
    not given).
    """
    summary = report.summary()
    attacks = [a for a in report.robust_acc if a != WORST_CASE]
    settings = {a: attack_settings(a, eps=eps, norm=norm, num_classes=report.num_classes, autoattack=autoattack)
                for a in attacks}
    entries: dict[str, Any] = {}
    for name in report.robust_acc:
        entries[name] = {
            "robust_acc": _values(report.robust_acc[name]),
            "boundary_error": _values(report.boundary_error(name)),
            "robust_error": _values(report.robust_error(name)),
            "summary": {q: summary[f"{name}/{q}"] for q in ("robust_acc", "boundary_error", "robust_error")},
        }
    for name, matrix in report.confusion.items():
        entries[name]["confusion"] = matrix.tolist()
    if WORST_CASE in entries:
        entries[WORST_CASE]["over"] = attacks
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "fairdefense_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": {
            "dir": None if run_dir is None else str(run_dir),
            "strategy": strategy_label(config),
            **{k: config.get(k) for k in RUN_KEYS},
        },
        "evaluated": dict(evaluated),
        "data": {
            "split": split,
            "fold": config.get("fold"),
            "first_n": (samples or {}).get("first_n"),
            "sha256": (samples or {}).get("sha256"),
            "n_samples": int(report.counts.sum()),
            "class_names": list(report.class_names),
            "counts": report.counts.tolist(),
        },
        "settings": {"eps": eps, "norm": norm, "seed": seed, "attacks": settings},
        "clean": {
            "acc": _values(report.clean_acc),
            "error": _values(report.clean_error),
            "summary": {"acc": summary["clean_acc"], "error": summary["clean_error"]},
        },
        "attacks": entries,
        "losses": {k: _values(v) for k, v in report.losses.items()},
    }
    return add_intervals(json_safe(json.loads(json.dumps(metrics, default=str))))


def report_from_metrics(metrics: Mapping[str, Any]) -> ClassReport:
    """The :class:`~fairdefense.metrics.ClassReport` a ``metrics.json`` dict was built from."""
    return ClassReport(
        class_names=list(metrics["data"]["class_names"]),
        counts=torch.tensor(metrics["data"]["counts"], dtype=torch.long),
        clean_acc=_tensor(metrics["clean"]["acc"]),
        robust_acc={k: _tensor(v["robust_acc"]) for k, v in metrics["attacks"].items()},
        losses={k: _tensor(v) for k, v in metrics.get("losses", {}).items()},
        confusion={k: torch.tensor(v["confusion"], dtype=torch.long)
                   for k, v in metrics["attacks"].items() if v.get("confusion") is not None},
    )


def save_metrics(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``metrics`` as indented JSON (strict: no NaN) and return the path."""
    path = Path(path)
    path.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return path


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read a ``metrics.json``, checking its schema version; a version 1 file gains the
    intervals (computed from its counts) and keeps ``schema_version`` 1."""
    path = Path(path)
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {str(path)!r} as metrics.json: {exc}") from exc
    version = metrics.get("schema_version") if isinstance(metrics, dict) else None
    if version not in READABLE_VERSIONS:
        raise ConfigError(
            f"{str(path)!r} has metrics.json schema version {version!r}, this fairdefense reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; re-run `fairdefense evaluate` on the run to rewrite it."
        )
    return add_intervals(metrics) if version == 1 else metrics
