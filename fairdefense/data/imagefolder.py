"""Any folder of images sorted into one sub-folder per class (torchvision's ImageFolder).

Layout of ``data_dir`` (Imagenette, Tiny-ImageNet once its ``val/`` is sorted into
class folders, or your own images)::

    data_dir/train/<class name>/*.png|jpg|...
    data_dir/test/<class name>/...      (or data_dir/val/<class name>/...)

Classes are the sub-folder names in sorted order (class ``k`` is the ``k``-th name);
train and test must have the same class folders. Images are converted to RGB,
their shorter side resized to ``image_size`` (default 32) and center-cropped to
``image_size`` x ``image_size``. They are read from disk at every access (nothing
is held in memory); a file that is not a readable image stops the run with an error
naming it. Normalisation uses the ImageNet statistics. Training
augmentation: random crop of the image zero-padded by ``image_size // 8`` pixels,
then a horizontal flip with probability 1/2. Nothing is ever downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fairdefense.data.bundle import DatasetBundle
from fairdefense.data.transforms import crop_augment
from fairdefense.errors import ConfigError

__all__ = ["load_imagefolder", "imagefolder_classes", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGEFOLDER_DEFAULTS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGEFOLDER_DEFAULTS = {"eps": 8 / 255, "model": "preact_resnet18", "epochs": 100, "lr": 0.1, "val_size": 0.02}
_LAYOUT = "data_dir/train/<class>/<images> and data_dir/test/<class>/<images> (or val/ instead of test/)"


def imagefolder_classes(data_dir: str | None) -> tuple[list[str], Path, Path]:
    """The class names and the train and test folders of ``data_dir``, without reading images."""
    if data_dir is None:
        raise ConfigError(f"dataset 'imagefolder' needs a folder: give --data-dir DIR (Python: data_dir=DIR) laid out as {_LAYOUT}.")
    root = Path(data_dir).expanduser()
    train_dir = root / "train"
    test_dir = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        missing = [str(p) for p, ok in ((train_dir, train_dir.is_dir()), (root / "test", test_dir is not None)) if not ok]
        raise ConfigError(f"imagefolder: missing {' and '.join(missing)} (or val/). Lay out {root} as {_LAYOUT}.")
    train_classes, test_classes = _class_folders(train_dir), _class_folders(test_dir)
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise ConfigError(
            f"imagefolder: {train_dir} and {test_dir} must have the same class folders; only in train: "
            f"{only_train or 'none'}, only in {test_dir.name}: {only_test or 'none'}."
        )
    if len(train_classes) < 2:
        raise ConfigError(f"imagefolder: {train_dir} has {len(train_classes)} class folder(s); at least 2 are needed.")
    return train_classes, train_dir, test_dir


def load_imagefolder(data_dir: str | None = None, download: bool = True, image_size: int = 32) -> DatasetBundle:
    """Train and test images from ``data_dir`` (see the module docstring); ``download`` is unused."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    _, train_dir, test_dir = imagefolder_classes(data_dir)
    to_tensor = transforms.Compose(
        [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()]
    )
    try:
        train, test = (ImageFolder(str(d), transform=to_tensor, loader=_open_rgb) for d in (train_dir, test_dir))
    except FileNotFoundError as exc:
        raise ConfigError(f"imagefolder: {exc}. Every class folder needs at least one image.") from exc
    return DatasetBundle(
        name="imagefolder",
        train=train,
        test=test,
        train_targets=torch.as_tensor(train.targets, dtype=torch.long),
        class_names=list(train.classes),
        input_shape=(3, image_size, image_size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        augment=crop_augment(image_size, padding=image_size // 8, flip=True),
        defaults=dict(IMAGEFOLDER_DEFAULTS),
    )


def _open_rgb(path: str):
    """torchvision's PIL loader, with an error that names an unreadable file."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except OSError as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise ConfigError(f"imagefolder: cannot read image {path} ({exc}). Replace or remove that file.") from exc


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())  # as ImageFolder.find_classes
