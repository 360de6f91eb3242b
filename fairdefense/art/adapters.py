"""ART estimators in and out: take a ``PyTorchClassifier`` apart into what fairdefense trains.

:func:`unwrap` reads the raw module (``classifier.model``, not ART's ``_model``
wrapper, which returns every layer's output for ``nn.Sequential`` models), the
loss, optimizer, input shape, number of classes, clip values, device and
preprocessing. The preprocessing is folded into the forward pass
(:class:`InputSpaceModel`), so attacks run in the classifier's input space, the
space its ``clip_values`` and attack radii are given in. The user's module and
optimizer are trained in place, so the classifier passed in is the trained one.

Example::

    parts = unwrap(classifier, training=True)
    parts.model(torch.as_tensor(x[:4]))   # == classifier.predict(x[:4]) as a tensor

Whatever cannot work is refused with a :class:`~fairdefense.errors.ConfigError`
that names the problem and the fix: another framework, no optimizer, an
optimizer over other parameters, a loss other than cross-entropy, preprocessing
defences that cannot be differentiated or that mix labels, and attacks
fairdefense's PGD cannot reproduce (targeted, momentum, random eps, several
random restarts, norms other than L-inf and L2).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from fairdefense.errors import ConfigError
from fairdefense.inputs import check_inputs
from fairdefense.models.normalize import Standardize

__all__ = [
    "class_names_for",
    "ARTParts",
    "InputSpaceModel",
    "unwrap",
    "to_inputs",
    "to_labels",
    "norm_name",
    "pgd_settings",
    "check_settings",
]

_log = logging.getLogger("fairdefense.art")


@dataclass
class ARTParts:
    """What fairdefense uses of a ``PyTorchClassifier``.

    ``module`` is the user's own network (``classifier.model``); ``model`` is the
    network with the classifier's preprocessing folded in (``module`` itself when
    there is none): it takes the classifier's raw inputs. ``clip`` is ``None``
    (no ``clip_values``: unbounded inputs, which attacks do not clip, as in ART; logged
    once per :func:`unwrap` on the ``fairdefense.art`` logger at INFO level) or
    ``(low, high)`` as floats, or as tensors of the input's shape for per-feature
    bounds.
    """

    classifier: Any
    module: nn.Module
    model: nn.Module
    loss: nn.Module
    optimizer: torch.optim.Optimizer | None
    input_shape: tuple[int, ...]
    num_classes: int
    clip: tuple | None
    device: torch.device


class _ARTPreprocessor(nn.Module):
    """An ART ``PreprocessorPyTorch`` as a module: its differentiable ``forward``, labels untouched."""

    def __init__(self, op: Any) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: Tensor) -> Tensor:
        return self.op.forward(x)[0]


class InputSpaceModel(nn.Module):
    """The user's ``net`` behind the classifier's preprocessing steps, as ART applies them.

    ART applies a preprocessing step when fitting if its ``apply_fit`` is set and
    when predicting or computing gradients if its ``apply_predict`` is set; here
    training mode stands for fitting and eval mode (in which attacks and
    evaluations run) for predicting. ``net`` is the user's module itself, so its
    parameters are trained in place.
    """

    def __init__(self, net: nn.Module, steps: list[tuple[nn.Module, bool, bool]]) -> None:
        super().__init__()
        self.net = net
        self.steps = nn.ModuleList(step for step, _, _ in steps)
        self._fit = [f for _, f, _ in steps]
        self._predict = [p for _, _, p in steps]

    def forward(self, x: Tensor) -> Tensor:
        applies = self._fit if self.training else self._predict
        for step, on in zip(self.steps, applies):
            if on:
                x = step(x)
        return self.net(x)


def _framework(obj: Any) -> str:
    module = type(obj).__module__
    for name in ("tensorflow", "keras", "scikitlearn", "sklearn", "xgboost", "lightgbm", "catboost", "gpy", "jax"):
        if name in module.lower():
            return name
    return module


def _fold(classifier: Any) -> list[tuple[nn.Module, bool, bool]]:
    """One module per preprocessing operation of the classifier, in ART's order."""
    import art.defences.preprocessor as defences
    from art.defences.preprocessor.preprocessor import PreprocessorPyTorch
    from art.preprocessing.standardisation_mean_std.numpy import StandardisationMeanStd
    from art.preprocessing.standardisation_mean_std.pytorch import StandardisationMeanStdPyTorch
    from art.preprocessing.standardisation_mean_std.utils import broadcastable_mean_std

    steps: list[tuple[nn.Module, bool, bool]] = []
    for op in classifier.preprocessing_operations:
        name = type(op).__name__
        if isinstance(op, (StandardisationMeanStd, StandardisationMeanStdPyTorch)):
            mean = np.asarray(op.mean, dtype=np.float32)
            std = np.asarray(op.std, dtype=np.float32)
            if np.all(mean == 0) and np.all(std == 1):
                continue
            probe = np.zeros((1, *classifier.input_shape), dtype=np.float32)
            mean, std = broadcastable_mean_std(probe, mean, std)
            steps.append((Standardize(mean, std), bool(op.apply_fit), bool(op.apply_predict)))
        elif name in ("MixupPyTorch", "CutMixPyTorch"):
            raise ConfigError(
                f"the classifier's preprocessing defence {name} mixes labels into soft targets, which "
                f"fairdefense's objectives (integer labels per sample) cannot use. Remove it from "
                f"preprocessing_defences for adversarial training."
            )
        elif isinstance(op, PreprocessorPyTorch):
            steps.append((_ARTPreprocessor(op), bool(op.apply_fit), bool(op.apply_predict)))
        else:
            twin = f"{name}PyTorch"
            fix = (
                f"use its PyTorch version art.defences.preprocessor.{twin}, which can be differentiated"
                if hasattr(defences, twin)
                else "remove it from preprocessing_defences for adversarial training (attach it again afterwards "
                "with classifier.set_params(preprocessing_defences=...))"
            )
            raise ConfigError(
                f"the classifier's preprocessing defence {name} runs in numpy, so fairdefense cannot "
                f"differentiate through it to attack the model in input space; {fix}."
            )
    return steps


