"""A RobustBench zoo model scored per class, with the report files of a run
(``fairdefense evaluate robustbench:<name>``; see :mod:`fairdefense.zoo`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from fairdefense.config import TrainConfig
from fairdefense.data import load_dataset
from fairdefense.evaluation import evaluate
from fairdefense.reports.runs import DEFAULT_ATTACKS, write_report_files
from fairdefense.reports.schema import build_metrics
from fairdefense.zoo import DEFAULT_EPS, load_zoo_model, parse_zoo_id, weights_path, zoo_id

__all__ = ["evaluate_zoo"]


def evaluate_zoo(
    spec: str,
    attacks: Sequence[str] | None = None,
    *,
    dataset: str = "cifar10",
    norm: str = "linf",
    model_dir: str | Path | None = None,
    data_dir: str | None = None,
    eps: float | None = None,
    n_samples: int | None = None,
    batch_size: int = 128,
    device: str | None = None,
    seed: int = 0,
    autoattack: Sequence[str] | None = None,
    progress: bool = False,
    out: str | Path | None = None,
    download: bool = True,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Per-class evaluation of the zoo model ``spec`` (``"robustbench:<name>"``) on ``dataset``'s
    test split, with the report files of a run (``metrics.json``, ``report.md``,
    ``classwise.png``) written to ``out`` (default ``runs/robustbench-<dataset>-<threat>-<name>``).

    ``eps`` defaults to 8/255 for L-inf and 0.5 for L2 (RobustBench's settings);
    ``attacks`` to :data:`~fairdefense.reports.DEFAULT_ATTACKS`. Returns the
    ``metrics.json`` dict and the written files.
    """
    model = zoo_id(spec, dataset, norm)
    net = load_zoo_model(model, model_dir, download)
    bundle = load_dataset(dataset, data_dir, download=download)
    data = bundle.test if n_samples is None else Subset(bundle.test, range(min(n_samples, len(bundle.test))))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    eps = eps if eps is not None else DEFAULT_EPS[norm]
    bar = (lambda it: tqdm(it, desc=f"evaluating {spec}", unit="batch")) if progress else None
    attacks = list(attacks or DEFAULT_ATTACKS)
    report = evaluate(net.to(dev), DataLoader(data, batch_size=batch_size), bundle.class_names, attacks, eps=eps,
                      norm=norm, clip=tuple(bundle.clip), device=dev, seed=seed, progress=bar, autoattack=autoattack)
    dataset_, threat, name = parse_zoo_id(model)
    folder = Path(out) if out is not None else Path("runs") / f"robustbench-{dataset_}-{threat}-{name}"
    config = TrainConfig(dataset=dataset, model=model, init=spec, norm=norm, eps=eps, batch_size=batch_size)
    evaluated = {"checkpoint": str(weights_path(model, model_dir)), "selection": "robustbench", "epoch": None,
                 "best_epoch": None, "weights": "trained", "weights_used": "trained"}
    metrics = build_metrics(report, config=config.to_dict(), evaluated=evaluated, eps=eps, norm=norm, seed=seed,
                            autoattack=autoattack, run_dir=folder)
    metrics["run"]["strategy"] = spec
    return metrics, write_report_files(folder, metrics, [])
