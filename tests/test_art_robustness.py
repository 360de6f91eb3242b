"""Per-class robustness of ART classifiers: ART attacks scored per class, fairdefense attacks folded."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier, SklearnClassifier
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fairdefense
from fairdefense.art import FairAdversarialTrainer, per_class_robustness
from fairdefense.errors import ConfigError
from fairdefense.metrics import WORST_CASE
from fairdefense.models import Normalized

MEAN, STD = 0.3, 0.4


def digits(n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return d.images[start:start + n, None] / 16.0, d.target[start:start + n]


def classifier() -> PyTorchClassifier:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return PyTorchClassifier(model, nn.CrossEntropyLoss(), (1, 8, 8), 10, clip_values=(0.0, 1.0),
                             preprocessing=(MEAN, STD),
                             optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))


def by_class(y: np.ndarray, correct: np.ndarray, num_classes: int = 10) -> np.ndarray:
    return np.array([correct[y == c].mean() for c in range(num_classes)])


def test_art_pgd_after_our_training_matches_the_per_class_report():
    x, y = digits(400)
    clf = classifier()
    FairAdversarialTrainer(clf, eps=0.2, max_iter=2, progress=False).fit(x[:300], y[:300], nb_epochs=2,
                                                                          batch_size=64)
    xt, yt = x[300:], y[300:]
    pgd = ProjectedGradientDescent(clf, eps=0.15, eps_step=0.04, max_iter=5, num_random_init=0, verbose=False)
    report = per_class_robustness(clf, xt, np.eye(10)[yt], pgd, batch_size=37)  # batches do not divide 100

    x_adv = pgd.generate(xt.astype(np.float32), y=np.eye(10)[yt])  # the whole set at once, ART's way
    robust = clf.predict(x_adv).argmax(1) == yt
    clean = clf.predict(xt.astype(np.float32)).argmax(1) == yt
    np.testing.assert_allclose(report.robust_acc["ProjectedGradientDescent"].numpy(), by_class(yt, robust))
    np.testing.assert_allclose(report.clean_acc.numpy(), by_class(yt, clean))
    assert report.counts.tolist() == np.bincount(yt, minlength=10).tolist()
    overall = (report.robust_acc["ProjectedGradientDescent"] * report.counts).sum() / report.counts.sum()
    assert overall.item() == pytest.approx(robust.mean())
    assert robust.mean() < clean.mean()


def test_named_attacks_equal_evaluate_on_the_core_normalised_model():
    x, y = digits(120)
    clf = classifier()
    report = per_class_robustness(clf, x, y, ["pgd3", "cw3"], eps=0.1, batch_size=50, seed=3)
    loader = DataLoader(TensorDataset(torch.tensor(x, dtype=torch.float32), torch.from_numpy(y)), batch_size=50)
    expected = fairdefense.evaluate(Normalized(clf.model, [MEAN], [STD]), loader, [str(i) for i in range(10)],
                                    ["pgd3", "cw3"], eps=0.1, clip=(0.0, 1.0), seed=3)
    assert set(report.robust_acc) == {"pgd3", "cw3", WORST_CASE}
    for name, acc in expected.robust_acc.items():
        torch.testing.assert_close(report.robust_acc[name], acc, equal_nan=True)
    torch.testing.assert_close(report.clean_acc, expected.clean_acc, equal_nan=True)


def test_any_art_classifier_with_an_art_attack():
    rng = np.random.default_rng(0)
    x = rng.random((90, 4)).astype(np.float32)
    y = (x[:, 0] * 3).astype(int)
    clf = SklearnClassifier(LogisticRegression(max_iter=500).fit(x, y), clip_values=(0.0, 1.0))
    fgm = FastGradientMethod(clf, eps=0.2)
    report = per_class_robustness(clf, x, y, fgm, class_names=["low", "mid", "high"], batch_size=32)
    robust = clf.predict(fgm.generate(x, y=np.eye(3)[y])).argmax(1) == y
    np.testing.assert_allclose(report.robust_acc["FastGradientMethod"].numpy(), by_class(y, robust, 3))
    assert report.class_names == ["low", "mid", "high"]
    with pytest.raises(ConfigError, match="PyTorchClassifier"):
        per_class_robustness(clf, x, y, "pgd10", eps=0.1)


def test_refusals():
    x, y = digits(20)
    clf = classifier()
    with pytest.raises(ConfigError, match="eps is required"):
        per_class_robustness(clf, x, y)
    with pytest.raises(ConfigError, match="unknown attack 'fgsm'"):
        per_class_robustness(clf, x, y, "fgsm", eps=0.1)
    with pytest.raises(ConfigError, match="class_names has 3 names"):
        per_class_robustness(clf, x, y, eps=0.1, class_names=["a", "b", "c"])
    with pytest.raises(ConfigError, match="EvasionAttack"):
        per_class_robustness(clf, x, y, attack=42, eps=0.1)