def _clip(classifier: Any, device: torch.device) -> tuple | None:
    values = classifier.clip_values
    if values is None:
        _log.info("the classifier has no clip_values: its inputs are unbounded, so attacks do not clip them "
                  "(as ART's own attacks do)")
        return None
    low, high = (np.asarray(v, dtype=np.float32) for v in values)
    if low.size == 1 and high.size == 1:
        return float(low.reshape(())), float(high.reshape(()))
    shape = tuple(classifier.input_shape)
    try:
        low, high = np.broadcast_to(low, shape), np.broadcast_to(high, shape)
    except ValueError as exc:
        raise ConfigError(
            f"the classifier's clip_values have shape {values[0].shape}, which does not fit its input_shape "
            f"{shape}; give one bound per feature (shape {shape}) or scalars."
        ) from exc
    return torch.as_tensor(low.copy(), device=device), torch.as_tensor(high.copy(), device=device)


def _check_training(classifier: Any, module: nn.Module) -> None:
    optimizer = classifier.optimizer
    if optimizer is None:
        raise ConfigError(
            "the classifier has no optimizer, which adversarial training needs; create it with "
            "PyTorchClassifier(model, ..., optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))."
        )
    owned = {id(p) for p in module.parameters()}
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not owned & held:
        raise ConfigError(
            "the classifier's optimizer holds none of its model's parameters (was it created for another "
            "instance of the model?); create the optimizer from classifier.model.parameters()."
        )
    if getattr(classifier, "use_amp", False):
        raise ConfigError(
            "the classifier uses apex AMP (use_amp=True), which wraps the model and optimizer; create it "
            "with use_amp=False for fairdefense's training."
        )
    loss = classifier.loss
    if not isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss)):
        raise ConfigError(
            f"the classifier's loss is {type(loss).__name__}, but fairdefense trains with cross-entropy on "
            f"the model's outputs (PGD-AT, TRADES); use torch.nn.CrossEntropyLoss() on logits (or NLLLoss "
            f"on log-probabilities)."
        )
    if getattr(loss, "weight", None) is not None or getattr(loss, "label_smoothing", 0.0):
        raise ConfigError(
            f"the classifier's {type(loss).__name__} has class weights or label smoothing, which fairdefense's "
            f"objectives do not apply; drop them, and weight classes with a reweighting plugin instead."
        )


def unwrap(classifier: Any, training: bool = False) -> ARTParts:
    """Take an ART ``PyTorchClassifier`` apart (see :class:`ARTParts`).

    With ``training=True`` the classifier must also be trainable by fairdefense:
    an optimizer over its module's parameters and a cross-entropy loss.
    """
    from art.estimators.classification import PyTorchClassifier

    if not isinstance(classifier, PyTorchClassifier):
        raise ConfigError(
            f"fairdefense trains and attacks PyTorch modules, but got a {type(classifier).__name__} "
            f"({_framework(classifier)}); wrap a torch.nn.Module in "
            f"art.estimators.classification.PyTorchClassifier."
        )
    module = classifier.model
    if training:
        _check_training(classifier, module)
    steps = _fold(classifier)
    device = torch.device(classifier.device)
    model = InputSpaceModel(module, steps).to(device) if steps else module
    return ARTParts(
        classifier=classifier, module=module, model=model, loss=classifier.loss, optimizer=classifier.optimizer,
        input_shape=tuple(classifier.input_shape), num_classes=int(classifier.nb_classes),
        clip=_clip(classifier, device), device=device,
    )


