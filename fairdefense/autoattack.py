"""AutoAttack (Croce & Hein, 2020) on one batch at a time, with either packaging of it.

Two packagings exist: the upstream ``autoattack`` module (fra31/auto-attack,
``AutoAttack(model, norm=..., eps=..., attacks_to_run=..., ...)`` and
``run_standard_evaluation(x, y, bs=...)`` returning the adversarial inputs) and
``pyautoattack`` from PyPI (``AutoAttack(model, *, attacks=..., ...)`` and
``run_standard_evaluation(x, y, batch_size=...)`` returning ``(x_adv, y_adv)``).
The upstream module is used when it is importable, ``pyautoattack`` otherwise.

Which attacks run (:func:`plan_autoattack`):

- at least 10 classes: the ``"standard"`` version, APGD-CE, APGD-T and FAB-T
  (9 target classes each) and Square (5,000 queries), one restart each, 100
  iterations for the gradient attacks;
- 2 to 9 classes: the standard version's 9 target classes do not exist, so a
  reduced ``"custom"`` set runs with the same settings and ``C - 1`` target
  classes: APGD-CE, APGD-T (needs 4 classes; with 3, untargeted APGD-DLR takes
  its place; with 2, no DLR attack exists), FAB-T and Square;
- a set the caller names: ``"custom"`` with those attacks and the same settings.

Each call attacks one batch, so memory stays flat in the number of samples; the
attacks are seeded with ``seed`` on every batch (deterministic) and the caller's
global random state is restored afterwards. The model must take inputs in
``[0, 1]`` and return logits, and be in eval mode (:func:`fairdefense.evaluate`
sees to that).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from fairdefense.errors import ConfigError, require

__all__ = [
    "AutoAttackPlan",
    "AutoAttackRunner",
    "plan_autoattack",
    "import_autoattack",
    "STANDARD_ATTACKS",
    "ATTACK_NAMES",
]

#: The standard version's attacks, in the order they run.
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
#: Every attack name the AutoAttack packages know.
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
#: The standard version's settings (Linf and L2), applied to custom sets too.
STANDARD_SETTINGS = {"n_iter": 100, "restarts": 1, "square_queries": 5000, "max_target_classes": 9}
_NORMS = {"linf": "Linf", "l2": "L2"}


@dataclass(frozen=True)
class AutoAttackPlan:
    """Which AutoAttack attacks run and how.

    ``version`` is ``"standard"`` or ``"custom"``; ``attacks`` the attacks in
    order; ``n_target_classes`` the target classes of APGD-T and FAB-T;
    ``reduced`` is true when fewer than 10 classes forced a reduced standard set;
    ``note`` says so in words for the report.
    """

    version: str
    attacks: tuple[str, ...]
    n_target_classes: int
    reduced: bool
    note: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the shared settings (iterations, restarts, queries)."""
        out = asdict(self)
        out["attacks"] = list(self.attacks)
        out.update(n_iter=STANDARD_SETTINGS["n_iter"], n_restarts=STANDARD_SETTINGS["restarts"],
                   square_queries=STANDARD_SETTINGS["square_queries"])
        return out


def plan_autoattack(num_classes: int, attacks: Sequence[str] | None = None) -> AutoAttackPlan:
    """The AutoAttack set for ``num_classes`` classes (see the module docstring).

    ``attacks`` names a custom set (e.g. ``["apgd-ce"]``); ``None`` chooses the
    standard version, or its reduced form below 10 classes.
    """
    if num_classes < 2:
        raise ConfigError(f"AutoAttack needs at least 2 classes, got {num_classes}.")
    targets = min(STANDARD_SETTINGS["max_target_classes"], num_classes - 1)
    if attacks is not None:
        chosen = tuple(attacks)
        unknown = [a for a in chosen if a not in ATTACK_NAMES]
        if unknown or not chosen:
            raise ConfigError(
                f"unknown AutoAttack attack(s) {unknown or chosen}; choose from {', '.join(ATTACK_NAMES)}."
            )
        if (num_classes < 4 and "apgd-t" in chosen) or (num_classes < 3 and "apgd-dlr" in chosen):
            raise ConfigError(
                f"the DLR loss of APGD-T needs 4 classes and that of APGD-DLR 3; this model has {num_classes}. "
                f"Drop them from the AutoAttack set."
            )
        return AutoAttackPlan("custom", chosen, targets, False,
                              f"custom set {', '.join(chosen)} ({targets} target classes)")
    if num_classes >= 10:
        return AutoAttackPlan("standard", STANDARD_ATTACKS, targets, False,
                              "standard version: " + ", ".join(STANDARD_ATTACKS) + f" ({targets} target classes)")
    dlr = ("apgd-t",) if num_classes >= 4 else ("apgd-dlr",) if num_classes == 3 else ()
    chosen = ("apgd-ce", *dlr, "fab-t", "square")
    note = (
        f"reduced standard set for {num_classes} classes (the standard version's 9 target classes do not exist): "
        f"{', '.join(chosen)} with {targets} target classes, as version='custom' with the standard settings"
    )
    return AutoAttackPlan("custom", chosen, targets, True, note)


