"""CIFAR-10 and CIFAR-100, read by torchvision from the python-pickle release.

On disk, under the data folder (what torchvision downloads and unpacks):

- ``cifar-10-batches-py/``: ``data_batch_1`` ... ``data_batch_5``, ``test_batch``, ``batches.meta``
- ``cifar-100-python/``: ``train``, ``test``, ``meta``

torchvision checks every file's MD5 checksum. Images (50,000 train, 10,000 test,
32x32 RGB) are held in memory as ``uint8``; class names come from the meta file
(``label_names``, or CIFAR-100's ``fine_label_names``). Training augmentation: random
32x32 crop of the image zero-padded by 4 pixels, then a horizontal flip with
probability 1/2.
"""
from __future__ import annotations

import torch

from fairdefense.data.bundle import DatasetBundle
from fairdefense.data.transforms import UInt8Images, crop_augment, data_root, open_files

__all__ = [
    "load_cifar10",
    "load_cifar100",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR_DEFAULTS",
]

#: CIFAR-10's class names, in label order (the loader reads them from ``batches.meta``).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: Per-channel statistics of the training images (those of the CFA and FAAL code).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
#: Training settings for CIFAR (the recipes give each paper's exact schedule).
CIFAR_DEFAULTS = {"eps": 8 / 255, "model": "preact_resnet18", "epochs": 100, "lr": 0.1, "val_size": 0.02}


def load_cifar10(data_dir: str | None = None, download: bool = True) -> DatasetBundle:
    """CIFAR-10 from ``<data_dir>/cifar-10-batches-py`` (downloaded there when ``download``)."""
    from torchvision.datasets import CIFAR10

    return _load("cifar10", "CIFAR-10", CIFAR10, data_dir, download, CIFAR10_MEAN, CIFAR10_STD)


def load_cifar100(data_dir: str | None = None, download: bool = True) -> DatasetBundle:
    """CIFAR-100 (the 100 fine labels) from ``<data_dir>/cifar-100-python``."""
    from torchvision.datasets import CIFAR100

    return _load("cifar100", "CIFAR-100", CIFAR100, data_dir, download, CIFAR100_MEAN, CIFAR100_STD)


def _load(name: str, title: str, cls, data_dir, download: bool, mean, std) -> DatasetBundle:
    root = data_root(data_dir)
    folder = root / cls.base_folder
    files = {f: md5 for f, md5 in cls.train_list + cls.test_list}
    files[cls.meta["filename"]] = cls.meta["md5"]
    how = (
        f"Download {cls.url} and unpack it into {root} (it creates {cls.base_folder}/), or run once online with "
        f"downloads enabled: torchvision.datasets.{cls.__name__}(root={str(root)!r}, download=True) does the same."
    )
    train, test = open_files(
        title, folder, files, how, download,
        lambda: (cls(str(root), train=True, download=download), cls(str(root), train=False, download=False)),
    )
    return DatasetBundle(
        name=name,
        train=_to_tensors(train),
        test=_to_tensors(test),
        train_targets=torch.as_tensor(train.targets, dtype=torch.long),
        class_names=list(train.classes),
        input_shape=(3, 32, 32),
        mean=mean,
        std=std,
        augment=crop_augment(32, padding=4, flip=True),
        defaults=dict(CIFAR_DEFAULTS),
    )


def _to_tensors(split) -> UInt8Images:
    images = torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()  # torchvision keeps NHWC
    return UInt8Images(images, split.targets)
