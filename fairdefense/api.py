"""High-level entry points: train on a named dataset, resume a run, evaluate a checkpoint."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import DataLoader, Subset

from fairdefense.checkpoint import FORMAT_VERSION, load_checkpoint
from fairdefense.config import TrainConfig
from fairdefense.data import load_dataset
from fairdefense.errors import ConfigError
from fairdefense.evaluation import evaluate
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
    under ``config.seed``. ``config.init="robustbench:<name>"`` starts from a RobustBench
    zoo model instead (see :mod:`fairdefense.zoo`).
    """
    from fairdefense.zoo import is_zoo, zoo_model  # lazily: python -m fairdefense.zoo runs that module

    bundle = load_dataset(config.dataset, config.data_dir, download=download)
    model_name = config.model or bundle.defaults.get("model", "small_cnn")
    torch.manual_seed(config.seed)
    mean, std, init = bundle.mean, bundle.std, config.init
    if is_zoo(init):  # a RobustBench model with its weights; it normalises its inputs itself
        model_name, model = zoo_model(config, download)
        mean = std = None
        config = dataclasses.replace(config, model=model_name, init=None)
    else:
        model = create_model(model_name, bundle.num_classes, bundle.input_shape, bundle.mean, bundle.std)
    meta = {
        "dataset": bundle.name, "model": model_name, "input_shape": list(bundle.input_shape),
        "mean": None if mean is None else list(mean),
        "std": None if std is None else list(std), "clip": list(bundle.clip),
    }
    trainer = Trainer(
        model, bundle.train, bundle.class_names, config, plugins, test_data=bundle.test, clip=tuple(bundle.clip),
        train_targets=bundle.train_targets, augment=bundle.augment, dataset_defaults=bundle.defaults,
        data_meta=meta, run_dir=config.out, progress=progress,
    )
    trainer.config.init = init
    return trainer


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
    """Per-class evaluation of a checkpoint on its dataset's test split.

    ``weights="eval"`` uses the weights a plugin supplied for evaluation (EMA,
    FAWA) when there are any, ``"trained"`` the trained weights. ``n_samples`` takes
    the first N test samples. ``progress`` and ``autoattack`` go to :func:`evaluate`.
    """
    state = load_checkpoint(checkpoint)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ConfigError(f"{str(checkpoint)!r} is not a fairdefense training checkpoint.")
    config = TrainConfig.from_dict(state["config"])
    meta = state["data"]
    bundle = load_dataset(meta["dataset"], config.data_dir)
    model = create_model(meta["model"], len(meta["class_names"]), tuple(meta["input_shape"]), meta["mean"], meta["std"])
    if weights not in ("eval", "trained"):
        raise ConfigError(f"weights must be 'eval' or 'trained', got {weights!r}.")
    chosen = state["eval_model"] if weights == "eval" and state["eval_model"] is not None else state["model"]
    model.load_state_dict(chosen)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = bundle.test
    if n_samples is not None:
        data = Subset(data, range(min(n_samples, len(data))))
    loader = DataLoader(data, batch_size=batch_size or config.batch_size, shuffle=False)
    return evaluate(
        model.to(dev), loader, meta["class_names"], attacks or config.eval_attacks, eps=eps or config.eps,
        norm=config.norm, clip=tuple(meta["clip"]), device=dev, seed=seed, progress=progress, autoattack=autoattack,
    )
