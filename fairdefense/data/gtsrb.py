"""GTSRB (German Traffic Sign Recognition Benchmark), read by torchvision.

On disk, as torchvision downloads and unpacks it, under ``<data_dir>/gtsrb/``:

- ``GTSRB/Training/00000/ ... GTSRB/Training/00042/``: one folder of ``.ppm`` images
  per class (folder ``000NN`` is class ``NN``; the per-folder CSV files are ignored);
- ``GTSRB/Final_Test/Images/*.ppm`` and ``GT-final_test.csv`` (``;``-separated,
  columns ``Filename`` and ``ClassId``) for the test labels.

Images (15x15 to 250x250 pixels, uncropped: the sign's bounding box in the CSV
files is not used) are resized to 32x32 with bilinear interpolation, once, when
loading (39,209 train and 12,630 test images, held in memory as ``uint8``).
Training augmentation: random 32x32 crop of the image zero-padded by 4 pixels,
without flips (a mirrored sign can mean something else: "turn left" / "turn right").
"""
from __future__ import annotations

from pathlib import Path

from fairdefense.data.bundle import DatasetBundle
from fairdefense.data.transforms import crop_augment, data_root, decode_all, open_files
from fairdefense.errors import ConfigError

__all__ = ["load_gtsrb", "GTSRB_CLASSES", "GTSRB_MEAN", "GTSRB_STD", "GTSRB_DEFAULTS", "GTSRB_URLS"]

#: The 43 sign names, in ClassId order.
GTSRB_CLASSES = (
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)", "Speed limit (100km/h)",
    "Speed limit (120km/h)", "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop", "No vehicles",
    "Vehicles over 3.5 metric tons prohibited", "No entry", "General caution", "Dangerous curve to the left",
    "Dangerous curve to the right", "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right",
    "Road work", "Traffic signals", "Pedestrians", "Children crossing", "Bicycles crossing",
    "Beware of ice/snow", "Wild animals crossing", "End of all speed and passing limits", "Turn right ahead",
    "Turn left ahead", "Ahead only", "Go straight or right", "Go straight or left", "Keep right", "Keep left",
    "Roundabout mandatory", "End of no passing", "End of no passing by vehicles over 3.5 metric tons",
)
#: Approximate per-channel statistics of the 32x32 training images.
GTSRB_MEAN = (0.3403, 0.3121, 0.3214)
GTSRB_STD = (0.2724, 0.2608, 0.2669)
GTSRB_DEFAULTS = {"eps": 8 / 255, "model": "preact_resnet18", "epochs": 50, "lr": 0.01, "val_size": 0.02}
#: The archives torchvision downloads (unpacked into ``<data_dir>/gtsrb``).
GTSRB_URLS = tuple(
    "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/" + name
    for name in ("GTSRB-Training_fixed.zip", "GTSRB_Final_Test_Images.zip", "GTSRB_Final_Test_GT.zip")
)
_FILES = {"GTSRB/Training": None, "GTSRB/Final_Test/Images": None, "GT-final_test.csv": None}


def load_gtsrb(data_dir: str | None = None, download: bool = True) -> DatasetBundle:
    """GTSRB's 43 classes from ``<data_dir>/gtsrb``, resized to 32x32."""
    from torchvision import transforms
    from torchvision.datasets import GTSRB

    root = data_root(data_dir)
    folder = root / "gtsrb"
    how = (
        f"Download {', '.join(GTSRB_URLS)} and unpack them into {folder}, or run once online with downloads "
        f"enabled: torchvision.datasets.GTSRB(root={str(root)!r}, split='train', download=True) (and "
        f"split='test') does the same."
    )
    to_uint8 = transforms.Compose([transforms.Resize((32, 32)), transforms.PILToTensor()])

    def read():
        train = GTSRB(str(root), split="train", transform=to_uint8, download=download)
        _check_class_folders(folder / "GTSRB" / "Training")
        return train, GTSRB(str(root), split="test", transform=to_uint8, download=download)

    train, test = open_files("GTSRB", folder, _FILES, how, download, read)
    train_images = decode_all(train)
    return DatasetBundle(
        name="gtsrb",
        train=train_images,
        test=decode_all(test),
        train_targets=train_images.targets,
        class_names=list(GTSRB_CLASSES),
        input_shape=(3, 32, 32),
        mean=GTSRB_MEAN,
        std=GTSRB_STD,
        augment=crop_augment(32, padding=4, flip=False),
        defaults=dict(GTSRB_DEFAULTS),
    )


def _check_class_folders(training: Path) -> None:
    # torchvision numbers the classes by sorted folder name: all 43 must be there
    expected = {f"{k:05d}" for k in range(len(GTSRB_CLASSES))}
    found = {p.name for p in training.iterdir() if p.is_dir()}
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise ConfigError(
            f"GTSRB: {training} must hold exactly the 43 class folders 00000 ... 00042 "
            f"(missing: {missing or 'none'}; unexpected: {extra or 'none'}), as in GTSRB-Training_fixed.zip."
        )
