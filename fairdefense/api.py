"""High-level entry points: train on a named dataset, resume a run, evaluate a checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from fairdefense.checkpoint import FORMAT_VERSION, load_checkpoint
from fairdefense.config import TrainConfig
from fairdefense.data import load_dataset
from fairdefense.errors import ConfigError
from fairdefense.metrics import ClassReport
from fairdefense.models import create_model
from fairdefense.trainer import Trainer, TrainResult

__all__ = ["build_trainer", "train", "resume", "evaluate_checkpoint", "default_run_dir"]


def default_run_dir(config: TrainConfig, root: str | Path = "runs") -> Path:
    """``runs/<dataset>-<plugins or baseline>-<objective>-s<seed>``, numbered if it exists."""
    label = "+".join(config.plugins) or "baseline"
    base = Path(root) / f"{config.dataset}-{label}-{config.objective or 'auto'}-s{config.seed}"
    path, n = base, 2
    while path.exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return path


def build_trainer(
    config: TrainConfig, plugins: Sequence[Any] = (), *, progress: bool = True, download: bool = True
) -> Trainer:
    """Load ``config.dataset``, build ``config.model`` and return a ready :class:`Trainer`.

    Writes to ``config.out`` (``None``: nothing written). The model is initialised
    under ``config.seed``.
    """
    bundle = load_dataset(config.dataset, config.data_dir, download=download, fold=config.fold)
    model_name = config.model or bundle.defaults.get("model", "small_cnn")
    torch.manual_seed(config.seed)
    model = create_model(model_name, bundle.num_classes, bundle.input_shape, bundle.mean, bundle.std)
    meta = {
        "dataset": bundle.name, "model": model_name, "input_shape": list(bundle.input_shape),
        "mean": None if bundle.mean is None else list(bundle.mean),
        "std": None if bundle.std is None else list(bundle.std), "clip": list(bundle.clip),
    }
    return Trainer(
        model, bundle.train, bundle.class_names, config, plugins, test_data=bundle.test, clip=tuple(bundle.clip),
        train_targets=bundle.train_targets, augment=bundle.augment, dataset_defaults=bundle.defaults,
        data_meta=meta, run_dir=config.out, progress=progress,
    )


def train(
    config: TrainConfig | None = None, plugins: Sequence[Any] = (), *, progress: bool = True, **settings: Any
) -> TrainResult:
    """Train on a named dataset. ``settings`` override fields of ``config``::

        result = fairdefense.train(plugins=["bat"], epochs=5)
        result.report.summary()["pgd20/robust_acc"]
    """
    values = (config or TrainConfig()).to_dict()
    values.update(settings)
    return build_trainer(TrainConfig.from_dict(values), plugins, progress=progress).fit()


def resume(checkpoint: str | Path, *, epochs: int | None = None, progress: bool = True) -> TrainResult:
    """Continue the run that wrote ``checkpoint`` exactly where it stopped.

    ``epochs`` may extend the run. Results go to the checkpoint's folder.
    """
    state = load_checkpoint(checkpoint)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ConfigError(f"{str(checkpoint)!r} is not a fairdefense training checkpoint; use --init to fine-tune from weights.")
    config = TrainConfig.from_dict(state["config"])
    config.out = str(Path(checkpoint).parent)
    if epochs is not None:
        config.epochs = epochs
    trainer = build_trainer(config, progress=progress)
    trainer.resume(checkpoint)
    return trainer.fit()


def evaluate_checkpoint(
    checkpoint: str | Path,
    attacks: Sequence[str] | None = None,
    *,
    eps: float | None = None,
    n_samples: int | None = None,
    batch_size: int | None = None,
    weights: str = "eval",
    device: str | None = None,
    seed: int = 0,
    progress: Callable[[Iterable], Iterable] | None = None,
    autoattack: Sequence[str] | None = None,
) -> ClassReport:
    """The :class:`ClassReport` of :func:`fairdefense.reports.evaluate_run` (same arguments
    and defaults), without writing files."""
    from fairdefense.reports import evaluate_run, report_from_metrics

    metrics, _ = evaluate_run(checkpoint, attacks, eps=eps, n_samples=n_samples, batch_size=batch_size,
                              weights=weights, device=device, seed=seed, progress=progress, autoattack=autoattack,
                              write=False)
    return report_from_metrics(metrics)