def to_inputs(x: Any, input_shape: tuple[int, ...], what: str = "x", clip: tuple | None = None) -> Tensor:
    """Inputs as a float32 tensor, checked by :func:`fairdefense.inputs.check_inputs`: other real
    dtypes (numpy's default float64, integers) are converted with a warning; values outside
    ``clip`` (``None``: unbounded, a classifier without ``clip_values``) are refused."""
    arr = np.asarray(x)
    if tuple(arr.shape[1:]) != tuple(input_shape):
        raise ConfigError(
            f"{what} has samples of shape {tuple(arr.shape[1:])}, but the classifier's input_shape is "
            f"{tuple(input_shape)}."
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise ConfigError(f"{what} must be numeric, got dtype {arr.dtype}.")
    return check_inputs(np.ascontiguousarray(arr), clip, what)


def to_labels(y: Any, num_classes: int, n: int | None = None, what: str = "y") -> Tensor:
    """Labels as int64 class indices ``(N,)``, from indices ``(N,)``/``(N, 1)`` or one-hot ``(N, C)``."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == num_classes and num_classes > 1:
        arr = arr.argmax(axis=1)
    elif arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ConfigError(
            f"{what} has shape {np.asarray(y).shape}; give class indices (N,) or one-hot labels (N, {num_classes})."
        )
    if n is not None and len(arr) != n:
        raise ConfigError(f"{what} has {len(arr)} labels for {n} inputs.")
    if len(arr) and (not np.all(np.mod(arr, 1) == 0) or arr.min() < 0 or arr.max() >= num_classes):
        raise ConfigError(f"{what} must hold class indices in 0..{num_classes - 1}.")
    return torch.from_numpy(arr.astype(np.int64))


def norm_name(norm: Any) -> str:
    """ART's ``norm`` (``np.inf``, ``"inf"``, ``2``, ``"2"``) as fairdefense's ``"linf"``/``"l2"``."""
    if isinstance(norm, str) and norm in ("linf", "l2"):
        return norm
    try:
        value = float(norm)
    except (TypeError, ValueError):
        value = float("nan")
    if value == float("inf"):
        return "linf"
    if value == 2:
        return "l2"
    raise ConfigError(
        f"norm={norm!r} is not supported: fairdefense's PGD attacks the L-inf and L2 norms; use norm=np.inf or 2."
    )


def _scalar(value: Any, what: str) -> float:
    arr = np.asarray(value)
    if arr.size != 1:
        raise ConfigError(
            f"{what} is an array of shape {arr.shape}; fairdefense's training attack needs one {what} (a float). "
            f"For per-class radii use a remargin plugin (e.g. FRL or CFA)."
        )
    return float(arr.reshape(()))


def pgd_settings(attack: Any, classifier: Any) -> dict[str, Any]:
    """Read an ART ``ProjectedGradientDescent`` (any of its classes) as ART-style settings.

    Returns ``eps``, ``eps_step``, ``max_iter``, ``norm`` (``"linf"``/``"l2"``) and
    ``num_random_init``. Settings fairdefense cannot honour are refused.
    """
    from art.attacks.evasion import ProjectedGradientDescent
    from art.attacks.evasion.projected_gradient_descent.projected_gradient_descent_numpy import (
        ProjectedGradientDescentCommon,
    )

    if not isinstance(attack, (ProjectedGradientDescent, ProjectedGradientDescentCommon)):
        raise ConfigError(
            f"the training attack must be an ART ProjectedGradientDescent, got {type(attack).__name__}; "
            f"pass eps/eps_step/max_iter instead (fairdefense runs its own batched PGD with those settings)."
        )
    if attack.estimator is not classifier:
        raise ConfigError(
            "the attack targets another estimator than the classifier being trained; fairdefense attacks the "
            "model it trains. Build the attack on the same classifier."
        )
    if attack.targeted:
        raise ConfigError("targeted PGD is not supported for training; create the attack with targeted=False.")
    if getattr(attack, "random_eps", False):
        raise ConfigError("random_eps=True is not supported; create the attack with random_eps=False.")
    if getattr(attack, "decay", None) is not None:
        raise ConfigError("momentum PGD (decay) is not supported; create the attack with decay=None.")
    return check_settings(
        eps=_scalar(attack.eps, "eps"), eps_step=_scalar(attack.eps_step, "eps_step"), max_iter=attack.max_iter,
        norm=attack.norm, num_random_init=attack.num_random_init,
    )


def check_settings(
    eps: float | None, eps_step: float | None, max_iter: int | None, norm: Any, num_random_init: int | None
) -> dict[str, Any]:
    """Validate ART-style attack settings (``None`` = unset); ``norm`` becomes ``"linf"``/``"l2"``."""
    if num_random_init is not None and num_random_init not in (0, 1):
        raise ConfigError(
            f"num_random_init={num_random_init} is not supported: fairdefense's PGD makes one attempt per batch; "
            f"use num_random_init=1 (random start) or 0 (start at the input)."
        )
    return {
        "eps": None if eps is None else _scalar(eps, "eps"),
        "eps_step": None if eps_step is None else _scalar(eps_step, "eps_step"),
        "max_iter": None if max_iter is None else int(max_iter),
        "norm": None if norm is None else norm_name(norm),
        "num_random_init": num_random_init,
    }


def class_names_for(class_names: Sequence[Any] | None, num_classes: int) -> list[str]:
    """``class_names`` as strings (``None``: ``"0"``, ``"1"``, ...), checked to name the
    classifier's ``num_classes`` classes."""
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(
            f"class_names has {len(names)} names for the classifier's {num_classes} classes; give one name per "
            f"class, in the order of the classifier's outputs, or leave class_names unset."
        )
    return names
