"""What the image loaders share: from files on disk to training tensors.

- :func:`open_files` checks that a dataset's files are where torchvision expects
  them, lets torchvision read (or download) them, and turns every failure into a
  :class:`~fairdefense.errors.ConfigError` naming the missing or corrupted files,
  where they belong and how to get them.
- :class:`UInt8Images` keeps decoded images as one ``uint8`` tensor and hands out
  float tensors in ``[0, 1]`` (4x less memory than floats, no decoding per epoch).
- :func:`crop_augment` is the standard per-sample training augmentation: a random
  crop after zero padding, with or without horizontal flips.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from fairdefense.errors import ConfigError

__all__ = ["UInt8Images", "crop_augment", "data_root", "open_files", "decode_all", "DATA_DIR_ENV", "DEFAULT_DATA_DIR"]

#: Environment variable naming the default data folder.
DATA_DIR_ENV = "FAIRDEFENSE_DATA"
#: Data folder used when neither ``data_dir`` nor :data:`DATA_DIR_ENV` is given.
DEFAULT_DATA_DIR = "data"

T = TypeVar("T")


class UInt8Images(Dataset):
    """Images ``(N, C, H, W)`` stored as ``uint8``; item ``i`` is ``(images[i] / 255, targets[i])``.

    ``targets`` is an int64 tensor ``(N,)``, readable without touching the images.
    """

    def __init__(self, images: Tensor, targets: Sequence[int] | Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ConfigError(f"UInt8Images needs a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}.")
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        if len(self.targets) != len(images):
            raise ConfigError(f"{len(images)} images but {len(self.targets)} labels.")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index].float().div_(255.0), self.targets[index]


def decode_all(dataset: Dataset) -> UInt8Images:
    """Read every ``(uint8 CHW tensor, label)`` item of ``dataset`` once into memory."""
    images, targets = zip(*(dataset[i] for i in range(len(dataset))))  # type: ignore[arg-type]
    return UInt8Images(torch.stack(images), list(targets))


def crop_augment(size: int, padding: int = 4, flip: bool = True) -> Callable[[Tensor], Tensor]:
    """Random ``size`` x ``size`` crop of the image zero-padded by ``padding`` pixels on
    every side, then (if ``flip``) a horizontal flip with probability 1/2.

    Works on one ``(C, H, W)`` tensor; draws from torch's global generator, which the
    trainer seeds.
    """
    from torchvision import transforms

    steps: list = [transforms.RandomCrop(size, padding=padding)]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose(steps)


def data_root(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else ``$FAIRDEFENSE_DATA``, else ``./data``."""
    return Path(data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()


def open_files(
    dataset: str,
    folder: Path,
    files: Mapping[str, str | None],
    how_to_get: str,
    download: bool,
    read: Callable[[], T],
) -> T:
    """Run ``read()`` (torchvision reading, or downloading then reading, the files).

    ``files`` maps each path the dataset needs, relative to ``folder``, to its MD5
    checksum (``None``: existence is enough). Without ``download``, absent files are
    reported before reading. Any failure of ``read`` is diagnosed: absent files,
    files failing their checksum, or the reader's own message, always with
    ``how_to_get``.
    """
    def absent() -> list[str]:
        return [name for name in files if not (folder / name).exists()]

    if not download and absent():
        raise _missing(dataset, folder, absent(), how_to_get)
    try:
        return read()
    except (OSError, RuntimeError) as exc:
        if absent():
            raise _missing(dataset, folder, absent(), how_to_get, f" Downloading failed: {exc}.") from exc
        from torchvision.datasets.utils import check_integrity

        corrupt = [n for n, md5 in files.items() if md5 is not None and not check_integrity(folder / n, md5)]
        if corrupt:
            raise ConfigError(
                f"{dataset}: {', '.join(corrupt)} in {folder} failed its checksum (a truncated or altered "
                f"download). Delete it and get it again: {how_to_get}"
            ) from exc
        raise ConfigError(f"{dataset}: could not read the files in {folder}: {exc}. {how_to_get}") from exc


def _missing(dataset: str, folder: Path, names: Sequence[str], how_to_get: str, note: str = "") -> ConfigError:
    return ConfigError(
        f"{dataset}: missing {', '.join(names)} in {folder}.{note} {how_to_get} "
        f"The data folder is set with --data-dir (Python: data_dir=...) or ${DATA_DIR_ENV}."
    )