def import_autoattack() -> tuple[type, str]:
    """``(AutoAttack class, package name)``: upstream ``autoattack`` if importable, else ``pyautoattack``.

    Raises :class:`~fairdefense.errors.MissingDependencyError` when neither is installed.
    """
    try:
        from autoattack import AutoAttack
    except ImportError:
        module = require("pyautoattack", "autoattack", "AutoAttack evaluation")
        return module.AutoAttack, "pyautoattack"
    return AutoAttack, "autoattack"


class AutoAttackRunner:
    """Runs one :class:`AutoAttackPlan` on batches: ``x_adv = runner(x, y)``.

    ``x_adv`` equals ``x`` for samples no attack fooled (and for samples that were
    misclassified to begin with), so ``model(x_adv).argmax(1) == y`` is each
    sample's robust flag.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        norm: str,
        num_classes: int,
        device: torch.device | str,
        seed: int,
        attacks: Sequence[str] | None = None,
        clip: tuple | None = (0.0, 1.0),
    ) -> None:
        if norm not in _NORMS:
            raise ConfigError(f"AutoAttack supports norms {list(_NORMS)}, got {norm!r}.")
        if clip is None or isinstance(clip[0], Tensor) or tuple(float(c) for c in clip) != (0.0, 1.0):
            raise ConfigError(
                f"AutoAttack clips inputs to [0, 1], but this data's valid range is {clip}; "
                f"use the pgdK/cwK attacks, or give the model inputs in [0, 1]."
            )
        self.plan = plan_autoattack(num_classes, attacks)
        self.device = torch.device(device)
        self.seed = int(seed)
        cls, self.package = import_autoattack()
        custom = self.plan.version == "custom"
        if self.package == "pyautoattack":
            self.adversary = cls(model, attacks=list(self.plan.attacks) if custom else None, device=self.device,
                                 eps=eps, norm=_NORMS[norm], seed=self.seed, version=self.plan.version)
        else:
            self.adversary = cls(model, norm=_NORMS[norm], eps=eps, seed=self.seed, verbose=False,
                                 attacks_to_run=list(self.plan.attacks) if custom else [],
                                 version=self.plan.version, device=self.device)
        self.adversary.verbose = False
        if custom:
            self._standard_settings()

    def _standard_settings(self) -> None:
        """Give a custom set the standard version's restarts, targets and queries."""
        a = self.adversary
        a.apgd.n_restarts = STANDARD_SETTINGS["restarts"]
        a.apgd_targeted.n_restarts = STANDARD_SETTINGS["restarts"]
        a.fab.n_restarts = STANDARD_SETTINGS["restarts"]
        a.apgd_targeted.n_target_classes = self.plan.n_target_classes
        a.fab.n_target_classes = self.plan.n_target_classes
        a.square.n_queries = STANDARD_SETTINGS["square_queries"]

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial inputs for one batch ``(B, ...)``, on ``x``'s device."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self.package == "pyautoattack":
                x_adv, _ = self.adversary.run_standard_evaluation(x, y, batch_size=len(y))
            else:
                x_adv = self.adversary.run_standard_evaluation(x, y, bs=len(y))
        return x_adv.to(x.device)
