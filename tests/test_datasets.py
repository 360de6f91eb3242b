"""Dataset loaders, offline: tiny files in each dataset's real on-disk format, read
through the real code path (torchvision) with downloads disabled.

torchvision verifies the MD5 checksums of the CIFAR and SVHN files; the tiny files
here are not the real ones, so the tests swap torchvision's checksum tables for
the checksums of the files they wrote (``bless_*``). Everything else is untouched.
"""
from __future__ import annotations

import csv
import hashlib
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fairdefense import ConfigError, TrainConfig
from fairdefense.data import DATASETS, DatasetSpec, dataset_spec, load_dataset, register_dataset

RNG = np.random.default_rng(0)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --------------------------------------------------------------- file writers
def cifar_row(image_chw: np.ndarray) -> np.ndarray:
    """CIFAR's row layout: the 1024 red values, then green, then blue, each row-major."""
    return np.concatenate([image_chw[0].ravel(), image_chw[1].ravel(), image_chw[2].ravel()])


def write_cifar10(root: Path, per_batch: int = 3, n_test: int = 4) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = {}, {}
    for name, n in [(f"data_batch_{k}", per_batch) for k in range(1, 6)] + [("test_batch", n_test)]:
        imgs = RNG.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labs = RNG.integers(0, 10, size=n).tolist()
        entry = {"batch_label": name, "labels": labs, "data": np.stack([cifar_row(i) for i in imgs]),
                 "filenames": [f"{name}_{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        images[name], labels[name] = imgs, labs
    names = [f"name_{k}" for k in range(10)]  # not the real names: they must come from the file
    meta = {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    train = np.concatenate([images[f"data_batch_{k}"] for k in range(1, 6)])
    train_labels = sum((labels[f"data_batch_{k}"] for k in range(1, 6)), [])
    return {"train": (train, train_labels), "test": (images["test_batch"], labels["test_batch"]), "names": names}


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 3) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        imgs = RNG.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        fine = RNG.integers(0, 100, size=n).tolist()
        entry = {"filenames": [f"{i}.png" for i in range(n)], "batch_label": name, "fine_labels": fine,
                 "coarse_labels": [f // 5 for f in fine], "data": np.stack([cifar_row(i) for i in imgs])}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        out[name] = (imgs, fine)
    out["names"] = [f"fine_{k}" for k in range(100)]
    meta = {"fine_label_names": out["names"], "coarse_label_names": [f"coarse_{k}" for k in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


def bless_cifar(monkeypatch, cls, root: Path) -> None:
    folder = root / cls.base_folder
    monkeypatch.setattr(cls, "train_list", [[f, md5(folder / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, md5(folder / f)] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})


def write_svhn(root: Path) -> dict:
    from scipy.io import savemat

    folder = root / "svhn"
    folder.mkdir(parents=True)
    out = {}
    for split, digits in (("train", [0, 1, 2, 3, 9, 0]), ("test", [5, 0, 7])):
        imgs = RNG.integers(0, 256, size=(len(digits), 3, 32, 32), dtype=np.uint8)
        x = np.ascontiguousarray(imgs.transpose(2, 3, 1, 0))  # (H, W, C, N) as in the .mat files
        y = np.array([[10 if d == 0 else d] for d in digits], dtype=np.uint8)  # digit 0 is stored as 10
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = (imgs, digits)
    return out


def bless_svhn(monkeypatch, root: Path) -> None:
    from torchvision.datasets import SVHN

    for split in ("train", "test"):
        url, filename, _ = SVHN.split_list[split]
        monkeypatch.setitem(SVHN.split_list, split, [url, filename, md5(root / "svhn" / filename)])


def write_gtsrb(root: Path) -> dict:
    """Training/000NN/*.ppm for all 43 classes (+ the per-class CSV files that the real
    archive has), Final_Test/Images/*.ppm and GT-final_test.csv."""
    base = root / "gtsrb"
    train_dir = base / "GTSRB" / "Training"
    exact = {}
    for k in range(43):
        d = train_dir / f"{k:05d}"
        d.mkdir(parents=True)
        size = (32, 32) if k < 3 else (int(RNG.integers(15, 60)), int(RNG.integers(15, 60)))
        img = RNG.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(img).save(d / f"00000_{k:05d}.ppm")
        (d / f"GT-{k:05d}.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n")
        if size == (32, 32):
            exact[k] = img
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    test_labels = [14, 0, 42]
    with open(base / "GT-final_test.csv", "w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        for i, label in enumerate(test_labels):
            # a uniform colour stays that colour whatever the resizing
            Image.new("RGB", (40 + i, 50), (10 * i, 100, 200)).save(test_dir / f"{i:05d}.ppm")
            w.writerow([f"{i:05d}.ppm", 40 + i, 50, 5, 5, 35, 45, label])
    return {"exact": exact, "test_labels": test_labels}


def write_imagefolder(root: Path, test_name: str = "test") -> dict:
    out = {}
    for split, per_class in (("train", 2), (test_name, 1)):
        for cls in ("cat", "dog", "emu"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(per_class):
                img = RNG.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
                out[(split, cls, i)] = img
    Image.fromarray(RNG.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)).save(root / "train" / "dog" / "wide.png")
    return out


def as_float(image_chw: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image_chw.astype(np.float32) / 255.0)


# ------------------------------------------------------------------ helpers
def placements(out: torch.Tensor, x: torch.Tensor, pad: int = 4) -> set[tuple[int, int, bool]]:
    """Every (row offset, column offset, flipped) for which ``out`` is that crop of ``x``
    zero-padded by ``pad`` pixels (flipped horizontally if so)."""
    padded = F.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[1:]
    found = set()
    for i in range(2 * pad + 1):
        for j in range(2 * pad + 1):
            crop = padded[:, i:i + h, j:j + w]
            if torch.equal(out, crop):
                found.add((i, j, False))
            if torch.equal(out, crop.flip(-1)):
                found.add((i, j, True))
    return found


def augment_draws(augment, x: torch.Tensor, n: int = 40) -> list[set]:
    torch.manual_seed(0)
    return [placements(augment(x.clone()), x) for _ in range(n)]


def check_split(data, images: np.ndarray, labels: list[int]) -> None:
    assert len(data) == len(images)
    for i in range(len(images)):
        x, y = data[i]
        assert x.dtype == torch.float32 and tuple(x.shape) == (3, 32, 32)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert torch.equal(x, as_float(images[i])), f"pixels of item {i} differ from the file's"
        assert int(y) == labels[i]


# -------------------------------------------------------------------- CIFAR
def test_cifar10_reads_pickles(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    written = write_cifar10(tmp_path)
    bless_cifar(monkeypatch, CIFAR10, tmp_path)
    b = load_dataset("cifar10", str(tmp_path), download=False)
    check_split(b.train, *written["train"])
    check_split(b.test, *written["test"])
    assert b.class_names == written["names"]
    assert b.train_targets.tolist() == written["train"][1] and b.train_targets.dtype == torch.long
    assert b.input_shape == (3, 32, 32) and b.num_classes == 10
    assert b.mean == (0.4914, 0.4822, 0.4465) and b.std == (0.2471, 0.2435, 0.2616)
    assert b.defaults["eps"] == 8 / 255 and b.defaults["model"] == "preact_resnet18"


def test_cifar10_augmentation_crops_and_flips(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    write_cifar10(tmp_path)
    bless_cifar(monkeypatch, CIFAR10, tmp_path)
    b = load_dataset("cifar10", str(tmp_path), download=False)
    x, _ = b.train[0]
    draws = augment_draws(b.augment, x)
    assert all(draws), "an augmented image is not a 4-pixel-padded crop of the original"
    flips = {flip for found in draws for (_, _, flip) in found}
    offsets = {(i, j) for found in draws for (i, j, _) in found}
    assert flips == {False, True} and len(offsets) > 10
    x_again, _ = b.train[0]
    assert torch.equal(x, x_again), "the dataset itself must not augment (the trainer applies it to training batches)"


def test_cifar100_reads_fine_labels(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR100

    written = write_cifar100(tmp_path)
    bless_cifar(monkeypatch, CIFAR100, tmp_path)
    b = load_dataset("cifar100", str(tmp_path), download=False)
    check_split(b.train, *written["train"])
    check_split(b.test, *written["test"])
    assert b.class_names == written["names"] and b.num_classes == 100
    assert b.mean == (0.5071, 0.4867, 0.4408)


def test_cifar10_missing_files_say_which_and_how(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    with pytest.raises(ConfigError) as err:
        load_dataset("cifar10", str(tmp_path), download=False)
    msg = str(err.value)
    for name in ("data_batch_2", "data_batch_5", "test_batch", "batches.meta"):
        assert name in msg
    assert "data_batch_1," not in msg and str(tmp_path / "cifar-10-batches-py") in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg and "download=True" in msg


def test_cifar10_corrupted_file_named(tmp_path):
    write_cifar10(tmp_path)  # tiny files: not the real checksums
    with pytest.raises(ConfigError, match="data_batch_1.*failed its checksum"):
        load_dataset("cifar10", str(tmp_path), download=False)


def test_cifar10_failed_download_is_explained(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(ConfigError, match="Downloading failed.*no network") as err:
        load_dataset("cifar10", str(tmp_path), download=True)
    assert "cifar-10-python.tar.gz" in str(err.value)


# --------------------------------------------------------------------- SVHN
def test_svhn_reads_mat_files(tmp_path, monkeypatch):
    written = write_svhn(tmp_path)
    bless_svhn(monkeypatch, tmp_path)
    b = load_dataset("svhn", str(tmp_path), download=False)
    check_split(b.train, *written["train"])  # labels: digit 0 (stored as 10) is class 0
    check_split(b.test, *written["test"])
    assert b.class_names == [str(d) for d in range(10)]
    assert b.train_targets.tolist() == [0, 1, 2, 3, 9, 0]
    draws = augment_draws(b.augment, b.train[0][0])
    assert all(draws) and all(any(not flip for (_, _, flip) in found) for found in draws)
    assert len({(i, j) for found in draws for (i, j, _) in found}) > 10


def test_svhn_missing_files(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_dataset("svhn", str(tmp_path), download=False)
    msg = str(err.value)
    assert "train_32x32.mat" in msg and "test_32x32.mat" in msg and str(tmp_path / "svhn") in msg
    assert "http://ufldl.stanford.edu/housenumbers/train_32x32.mat" in msg


# -------------------------------------------------------------------- GTSRB
def test_gtsrb_reads_folders_and_csv(tmp_path):
    written = write_gtsrb(tmp_path)
    b = load_dataset("gtsrb", str(tmp_path), download=False)
    assert b.num_classes == 43 and b.class_names[14] == "Stop" and b.class_names[0] == "Speed limit (20km/h)"
    assert len(b.train) == 43 and b.train_targets.tolist() == list(range(43))  # one image per class folder
    for k, img in written["exact"].items():  # 32x32 images pass through unchanged
        x, y = b.train[k]
        assert int(y) == k and torch.equal(x, as_float(img.transpose(2, 0, 1)))
    assert all(tuple(b.train[k][0].shape) == (3, 32, 32) for k in range(43))
    assert [int(b.test[i][1]) for i in range(3)] == written["test_labels"]
    for i in range(3):  # resized from 40+i x 50 to 32x32; a uniform colour stays exact
        expected = torch.tensor([10 * i, 100, 200], dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 32, 32)
        assert torch.allclose(b.test[i][0], expected, atol=1 / 255)
    draws = augment_draws(b.augment, b.train[0][0])
    assert all(draws) and all(any(not flip for (_, _, flip) in found) for found in draws)


def test_gtsrb_incomplete_class_folders(tmp_path):
    write_gtsrb(tmp_path)
    folder = tmp_path / "gtsrb" / "GTSRB" / "Training" / "00007"
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    with pytest.raises(ConfigError, match=r"missing: \['00007'\]"):
        load_dataset("gtsrb", str(tmp_path), download=False)


def test_gtsrb_missing_files(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_dataset("gtsrb", str(tmp_path), download=False)
    msg = str(err.value)
    assert "GTSRB/Training" in msg and "GT-final_test.csv" in msg and "GTSRB-Training_fixed.zip" in msg


# -------------------------------------------------------------- ImageFolder
@pytest.mark.parametrize("test_name", ["test", "val"])
def test_imagefolder_reads_class_folders(tmp_path, test_name):
    written = write_imagefolder(tmp_path, test_name)
    b = load_dataset("imagefolder", str(tmp_path), download=False)
    assert b.class_names == ["cat", "dog", "emu"] and b.input_shape == (3, 32, 32)
    assert b.train_targets.tolist() == [0, 0, 1, 1, 1, 2, 2]  # dog also has wide.png
    x, y = b.train[0]
    assert int(y) == 0 and torch.equal(x, as_float(written[("train", "cat", 0)].transpose(2, 0, 1)))
    assert [int(b.test[i][1]) for i in range(3)] == [0, 1, 2]
    assert all(tuple(b.train[i][0].shape) == (3, 32, 32) for i in range(len(b.train)))  # 64x48 resized + cropped
    spec = dataset_spec("imagefolder", str(tmp_path))
    assert spec.num_classes == 3 and spec.names() == ["cat", "dog", "emu"]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs a folder"):
        load_dataset("imagefolder", None)
    with pytest.raises(ConfigError, match="missing .*train"):
        load_dataset("imagefolder", str(tmp_path))
    write_imagefolder(tmp_path)
    (tmp_path / "test" / "emu").rename(tmp_path / "test" / "owl")
    with pytest.raises(ConfigError, match=r"only in train: \['emu'\], only in test: \['owl'\]"):
        dataset_spec("imagefolder", str(tmp_path))


def test_imagefolder_corrupt_image_is_named(tmp_path):
    write_imagefolder(tmp_path)
    bad = tmp_path / "train" / "emu" / "broken.png"
    bad.write_bytes(b"not an image at all")
    truncated = tmp_path / "test" / "cat" / "0.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    b = load_dataset("imagefolder", str(tmp_path), download=False)
    index = [p for p, _ in b.train.samples].index(str(bad))
    with pytest.raises(ConfigError, match=r"cannot read image .*broken\.png.*Replace or remove"):
        b.train[index]
    with pytest.raises(ConfigError, match=r"cannot read image .*cat/0\.png"):
        b.test[0]
    b.train[0]  # readable files still load


# -------------------------------------------------------------- registry/spec
def test_specs_agree_with_loaded_bundles(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10, CIFAR100

    write_cifar10(tmp_path)
    write_cifar100(tmp_path)
    write_svhn(tmp_path)
    write_gtsrb(tmp_path)
    bless_cifar(monkeypatch, CIFAR10, tmp_path)
    bless_cifar(monkeypatch, CIFAR100, tmp_path)
    bless_svhn(monkeypatch, tmp_path)
    for name in ("digits", "cifar10", "cifar100", "svhn", "gtsrb"):
        bundle = load_dataset(name, str(tmp_path), download=False)
        spec = dataset_spec(name)
        assert (spec.num_classes, spec.input_shape, spec.mean, spec.std) == (
            bundle.num_classes, bundle.input_shape, bundle.mean, bundle.std), name
        assert spec.defaults == bundle.defaults, name
    assert dataset_spec("cifar10").names() == list(
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])
    assert dataset_spec("cifar100").names()[:2] == ["0", "1"]  # CIFAR-100's names live in its meta file


def test_unknown_dataset_suggests(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'cifar10'"):
        dataset_spec("cifar-10")
    with pytest.raises(ConfigError, match="Did you mean 'gtsrb'"):
        load_dataset("gtrsb")


def test_registered_dataset_without_spec_is_described_by_loading(monkeypatch):
    from fairdefense.data.digits import load_digits_bundle

    monkeypatch.setitem(DATASETS, "my-digits", load_digits_bundle)
    register_dataset("my-digits", load_digits_bundle)
    spec = dataset_spec("my-digits")
    assert isinstance(spec, DatasetSpec) and spec.num_classes == 10 and spec.input_shape == (1, 8, 8)


def test_training_runs_on_cifar_files(tmp_path, monkeypatch):
    """End to end: build_trainer loads the files, folds the statistics into the model, trains."""
    from torchvision.datasets import CIFAR10

    from fairdefense.api import build_trainer

    write_cifar10(tmp_path, per_batch=4, n_test=4)
    bless_cifar(monkeypatch, CIFAR10, tmp_path)
    config = TrainConfig(dataset="cifar10", data_dir=str(tmp_path), model="small_cnn", epochs=1, attack_steps=1,
                         batch_size=10, eval_attacks=("pgd1",), device="cpu")
    trainer = build_trainer(config, progress=False, download=False)
    assert torch.allclose(trainer.model.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    assert trainer.config.eps == 8 / 255
    result = trainer.fit()
    assert result.report is not None and result.report.class_names == [f"name_{k}" for k in range(10)]
