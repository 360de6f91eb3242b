"""Per-class robust accuracy of any ART classifier (ART has none: its issue #2827).

Two ways to attack:

- fairdefense's attacks by name (``"pgd20"``, ``"cw20"``, several at once): run by
  :func:`fairdefense.evaluate` on the classifier's module with its preprocessing
  folded in, so ``eps`` is in input units. Needs a ``PyTorchClassifier``.
- any ART ``EvasionAttack`` object: its ``generate`` runs batch by batch and the
  classifier's own ``predict`` scores the clean and adversarial inputs, so it works
  for every ART classifier (any framework) and includes its pre- and post-processing.

Example::

    report = per_class_robustness(classifier, x_test, y_test, ProjectedGradientDescent(classifier, eps=0.03))
    report.summary()["ProjectedGradientDescent/robust_acc"]["worst"]
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fairdefense.art.adapters import class_names_for, norm_name, to_inputs, to_labels, unwrap
from fairdefense.errors import ConfigError
from fairdefense.evaluation import evaluate
from fairdefense.metrics import ClassReport, per_class_accuracy

__all__ = ["per_class_robustness"]


def per_class_robustness(
    classifier: Any,
    x: np.ndarray,
    y: np.ndarray,
    attack: str | Sequence[str] | Any = None,
    *,
    eps: float | None = None,
    norm: Any = np.inf,
    class_names: Sequence[str] | None = None,
    batch_size: int = 128,
    seed: int = 0,
) -> ClassReport:
    """Per-class clean and robust accuracy of ``classifier`` on ``x``, ``y``.

    ``attack`` is ``None`` (``"pgd20"``), one or more fairdefense attack names
    (``"pgdK"``, ``"cwK"``; these need ``eps`` and ``norm`` and a ``PyTorchClassifier``;
    without ``clip_values`` the inputs are unbounded and not clipped, as in ART) or an
    ART ``EvasionAttack``, whose own settings apply and whose name in the report is its
    class name. ``y`` holds class indices or
    one-hot rows. Attacks and predictions run ``batch_size`` samples at a time.
    """
    from art.attacks.attack import EvasionAttack

    names = class_names_for(class_names, int(classifier.nb_classes))
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    if isinstance(attack, EvasionAttack):
        return _with_art_attack(classifier, x, y, attack, names, batch_size)
    if attack is not None and not isinstance(attack, (str, list, tuple)):
        raise ConfigError(
            f"attack must be a fairdefense attack name such as 'pgd20', a list of names, or an ART EvasionAttack; "
            f"got {type(attack).__name__}."
        )
    attacks = ["pgd20"] if attack is None else [attack] if isinstance(attack, str) else list(attack)
    if eps is None:
        raise ConfigError(
            f"eps is required for {attacks}: the attack radius in the classifier's input units "
            f"(e.g. eps=8/255 for images in [0, 1])."
        )
    parts = unwrap(classifier)
    x_t = to_inputs(x, parts.input_shape)
    loader = DataLoader(TensorDataset(x_t, to_labels(y, len(names), len(x_t))), batch_size=batch_size)
    return evaluate(
        parts.model, loader, names, attacks, eps=float(eps), norm=norm_name(norm), clip=parts.clip,
        device=parts.device, seed=seed,
    )


def _with_art_attack(
    classifier: Any, x: np.ndarray, y: np.ndarray, attack: Any, names: list[str], batch_size: int
) -> ClassReport:
    from art.utils import to_categorical

    x = to_inputs(x, classifier.input_shape).numpy()  # ART's float32: float64 breaks its PyTorch predict
    nb = len(names)
    labels = to_labels(y, nb, len(x))
    one_hot = to_categorical(labels.numpy(), nb)
    clean_ok, adv_ok = [], []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], labels[start:start + batch_size]
        x_adv = attack.generate(xb, y=one_hot[start:start + batch_size])
        clean_ok.append(torch.from_numpy(classifier.predict(xb, batch_size=batch_size).argmax(1)) == yb)
        adv_ok.append(torch.from_numpy(classifier.predict(x_adv, batch_size=batch_size).argmax(1)) == yb)
    return ClassReport(
        class_names=names,
        counts=torch.bincount(labels, minlength=nb),
        clean_acc=per_class_accuracy(labels, torch.cat(clean_ok), nb),
        robust_acc={type(attack).__name__: per_class_accuracy(labels, torch.cat(adv_ok), nb)},
    )
