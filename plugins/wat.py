"""WAT: Worst-class Adversarial Training (hedge weights over the classes and their average).

Paper: Boqi Li, Weiwei Liu. "WAT: Improve the Worst-class Robustness in Adversarial
Training". AAAI 2023 (arXiv 2302.04025). Authors' code: https://github.com/boqili/WAT
(``worst_class_adversarial_train.py``, ``--alg wat``).

Algorithm, as the authors' code runs it (TRADES from scratch):

- A decision set of ``C + 1`` entries: one per class and one for the average loss.
  Its weights ``w`` start at one (all ``C + 1`` entries).
- Training loss of a batch (the code's ``nat_loss``/``bndy_loss`` plus the WAT term)::

      (sum_i w_{y_i} CE_i + beta * sum_i w_{y_i} KL_i) / B  +  w_C * (mean_i CE_i + beta * mean_i KL_i)

  i.e. every sample's natural and robust TRADES terms are weighted by
  ``w_{y_i} + w_C``; this plugin returns exactly those per-sample weights (the
  trainer takes plain batch means, as the code does).
- After every epoch, on the validation split: per class the mean TRADES cost
  ``L_c = mean CE_c + beta * mean KL_c`` and, as entry ``C``, the mean over all
  validation samples. The costs are summed over epochs (``S``) and the weights become
  ``w = C * softmax(eta * S)`` over the ``C + 1`` entries (Hedge / exponentiated
  gradient with learning rate ``eta``; they sum to ``C``, not ``C + 1``).
- Validation attack (``val_attack = "code"``, the default): as the code, TRADES's KL
  attack (``val_steps`` steps from ``x + 0.001 N(0, I)``, evaluation family
  ``tradesK``); CE and KL are measured on its examples. ``val_attack = "trainer"``
  leaves the trainer's validation attack (CE-PGD unless set otherwise), the KL term
  then being measured on CE-PGD examples.

Hooks: ``configure`` (TRADES, beta, validation attack/steps/size), ``on_validation`` (the
Hedge update), ``reweight``, ``plugin_state`` / ``load_plugin_state`` (cumulative cost
and weights).

Defaults (authors' code): ``eta = 0.1``, ``beta = 6.0``, validation attack of 10 steps
(``val_steps = 10``), validation 300 images per class on CIFAR-10 (30 on CIFAR-100;
``val_size = None`` keeps the dataset's default). Schedule in the code: ResNet-18,
100 epochs, SGD lr 0.1 (x0.1 at 75, x0.01 at 90), momentum 0.9, weight decay 2e-4,
batch 128, eps 0.031, step 0.007, 10 steps - trainer settings, not forced here.

Deviations and why:

- Validation attack step: the code's KL attack steps by the training step (0.007 at
  eps 0.031, i.e. eps/4.4); the evaluation family ``tradesK`` steps by ``eps/4``
  like every evaluation attack (0.00775 at that radius).
- Exact means: the code divides the per-class sums by ``(number of batches) x
  batch_size`` and multiplies by ``C``, which equals the per-class mean only when
  the last validation batch is full (CIFAR-10: 3,072 instead of 3,000, so every
  cost is scaled by 0.977, as if ``eta`` were 0.0977). Here the costs are exact
  per-class means, and the average entry is pooled over all validation samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import fairdefense
from fairdefense.toolkit import DeviceCache, check_options, pooled_mean, validation_counts

__all__ = ["WAT", "hedge_weights"]


def hedge_weights(cumulative_cost: Tensor, eta: float, num_classes: int) -> Tensor:
    """``C * softmax(eta * cumulative_cost)`` over the ``C + 1`` entries."""
    return num_classes * torch.softmax(eta * cumulative_cost, dim=0)


class WAT(fairdefense.FairnessPlugin):
    """WAT (Li & Liu 2023): Hedge weights on the per-class and average validation TRADES loss."""

    name = "wat"

    @dataclass
    class Options:
        """WAT's options (defaults from the authors' code)."""

        eta: float = 0.1
        beta: float = 6.0
        val_steps: int = 10
        val_size: float | None = None
        val_attack: str = "code"

        def __post_init__(self) -> None:
            check_options("wat", self, [
                (self.eta >= 0.0, "eta", ">= 0"),
                (self.beta >= 0.0, "beta", ">= 0"),
                (self.val_steps >= 1, "val_steps", ">= 1"),
                (self.val_size is None or self.val_size > 0, "val_size", "> 0 (a count per class or a fraction)"),
                (self.val_attack in ("code", "trainer"), "val_attack",
                 "'code' (TRADES's KL attack, as the authors' code) or 'trainer' (the trainer's validation attack)"),
            ])

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.cumulative: Tensor | None = None
        self.weights: Tensor | None = None
        self._device_weights = DeviceCache(lambda: self.weights)

    def _reset(self, num_classes: int) -> None:
        self.cumulative = torch.zeros(num_classes + 1, dtype=torch.float64)
        self.weights = torch.ones(num_classes + 1, dtype=torch.float64)
        self._device_weights.clear()

    def _ensure(self, num_classes: int) -> None:
        if self.weights is None or self.weights.numel() != num_classes + 1:
            self._reset(num_classes)

    # ------------------------------------------------------------- hooks
    def configure(self, config: "fairdefense.TrainConfig", run: "fairdefense.RunInfo") -> dict[str, Any]:
        """TRADES with WAT's beta and a ``val_steps``-step validation split, attacked with
        TRADES's KL attack unless ``val_attack = "trainer"``."""
        self._reset(run.num_classes)
        required: dict[str, Any] = {"objective": "trades", "beta": self.options.beta, "val_steps": self.options.val_steps}
        if self.options.val_attack == "code":
            required["val_attack"] = "trades"
        if self.options.val_size is not None:
            required["val_size"] = self.options.val_size
        return required

    def on_validation(self, epoch: "fairdefense.EpochInfo", report: "fairdefense.ClassReport") -> None:
        """Add this epoch's per-class and average TRADES costs; recompute the Hedge weights."""
        missing = {"clean_ce", "kl"} - set(report.losses)
        if missing:
            raise fairdefense.ConfigError(
                f"plugin 'wat': the validation report has no per-class losses {sorted(missing)}; "
                f"compute it with fairdefense.evaluate(..., losses=True)."
            )
        counts = validation_counts(self.name, report)
        self._ensure(report.num_classes)
        cost = report.losses["clean_ce"].double() + self.options.beta * report.losses["kl"].double()
        self.cumulative = self.cumulative + torch.cat([cost, pooled_mean(cost, counts).reshape(1)])
        self.weights = hedge_weights(self.cumulative, self.options.eta, report.num_classes)
        self._device_weights.clear()

    def reweight(self, batch: "fairdefense.BatchInfo", outputs: "fairdefense.BatchOutputs") -> "fairdefense.LossWeights":
        """Each sample's natural and robust terms weighted by ``w_{y_i} + w_C``."""
        self._ensure(batch.num_classes)
        weights = self._device_weights.like(outputs.robust)
        w = weights[batch.y] + weights[-1]
        return fairdefense.LossWeights(natural=w, robust=w)

    def plugin_state(self) -> dict[str, Tensor] | None:
        """The cumulative validation costs and the current weights."""
        if self.weights is None:
            return None
        return {"cumulative": self.cumulative.clone(), "weights": self.weights.clone()}

    def load_plugin_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`plugin_state` saved."""
        self.cumulative = torch.as_tensor(state["cumulative"], dtype=torch.float64).cpu().clone()
        self.weights = torch.as_tensor(state["weights"], dtype=torch.float64).cpu().clone()
        self._device_weights.clear()
