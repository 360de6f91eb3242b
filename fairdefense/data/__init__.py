"""Datasets: a registry of loaders returning :class:`DatasetBundle`, and splits.

Every loader yields inputs as float tensors in ``[0, 1]`` of shape ``(C, H, W)``
(or ``(D,)`` for tabular data) and integer labels. Normalisation statistics
travel in the bundle and are folded into the model, so attacks and radii are in
input space.
"""
from __future__ import annotations

import difflib
from typing import Callable

from fairdefense.data.bundle import DatasetBundle
from fairdefense.data.digits import load_digits_bundle
from fairdefense.data.splits import per_class_split, stratified_split
from fairdefense.errors import ConfigError

__all__ = ["DatasetBundle", "DATASETS", "load_dataset", "register_dataset", "per_class_split", "stratified_split"]

#: Dataset name -> loader ``(data_dir, download) -> DatasetBundle``.
DATASETS: dict[str, Callable[..., DatasetBundle]] = {"digits": load_digits_bundle}


def register_dataset(name: str, loader: Callable[..., DatasetBundle]) -> None:
    """Make ``loader(data_dir=..., download=...)`` available as ``--dataset name``."""
    DATASETS[name] = loader


def load_dataset(name: str, data_dir: str | None = None, download: bool = True) -> DatasetBundle:
    """Load a registered dataset by name; unknown names suggest the nearest ones."""
    if name not in DATASETS:
        near = difflib.get_close_matches(name, list(DATASETS), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(f"unknown dataset {name!r}.{hint} Available: {', '.join(sorted(DATASETS))}.")
    return DATASETS[name](data_dir=data_dir, download=download)
