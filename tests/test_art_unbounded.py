"""ART classifiers without ``clip_values`` are unbounded inputs, as ART itself treats them:
attacks stay in the eps-ball and are not clipped, training and evaluation run, and one log
line says so. Checked against ART's own PGD on real ART objects."""
from __future__ import annotations

import logging

import numpy as np
import torch
from art.attacks.evasion import ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from torch import nn

import fairdefense
from fairdefense.art import FairAdversarialTrainer, per_class_robustness, unwrap

LOGGER = "fairdefense.art"


def tabular(n: int = 96, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unbounded features (standard normal, scaled by 3), 3 classes from a linear rule."""
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((n, d))).astype(np.float32)
    y = np.digitize(x[:, 0] + 0.5 * x[:, 1], [-1.5, 1.5])
    return x, y


def unbounded_classifier(d: int = 5) -> PyTorchClassifier:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 3))
    return PyTorchClassifier(model, nn.CrossEntropyLoss(), (d,), 3,
                             optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))


def records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_unwrap_logs_one_line_and_gives_no_clip(caplog):
    clf = unbounded_classifier()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        parts = unwrap(clf)
    assert parts.clip is None
    assert records(caplog) == ["the classifier has no clip_values: its inputs are unbounded, so attacks do not "
                               "clip them (as ART's own attacks do)"]


def test_our_pgd_without_clip_equals_arts_pgd_and_leaves_the_data_range():
    clf = unbounded_classifier()
    x, y = tabular()
    eps, step = 0.8, 0.3
    art_pgd = ProjectedGradientDescent(clf, eps=eps, eps_step=step, max_iter=4, num_random_init=0, verbose=False)
    x_art = art_pgd.generate(x, y=np.eye(3)[y])
    model = unwrap(clf).model.eval()
    attack = lambda clip: fairdefense.pgd(model, torch.from_numpy(x), torch.from_numpy(y), eps, step, 4,  # noqa: E731
                                          random_start="none", clip=clip).numpy()
    np.testing.assert_allclose(attack(unwrap(clf).clip), x_art, atol=1e-5)
    assert np.abs(x_art - x).max() <= eps + 1e-6
    # clipping to the data's own range (per feature) would have given other examples
    assert np.abs(attack((torch.from_numpy(x.min(0)), torch.from_numpy(x.max(0)))) - x_art).max() > 0.1


def test_training_and_evaluation_run_on_an_unbounded_classifier(caplog):
    clf = unbounded_classifier()
    x, y = tabular()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        trainer = FairAdversarialTrainer(clf, plugins=["faal"], eps=0.3, max_iter=3, progress=False)
    assert len(records(caplog)) == 1
    before = [p.detach().clone() for p in clf.model.parameters()]
    trainer.fit(x, y, validation_data=(x, y), nb_epochs=2, batch_size=32)
    assert any(not torch.equal(a, b) for a, b in zip(before, clf.model.parameters()))  # trained in place
    assert trainer.report is not None and trainer.report.class_names == ["0", "1", "2"]
    clean = clf.predict(x).argmax(1) == y
    expected = [clean[y == c].mean() for c in range(3)]
    report = per_class_robustness(clf, x, y, "pgd5", eps=1e-5)
    np.testing.assert_allclose(report.clean_acc.numpy(), expected, atol=1e-6)
    # a radius of 1e-5 changes (almost) nothing, unless the inputs were clipped to some range
    np.testing.assert_allclose(report.robust_acc["pgd5"].numpy(), expected, atol=0.05)
    assert min(expected) > 0.4  # every class partly right: clipped inputs would show
