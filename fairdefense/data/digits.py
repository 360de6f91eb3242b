"""The embedded default: scikit-learn's bundled handwritten digits (offline).

1,797 grayscale 8x8 images of the digits 0-9, pixel values 0..16 scaled to
``[0, 1]``. A stratified 20% test split (fixed, seed 0, independent of the training
seed, so every run is scored on the same images) leaves 1,437 training images.
"""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from fairdefense.data.bundle import DatasetBundle
from fairdefense.splits import stratified_split

__all__ = ["load_digits_bundle", "DIGITS_DEFAULTS"]

#: Settings suited to the digits (see docs/index.md for the measured gap they give).
DIGITS_DEFAULTS = {"eps": 0.2, "epochs": 30, "lr": 0.1, "batch_size": 32, "model": "small_cnn", "val_size": 0.1}


def load_digits_bundle(data_dir: str | None = None, download: bool = True) -> DatasetBundle:
    """Load the digits as a :class:`DatasetBundle` (``data_dir``/``download`` unused)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = stratified_split(y, 0.2, seed=0)
    return DatasetBundle(
        name="digits",
        train=TensorDataset(x[train_idx], y[train_idx]),
        test=TensorDataset(x[test_idx], y[test_idx]),
        train_targets=y[train_idx],
        class_names=[str(i) for i in range(10)],
        input_shape=(1, 8, 8),
        defaults=dict(DIGITS_DEFAULTS),
    )
