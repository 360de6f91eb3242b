"""The dataset bundle every loader returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["DatasetBundle"]


@dataclass
class DatasetBundle:
    """A dataset ready for training.

    - ``train``/``test``: datasets of ``(x, y)`` with ``x`` a float tensor in ``[0, 1]``,
      without augmentation (validation splits are carved from ``train``).
    - ``train_targets``: the training labels ``(N,)`` (int64), for per-class splits.
    - ``augment``: per-sample augmentation applied to training batches only, or ``None``.
    - ``mean``/``std``: per-channel normalisation folded into the model (``None`` = none).
    - ``defaults``: training settings suited to this data (``eps``, ``epochs``, ``model``...).
    """

    name: str
    train: Dataset
    test: Dataset
    train_targets: Tensor
    class_names: list[str]
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: Callable[[Tensor], Tensor] | None = None
    clip: tuple[float, float] = (0.0, 1.0)
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
