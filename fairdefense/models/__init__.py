"""Model registry (``list_models``/``create_model``, as timm does) and input normalisation."""
from __future__ import annotations

import difflib
from typing import Callable

from torch import nn

from fairdefense.errors import ConfigError
from fairdefense.listing import matches
from fairdefense.models.normalize import Normalized
from fairdefense.models.preact_resnet import PreActResNet, preact_resnet18
from fairdefense.models.resnet import ResNet, resnet18
from fairdefense.models.small_cnn import SmallCNN
from fairdefense.models.wide_resnet import WideResNet, wrn28_10, wrn34_10

__all__ = [
    "MODELS",
    "register_model",
    "list_models",
    "create_model",
    "model_factory",
    "Normalized",
    "SmallCNN",
    "PreActResNet",
    "ResNet",
    "WideResNet",
]

#: Model name -> factory ``(num_classes, input_shape) -> nn.Module``. The ResNets
#: are CIFAR-style (3x3 stem, no stem pooling) for 32x32 inputs; their global
#: average pooling accepts larger inputs too.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "preact_resnet18": preact_resnet18,
    "resnet18": resnet18,
    "wrn28_10": wrn28_10,
    "wrn34_10": wrn34_10,
}


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make ``factory(num_classes=..., input_shape=...)`` available as ``--model name``."""
    MODELS[name] = factory


def list_models(filter: str | None = None) -> list[str]:
    """Registered model names; ``filter`` follows :func:`fairdefense.listing.matches` (``"resnet"``, ``"wrn*"``)."""
    return [n for n in sorted(MODELS) if matches(n, filter)]


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name``; unknown names suggest the nearest ones."""
    if name not in MODELS:
        near = difflib.get_close_matches(name, list(MODELS), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}.")
    return MODELS[name]


def create_model(
    name: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> nn.Module:
    """Build a registered model; with ``mean``/``std`` it is wrapped in :class:`Normalized`."""
    net = model_factory(name)(num_classes=num_classes, input_shape=tuple(input_shape))
    return Normalized(net, mean, std) if mean is not None else net
