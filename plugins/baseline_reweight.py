"""Baseline Reweight: the FRL paper's Agarwal-style debiasing baseline on robust error.

Source: Han Xu, Xiaorui Liu, Yaxin Li, Anil K. Jain, Jiliang Tang. "To be Robust or
to be Fair: Towards Fairness in Adversarial Training". ICML 2021 (Tables 2, 3, 7, 8:
"Baseline Reweight"), and its ICLR-submission version (Section 4.1, "Traditional
model debiasing method: a reductions approach"; Table 2). The method is inherited
from Agarwal et al., "A Reductions Approach to Fair Classification", ICML 2018. The
authors' repository (https://github.com/hannxu123/fair_robust) holds no code for
this baseline; what follows is inferred from the papers.

What the papers say: the baseline "directly appl[ies the reductions approach] to
upweight the cost of the class with the highest robust error" (ICML 2021, Sec. 5.1)
and "to reweight the cost of adversarial examples during adversarial training"
(ICLR version, Sec. 5). Section 4.1 of the ICLR version states the reduction: the
constraints ``R_rob(f, i) - R_rob(f) <= tau`` per class, non-negative Lagrange
multipliers ``phi`` increased for the classes that violate them, and a
cost-sensitive classification problem that upweights every sample of those classes.

Algorithm, as implemented (FRL's multiplier machinery applied to robust error):

1. After every epoch, on the validation split: per-class robust error
   ``r_c = 1 - adv_acc_c`` (PGD, ``val_steps`` steps) and the overall ``R`` pooled
   over all validation samples. Violation ``g = r - R - tau``.
2. ``phi = Norm(phi + alpha * g)``: clip at 0, rescale to sum ``lim`` if above (FRL's
   code). ``phi`` starts at 0 (uniform weights).
3. Class weights from the Lagrangian ``R_rob + sum_c phi_c (R_rob(c) - R_rob - tau)``
   with balanced classes: ``w_c = 1/C + phi_c - mean(phi)``. Each batch's adversarial
   (robust) term becomes the weighted batch mean ``sum_i w_{y_i} l_i / sum_i w_{y_i}``
   (the plugin returns ``w_{y_i} * B / sum_j w_{y_j}``). The classes with the highest
   robust error accumulate the largest multipliers, hence the largest weights.

Hooks: ``configure`` (validation steps/size only: it works with either base
objective; PGD-AT is the library default and matches "reweight the cost of
adversarial examples"), ``on_validation``, ``reweight``, ``plugin_state`` /
``load_plugin_state``.

Defaults and where they come from: ``tau = 0.07`` (the ICLR version sets the
boundary/robust-error constraint to 7% for every debiasing method); ``alpha = 0.05``
(the multiplier rate of FRL, "alpha1 = alpha2 = 0.05"); ``lim = 0.5`` (FRL's code);
``val_steps = 20`` (FRL's PGD-20 validation); ``natural = False`` (only the
adversarial cost is reweighted; ``True`` also weights TRADES's natural term).

Inferred, not stated in the papers: the exact update rule (FRL's projected
multiplier step rather than Agarwal et al.'s exponentiated gradient with a best
response that puts all weight on the single worst class), ``Norm`` and ``lim``, the
validation split (the papers only say "training data"), and ``alpha``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import fairdefense
from fairdefense.toolkit import (
    DeviceCache,
    batch_mean_weights,
    check_options,
    cost_sensitive_weights,
    normalize_multipliers,
    pooled_mean,
    validation_counts,
)

__all__ = ["BaselineReweight"]


class BaselineReweight(fairdefense.FairnessPlugin):
    """Baseline Reweight (FRL paper): Lagrangian class weights on the adversarial loss from validation robust error."""

    name = "baseline-reweight"

    @dataclass
    class Options:
        """Baseline Reweight's options (see the module docstring for their sources)."""

        tau: float = 0.07
        alpha: float = 0.05
        lim: float = 0.5
        natural: bool = False
        val_steps: int = 20
        val_size: float | None = None

        def __post_init__(self) -> None:
            check_options("baseline-reweight", self, [
                (0.0 <= self.lim < 1.0, "lim", "in [0, 1) (it keeps every class weight positive)"),
                (self.alpha >= 0.0, "alpha", ">= 0"),
                (self.val_steps >= 1, "val_steps", ">= 1"),
                (self.val_size is None or self.val_size > 0, "val_size", "> 0 (a count per class or a fraction)"),
            ])

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.phi: Tensor | None = None
        self._device_weights = DeviceCache(self.class_weights)

    def _reset(self, num_classes: int) -> None:
        self.phi = torch.zeros(num_classes, dtype=torch.float64)
        self._device_weights.clear()

    def _ensure(self, num_classes: int) -> None:
        if self.phi is None or self.phi.numel() != num_classes:
            self._reset(num_classes)

    def class_weights(self) -> Tensor:
        """``1/C + phi_c - mean(phi)`` per class (float64, CPU)."""
        return cost_sensitive_weights(self.phi)

    # ------------------------------------------------------------- hooks
    def configure(self, config: "fairdefense.TrainConfig", run: "fairdefense.RunInfo") -> dict[str, Any]:
        """A PGD-``val_steps`` validation split (the base objective is left to the user)."""
        self._reset(run.num_classes)
        required: dict[str, Any] = {"val_steps": self.options.val_steps}
        if self.options.val_size is not None:
            required["val_size"] = self.options.val_size
        return required

    def on_validation(self, epoch: "fairdefense.EpochInfo", report: "fairdefense.ClassReport") -> None:
        """Raise the multipliers of the classes whose robust error exceeds the average by more than ``tau``."""
        counts = validation_counts(self.name, report)
        self._ensure(report.num_classes)
        robust_error = report.robust_error().double()
        violation = robust_error - pooled_mean(robust_error, counts) - self.options.tau
        self.phi = normalize_multipliers(self.phi + self.options.alpha * violation, self.options.lim)
        self._device_weights.clear()

    def reweight(self, batch: "fairdefense.BatchInfo", outputs: "fairdefense.BatchOutputs") -> "fairdefense.LossWeights":
        """Weighted batch mean of the adversarial term (and of the natural term if ``natural``)."""
        self._ensure(batch.num_classes)
        w = batch_mean_weights(self._device_weights.like(outputs.robust), batch.y)
        return fairdefense.LossWeights(natural=w if self.options.natural else None, robust=w)

    def plugin_state(self) -> dict[str, Tensor] | None:
        """The multipliers ``phi``."""
        return None if self.phi is None else {"phi": self.phi.clone()}

    def load_plugin_state(self, state: dict[str, Any]) -> None:
        """Restore the multipliers saved by :meth:`plugin_state`."""
        self.phi = torch.as_tensor(state["phi"], dtype=torch.float64).cpu().clone()
        self._device_weights.clear()
