"""``metrics.json``: the versioned, documented record of one evaluation.

Top-level fields (schema version 1; ``docs/evaluation.md`` describes each):
``schema_version``, ``fairdefense_version``, ``created``, ``run`` (config
summary and strategy label), ``evaluated`` (which checkpoint, epoch and weights),
``data`` (split, sample count, class names and per-class counts), ``settings``
(radius, norm, seed and every attack's exact settings), ``clean`` (per-class
accuracy and error with summaries), ``attacks`` (per attack, including the
``worst-case`` row: per-class robust accuracy, boundary and robust error, with
summaries) and ``losses`` (per-class mean losses, possibly empty).

Accuracies and errors are fractions in ``[0, 1]``; a class without samples is
``null``. Summaries are :func:`fairdefense.metrics.summarize`'s ``avg``,
``worst``, ``best``, ``gap`` and ``std`` over classes.
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
from fairdefense.evaluation import AUTOATTACK, attack_settings
from fairdefense.metrics import WORST_CASE, ClassReport
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
]

#: Version of the ``metrics.json`` layout; raised on any incompatible change.
SCHEMA_VERSION = 1
#: Config fields copied into ``metrics.json``'s ``run`` summary.
RUN_KEYS = (
    "dataset", "model", "objective", "beta", "epochs", "batch_size", "lr", "schedule", "eps", "eps_step",
    "attack_steps", "norm", "val_size", "select_best", "seed", "plugins", "plugin_options",
)


def strategy_label(config: Mapping[str, Any]) -> str:
    """``"bat"``, ``"cfa+ema"``, or ``"baseline (at)"`` / ``"baseline (trades)"`` without plugins."""
    plugins = list(config.get("plugins") or [])
    return "+".join(plugins) if plugins else f"baseline ({config.get('objective') or 'at'})"


def _values(t: Tensor) -> list[float | None]:
    return [None if math.isnan(v) else v for v in t.tolist()]


def _tensor(values: Sequence[float | None]) -> Tensor:
    return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)


def _finite(obj: Any) -> Any:
    """NaN -> ``None`` throughout (JSON has no NaN)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


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
) -> dict[str, Any]:
    """The ``metrics.json`` dict of one evaluation.

    ``config`` is the run's :class:`~fairdefense.config.TrainConfig` as a dict;
    ``evaluated`` describes the weights (``checkpoint``, ``selection``, ``epoch``,
    ``weights``, ``weights_used``); ``eps``/``norm``/``seed``/``autoattack`` are the
    settings the report was produced with.
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
    return _finite(json.loads(json.dumps(metrics, default=str)))


def report_from_metrics(metrics: Mapping[str, Any]) -> ClassReport:
    """The :class:`~fairdefense.metrics.ClassReport` a ``metrics.json`` dict was built from."""
    return ClassReport(
        class_names=list(metrics["data"]["class_names"]),
        counts=torch.tensor(metrics["data"]["counts"], dtype=torch.long),
        clean_acc=_tensor(metrics["clean"]["acc"]),
        robust_acc={k: _tensor(v["robust_acc"]) for k, v in metrics["attacks"].items()},
        losses={k: _tensor(v) for k, v in metrics.get("losses", {}).items()},
    )


def save_metrics(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``metrics`` as indented JSON (strict: no NaN) and return the path."""
    path = Path(path)
    path.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return path


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read a ``metrics.json``, checking its schema version."""
    path = Path(path)
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {str(path)!r} as metrics.json: {exc}") from exc
    version = metrics.get("schema_version") if isinstance(metrics, dict) else None
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{str(path)!r} has metrics.json schema version {version!r}, this fairdefense reads version "
            f"{SCHEMA_VERSION}; re-run `fairdefense evaluate` on the run to rewrite it."
        )
    return metrics
