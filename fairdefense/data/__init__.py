"""Datasets: a registry of loaders returning :class:`DatasetBundle`, their specs, and splits.

Every loader yields inputs as float tensors in ``[0, 1]`` of shape ``(C, H, W)``
(or ``(D,)`` for tabular data) and integer labels. Normalisation statistics
travel in the bundle and are folded into the model, so attacks and radii are in
input space.

Built in: ``digits`` (embedded, offline), ``cifar10``, ``cifar100``, ``svhn``,
``gtsrb`` (downloaded by torchvision when online) and ``imagefolder`` (any folder
of class sub-folders, given as ``data_dir``). See docs/data.md.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from fairdefense.data import cifar, digits, gtsrb, imagefolder, svhn
from fairdefense.data.bundle import DatasetBundle
from fairdefense.splits import per_class_split, stratified_split
from fairdefense.errors import ConfigError

__all__ = [
    "DatasetBundle",
    "DatasetSpec",
    "DATASETS",
    "SPECS",
    "load_dataset",
    "dataset_spec",
    "list_datasets",
    "register_dataset",
    "per_class_split",
    "stratified_split",
]


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is, known without reading its files.

    ``class_names`` is ``None`` when only the files hold them (CIFAR-100); ``defaults``
    are the training settings its bundle carries (``eps``, ``model``, ``epochs``...).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    clip: tuple[float, float] = (0.0, 1.0)
    description: str = ""

    def names(self) -> list[str]:
        """The class names, or ``"0"``, ``"1"``, ... where only the files hold them."""
        return list(self.class_names) if self.class_names else [str(k) for k in range(self.num_classes)]

    @classmethod
    def from_bundle(cls, bundle: DatasetBundle, description: str = "") -> "DatasetSpec":
        return cls(
            bundle.name, bundle.num_classes, tuple(bundle.input_shape), dict(bundle.defaults),
            tuple(bundle.class_names), bundle.mean, bundle.std, tuple(bundle.clip), description,
        )


#: A spec, or a function of ``data_dir`` returning one (for datasets defined by a folder).
SpecSource = Union[DatasetSpec, Callable[[Union[str, None]], DatasetSpec]]


def _imagefolder_spec(data_dir: str | None) -> DatasetSpec:
    classes, _, _ = imagefolder.imagefolder_classes(data_dir)
    return DatasetSpec(
        "imagefolder", len(classes), (3, 32, 32), dict(imagefolder.IMAGEFOLDER_DEFAULTS), tuple(classes),
        imagefolder.IMAGENET_MEAN, imagefolder.IMAGENET_STD, description="class sub-folders of --data-dir, 32x32",
    )


#: Dataset name -> loader ``(data_dir, download) -> DatasetBundle``.
DATASETS: dict[str, Callable[..., DatasetBundle]] = {
    "digits": digits.load_digits_bundle,
    "cifar10": cifar.load_cifar10,
    "cifar100": cifar.load_cifar100,
    "svhn": svhn.load_svhn,
    "gtsrb": gtsrb.load_gtsrb,
    "imagefolder": imagefolder.load_imagefolder,
}

#: Dataset name -> :class:`DatasetSpec` (or a function of ``data_dir`` returning one).
SPECS: dict[str, SpecSource] = {
    "digits": DatasetSpec(
        "digits", 10, (1, 8, 8), dict(digits.DIGITS_DEFAULTS), tuple(str(k) for k in range(10)),
        description="scikit-learn's 8x8 handwritten digits (embedded)",
    ),
    "cifar10": DatasetSpec(
        "cifar10", 10, (3, 32, 32), dict(cifar.CIFAR_DEFAULTS), cifar.CIFAR10_CLASSES,
        cifar.CIFAR10_MEAN, cifar.CIFAR10_STD, description="CIFAR-10, 32x32 RGB",
    ),
    "cifar100": DatasetSpec(
        "cifar100", 100, (3, 32, 32), dict(cifar.CIFAR_DEFAULTS), None,
        cifar.CIFAR100_MEAN, cifar.CIFAR100_STD, description="CIFAR-100 (fine labels), 32x32 RGB",
    ),
    "svhn": DatasetSpec(
        "svhn", 10, (3, 32, 32), dict(svhn.SVHN_DEFAULTS), svhn.SVHN_CLASSES,
        svhn.SVHN_MEAN, svhn.SVHN_STD, description="SVHN cropped digits, 32x32 RGB",
    ),
    "gtsrb": DatasetSpec(
        "gtsrb", 43, (3, 32, 32), dict(gtsrb.GTSRB_DEFAULTS), gtsrb.GTSRB_CLASSES,
        gtsrb.GTSRB_MEAN, gtsrb.GTSRB_STD, description="German traffic signs, resized to 32x32 RGB",
    ),
    "imagefolder": _imagefolder_spec,
}


def register_dataset(name: str, loader: Callable[..., DatasetBundle], spec: SpecSource | None = None) -> None:
    """Make ``loader(data_dir=..., download=...)`` available as ``--dataset name``.

    ``spec`` (a :class:`DatasetSpec` or a function of ``data_dir`` returning one) lets
    :func:`dataset_spec` describe the dataset without loading it.
    """
    DATASETS[name] = loader
    if spec is not None:
        SPECS[name] = spec
    else:
        SPECS.pop(name, None)


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(DATASETS)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        near = difflib.get_close_matches(name, list(DATASETS), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
        raise ConfigError(f"unknown dataset {name!r}.{hint} Available: {', '.join(list_datasets())}.")


def load_dataset(name: str, data_dir: str | None = None, download: bool = True) -> DatasetBundle:
    """Load a registered dataset by name; unknown names suggest the nearest ones."""
    _check_name(name)
    return DATASETS[name](data_dir=data_dir, download=download)


def dataset_spec(name: str, data_dir: str | None = None) -> DatasetSpec:
    """Describe a registered dataset (classes, input shape, defaults) without reading its data.

    ``imagefolder`` lists the class folders of ``data_dir``. A dataset registered
    without a spec is loaded (``download=False``) to describe it.
    """
    _check_name(name)
    source = SPECS.get(name)
    if source is None:
        return DatasetSpec.from_bundle(load_dataset(name, data_dir, download=False))
    return source if isinstance(source, DatasetSpec) else source(data_dir)
