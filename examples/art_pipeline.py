"""Add fairness to an existing IBM ART adversarial-training pipeline (runs in well under a minute on a CPU).

The pipeline below is what an ART user already has: a ``PyTorchClassifier`` with
preprocessing and clip values, ``AdversarialTrainerMadryPGD``, and ART's PGD for
evaluation. Fairness takes one changed line (``from_art_trainer``) plus the
plugins: one defined here (upweighting the classes that were least robust in the
last epoch) and, when installed, the built-in ``ema`` (weight averaging).

    python examples/art_pipeline.py
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from art.attacks.evasion import ProjectedGradientDescent
from art.defences.trainer import AdversarialTrainerMadryPGD
from art.estimators.classification import PyTorchClassifier
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import fairdefense
from fairdefense.art import from_art_trainer, per_class_robustness


class WeakClassBoost(fairdefense.FairnessPlugin):
    """Upweights the robust loss of classes with low robust training accuracy last epoch."""

    name = "weak-class-boost"

    @dataclass
    class Options:
        temperature: float = 0.2

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.class_weights: torch.Tensor | None = None

    def on_epoch_end(self, epoch, train_stats):
        error = 1.0 - train_stats.robust_acc.float()
        w = torch.softmax(error / self.options.temperature, dim=0)
        self.class_weights = w * len(w)  # mean one: no silent change of the learning rate

    def reweight(self, batch, outputs):
        if self.class_weights is None:
            return None
        return fairdefense.LossWeights(robust=self.class_weights.to(batch.y.device)[batch.y])


def build_classifier(x_train: np.ndarray) -> PyTorchClassifier:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return PyTorchClassifier(
        model, nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10, optimizer=optimizer,
        clip_values=(0.0, 1.0), preprocessing=(float(x_train.mean()), float(x_train.std())),
    )


def main() -> None:
    torch.set_num_threads(1)
    digits = load_digits()
    x = digits.images[:, None] / 16.0  # float64, as numpy makes it; ART itself needs float32, we cast
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=0,
                                                        stratify=digits.target)
    classifier = build_classifier(x_train)
    eps = 0.2

    # --- the existing ART pipeline ------------------------------------------------
    art_trainer = AdversarialTrainerMadryPGD(classifier, nb_epochs=15, batch_size=64, eps=eps, eps_step=0.05,
                                             max_iter=5)
    # art_trainer.fit(x_train.astype(np.float32), y_train)          # <- before

    # --- with fairness: one line changes --------------------------------------------
    installed = {p.name for p in fairdefense.list_plugins() if p.error is None}
    plugins = [WeakClassBoost()] + (["ema"] if "ema" in installed else [])
    trainer = from_art_trainer(art_trainer, plugins=plugins, progress=False)
    trainer.fit(x_train, y_train)
    classifier = trainer.get_classifier()  # the same PyTorchClassifier, trained in place

    # --- per-class robustness under ART's own PGD ---------------------------------------
    pgd = ProjectedGradientDescent(classifier, eps=eps, eps_step=eps / 4, max_iter=20, verbose=False)
    report = per_class_robustness(classifier, x_test, y_test, pgd)
    print(f"plugins: {[p if isinstance(p, str) else p.plugin_name() for p in plugins]}")
    print("class  clean  robust (ART PGD-20)")
    for name, clean, robust in zip(report.class_names, report.clean_acc, report.robust_acc["ProjectedGradientDescent"]):
        print(f"{name:>5}  {clean:.3f}  {robust:.3f}")
    summary = report.summary()["ProjectedGradientDescent/robust_acc"]
    print(f"robust accuracy: average {summary['avg']:.3f}, worst class {summary['worst']:.3f}")


if __name__ == "__main__":
    main()
