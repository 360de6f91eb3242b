"""SVHN (Street View House Numbers, cropped digits), read by torchvision.

On disk: ``<data_dir>/svhn/train_32x32.mat`` and ``<data_dir>/svhn/test_32x32.mat``
(MATLAB files: ``X`` of shape ``(32, 32, 3, N)`` uint8, ``y`` of shape ``(N, 1)`` with
digit 0 stored as label 10). torchvision checks their MD5 checksums and maps label
10 to 0, so class ``k`` is the digit ``k``. The ``extra`` split is not used.

Training augmentation: random 32x32 crop of the image zero-padded by 4 pixels,
without flips (a mirrored digit is not the same digit).
"""
from __future__ import annotations

import torch

from fairdefense.data.bundle import DatasetBundle
from fairdefense.data.transforms import UInt8Images, crop_augment, data_root, open_files

__all__ = ["load_svhn", "SVHN_CLASSES", "SVHN_MEAN", "SVHN_STD", "SVHN_DEFAULTS"]

SVHN_CLASSES = tuple(str(d) for d in range(10))
#: Approximate per-channel statistics of the training images.
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)
#: lr 0.01: PGD-AT on SVHN commonly diverges at 0.1.
SVHN_DEFAULTS = {"eps": 8 / 255, "model": "preact_resnet18", "epochs": 50, "lr": 0.01, "val_size": 0.02}


def load_svhn(data_dir: str | None = None, download: bool = True) -> DatasetBundle:
    """SVHN train (73,257) and test (26,032) images from ``<data_dir>/svhn``."""
    from torchvision.datasets import SVHN

    root = data_root(data_dir) / "svhn"
    splits = {split: SVHN.split_list[split] for split in ("train", "test")}
    files = {filename: md5 for _, filename, md5 in splits.values()}
    how = (
        f"Download {' and '.join(url for url, _, _ in splits.values())} into {root}, or run once online with "
        f"downloads enabled: torchvision.datasets.SVHN(root={str(root)!r}, split='train', download=True) "
        f"(and split='test') does the same."
    )
    train, test = open_files(
        "SVHN", root, files, how, download,
        lambda: tuple(SVHN(str(root), split=split, download=download) for split in ("train", "test")),
    )
    return DatasetBundle(
        name="svhn",
        train=UInt8Images(torch.from_numpy(train.data).contiguous(), train.labels),
        test=UInt8Images(torch.from_numpy(test.data).contiguous(), test.labels),
        train_targets=torch.as_tensor(train.labels, dtype=torch.long),
        class_names=list(SVHN_CLASSES),
        input_shape=(3, 32, 32),
        mean=SVHN_MEAN,
        std=SVHN_STD,
        augment=crop_augment(32, padding=4, flip=False),
        defaults=dict(SVHN_DEFAULTS),
    )
