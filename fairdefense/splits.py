"""Deterministic stratified splits."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fairdefense.errors import ConfigError

__all__ = ["per_class_split", "stratified_split"]


def _per_class_count(n_c: int, size: float) -> int:
    return int(round(size * n_c)) if size < 1 else int(size)


def per_class_split(targets: Tensor, size: float, seed: int) -> tuple[Tensor, Tensor]:
    """Hold out ``size`` samples of every class: a count per class if ``size >= 1``,
    a fraction of each class if ``0 < size < 1``; ``0`` holds out nothing.

    Returns ``(kept, held_out)`` index tensors, sorted; the same seed gives the same
    split. A class too small for the request is an error naming it.
    """
    targets = torch.as_tensor(targets).long().cpu()
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in torch.unique(targets).tolist():
        idx = torch.nonzero(targets == c).flatten().numpy()
        k = _per_class_count(len(idx), size) if size > 0 else 0
        if k >= len(idx):
            raise ConfigError(
                f"cannot hold out {k} samples of class {c}: it has only {len(idx)}. Use a smaller val_size."
            )
        perm = rng.permutation(idx)
        held.append(perm[:k])
        kept.append(perm[k:])
    return torch.from_numpy(np.sort(np.concatenate(kept))), torch.from_numpy(np.sort(np.concatenate(held)))


def stratified_split(targets: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split off ``fraction`` of each class (e.g. a test set); returns ``(rest, split)``."""
    if not 0 < fraction < 1:
        raise ConfigError(f"fraction must be in (0, 1), got {fraction}.")
    return per_class_split(targets, fraction, seed)
