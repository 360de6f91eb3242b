"""fairdefense: robust fairness for adversarial training.

Strategies (FRL, BAT, FAAL, CFA, ...) are pluggy plugins around one generic
adversarial trainer; see ``docs/index.md``.
"""
from __future__ import annotations

from fairdefense.api import build_trainer, evaluate_checkpoint, resume, train
from fairdefense.attacks import AttackRecord, pgd, pgd_early_stop
from fairdefense.config import TrainConfig
from fairdefense.data import DatasetBundle, dataset_spec, list_datasets, load_dataset
from fairdefense.hookdata import BatchInfo, BatchOutputs, EpochInfo, LossWeights, Margins, RunInfo, Selection
from fairdefense.errors import (
    ConfigError,
    FairDefenseError,
    HookReturnError,
    MissingDependencyError,
    NonFiniteLossError,
    DiskFullError,
    PluginError,
    PluginNotFoundError,
    PluginOptionError,
)
from fairdefense.evaluation import evaluate
from fairdefense.loading import LoadedModel, load_model
from fairdefense.pluginhost import PluginHost, PluginInfo, list_plugins
from fairdefense.metrics import ClassReport, ClassStats
from fairdefense.models import create_model, list_models
from fairdefense.objectives import FAT, MART, PGDAT, TRADES, Objective, ObjectiveInfo, list_objectives, make_objective
from fairdefense.plugin import FairnessPlugin, hookimpl
from fairdefense.trainer import Trainer, TrainResult
from fairdefense.version import __version__

#: The ART adapters, loaded on first access (``fairdefense.FairAdversarialTrainer``):
#: importing ART takes seconds and only ART users need it, so they stay out of
#: ``__all__`` and ``from fairdefense import *`` does not import ART.
_ART_EXPORTS = ("FairAdversarialTrainer", "from_art_trainer", "per_class_robustness")


def __getattr__(name: str):
    """Load the ART adapters on first access."""
    if name in _ART_EXPORTS:
        from fairdefense import art

        return getattr(art, name)
    raise AttributeError(f"module 'fairdefense' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ART_EXPORTS))


__all__ = [
    "__version__",
    # plugins
    "FairnessPlugin",
    "hookimpl",
    "list_plugins",
    "PluginHost",
    "PluginInfo",
    # hook values
    "RunInfo",
    "EpochInfo",
    "BatchInfo",
    "BatchOutputs",
    "Margins",
    "Selection",
    "LossWeights",
    "AttackRecord",
    "ClassStats",
    "ClassReport",
    # training
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "train",
    "resume",
    "build_trainer",
    "Objective",
    "PGDAT",
    "TRADES",
    "MART",
    "FAT",
    "make_objective",
    "list_objectives",
    "ObjectiveInfo",
    "pgd",
    "pgd_early_stop",
    # evaluation
    "evaluate",
    "evaluate_checkpoint",
    "load_model",
    "LoadedModel",
    "create_model",
    "list_models",
    # data
    "DatasetBundle",
    "load_dataset",
    "dataset_spec",
    "list_datasets",
    # errors
    "FairDefenseError",
    "ConfigError",
    "PluginError",
    "PluginNotFoundError",
    "PluginOptionError",
    "HookReturnError",
    "NonFiniteLossError",
    "DiskFullError",
    "MissingDependencyError",
]
