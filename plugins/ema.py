"""EMA: an exponential moving average of the weights, evaluated instead of the trained ones.

Reference
    The "AT+EMA" / "TRADES+EMA" baselines of Wei, Wang, Guo, Wang, "CFA: Class-wise
    Calibrated Fair Adversarial Training", CVPR 2023 (code: https://github.com/PKU-ML/CFA,
    ``utils.weight_average`` and the ``EMA_model`` of ``train.py``). CFA's FAWA
    (:mod:`fairdefense_plugins.cfa`) is the same average with a fairness gate.

Algorithm (as implemented)
    After every epoch ``e >= begin`` (counted from 0)::

        theta_bar <- theta                                   (the first time: a copy)
        theta_bar <- decay * theta_bar + (1 - decay) * theta (afterwards)

    over the model's full ``state_dict``: parameters and buffers, BatchNorm's running
    mean and variance included. Training continues from the trained weights
    ``theta``; ``theta_bar`` is what the trainer evaluates each epoch and exports as
    the checkpoint's ``eval_model`` (``fairdefense evaluate`` uses it).

Defaults (the authors' code)
    ``decay = 0.88`` (``--decay-rate``), ``begin = 0`` (the code averages from the first
    epoch, ``weight_average(EMA_model, model, decay, init=epoch == 0)``).

Deviations
    - The paper's text uses ``decay = 0.85`` and starts averaging at epoch 50 of 200;
      both are options (``-o ema.decay=0.85 -o ema.begin=50``).
    - Integer buffers (BatchNorm's ``num_batches_tracked``) are not averaged: the
      average takes the model's current value. The code multiplies them by floats and
      truncates the result when loading it back into the integer buffer, a number
      nothing reads unless BatchNorm's momentum is ``None``.

Combination
    ``weights_to_evaluate`` is an exclusive hook: ``ema`` cannot be combined with a
    plugin that also supplies evaluation weights (``cfa`` with FAWA on); ``cfa`` with
    ``fawa=false`` plus ``ema`` is CCM/CCR with plain EMA.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

import fairdefense
from fairdefense.toolkit import WeightAverage, check_options

__all__ = ["EMA"]


class EMA(fairdefense.FairnessPlugin):
    """Exponential moving average of the weights (CFA paper's AT+EMA baseline); evaluates the average."""

    name = "ema"

    @dataclass
    class Options:
        """``decay``: weight of the old average (code 0.88, paper 0.85); ``begin``: first epoch averaged (from 0)."""

        decay: float = 0.88
        begin: int = 0

        def __post_init__(self) -> None:
            check_options("ema", self, [
                (0.0 <= self.decay < 1.0, "decay", "in [0, 1) (e.g. -o ema.decay=0.88)"),
                (self.begin >= 0, "begin", "an epoch index >= 0"),
            ])

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._average = WeightAverage(self.options.decay)

    def on_epoch_end(self, epoch: fairdefense.EpochInfo) -> None:
        """Average the weights the epoch ended with (from epoch ``begin`` on)."""
        if epoch.epoch >= self.options.begin:
            self._average.update(epoch.model.state_dict())

    def weights_to_evaluate(self) -> dict[str, Tensor] | None:
        """The averaged weights, or ``None`` (evaluate the trained ones) before ``begin``."""
        return self._average.weights

    def plugin_state(self) -> dict[str, Any]:
        """The averaged ``state_dict`` (empty before the first average)."""
        return self._average.state()

    def load_plugin_state(self, state: dict[str, Any]) -> None:
        """Restore the average saved by :meth:`plugin_state`."""
        self._average.load_state(state)
