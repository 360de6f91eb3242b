"""Deterministic stratified splits: hold-out sets and k-fold cross-validation."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fairdefense.errors import ConfigError

__all__ = ["per_class_split", "validation_split", "stratified_split", "kfold_indices", "kfold_split", "parse_fold"]


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


def validation_split(
    targets: Tensor, class_names: list[str], size: float, seed: int, purpose: str
) -> tuple[Tensor, Tensor]:
    """:func:`per_class_split` for a validation split that ``purpose`` scores per class: a
    class without samples, or one the split holds out nothing of, is an error saying how
    many samples are needed."""
    targets = torch.as_tensor(targets).long().cpu()
    counts = torch.bincount(targets, minlength=len(class_names))
    empty = [class_names[c] for c in range(len(class_names)) if counts[c] == 0]
    if empty:
        raise ConfigError(
            f"class(es) {empty} have no training samples, but {purpose} scores every class on a validation split: "
            f"each class needs at least 2 samples (1 held out, 1 to train on). Add samples of these classes, or "
            f"drop them from class_names and remap the labels."
        )
    kept, held = per_class_split(targets, size, seed)
    held_counts = torch.bincount(targets[held], minlength=len(class_names))
    short = [c for c in range(len(class_names)) if held_counts[c] == 0]
    if short:
        n = int(counts[short].min())
        raise ConfigError(
            f"val_size={size:g} holds out no sample of class(es) {[class_names[c] for c in short]} (the smallest has "
            f"{n} samples), but {purpose} needs at least 1 validation sample per class: use val_size=1 or more (a "
            f"count per class), or a fraction of at least {0.5 / n:.2g}."
        )
    return kept, held


def stratified_split(targets: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split off ``fraction`` of each class (e.g. a test set); returns ``(rest, split)``."""
    if not 0 < fraction < 1:
        raise ConfigError(f"fraction must be in (0, 1), got {fraction}.")
    return per_class_split(targets, fraction, seed)


def parse_fold(fold: str) -> tuple[int, int]:
    """``"2/5"`` -> ``(2, 5)``: fold 2 (counted from 0) of 5; raises ``ConfigError`` naming the form."""
    index, sep, folds = str(fold).partition("/")
    try:
        i, k = int(index), int(folds)
    except ValueError:
        i, k = -1, 0
    if not sep or k < 2 or not 0 <= i < k:
        raise ConfigError(f"fold must look like I/K with K >= 2 folds and 0 <= I < K (e.g. 0/5), got {fold!r}.")
    return i, k


def kfold_indices(targets: Tensor, folds: int, seed: int = 0) -> list[Tensor]:
    """Stratified k-fold: ``folds`` sorted index tensors, disjoint, together covering every sample once.

    Each class's samples are shuffled with ``seed``; the classes, one after the other, are
    dealt in turn to the folds (card ``p`` of the deal goes to fold ``p mod folds``), so
    every fold holds ``floor`` or ``ceil`` of ``n_c / folds`` samples of class ``c`` and
    fold sizes differ by at most one. The same targets and seed give the same folds.
    """
    if folds < 2:
        raise ConfigError(f"k-fold needs at least 2 folds, got {folds}.")
    targets = torch.as_tensor(targets).long().cpu()
    rng = np.random.default_rng(seed)
    deal = []
    for c in torch.unique(targets).tolist():
        idx = rng.permutation(torch.nonzero(targets == c).flatten().numpy())
        if len(idx) < folds:
            raise ConfigError(f"class {c} has {len(idx)} samples, fewer than the {folds} folds; use fewer folds.")
        deal.append(idx)
    cards = np.concatenate(deal)
    return [torch.from_numpy(np.sort(cards[f::folds])) for f in range(folds)]


def kfold_split(targets: Tensor, fold: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(train, test)`` indices of ``fold`` (``"I/K"``): fold ``I`` of :func:`kfold_indices` is the test set."""
    i, k = parse_fold(fold)
    parts = kfold_indices(targets, k, seed)
    return torch.cat([p for j, p in enumerate(parts) if j != i]).sort().values, parts[i]
