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
from typing import Any, Mapping

from torch import Tensor

import fairdefense

__all__ = ["WeightAverage", "EMA"]


class WeightAverage:
    """An exponential moving average of a module's full ``state_dict``.

    The first :meth:`update` stores a copy; each later one sets every floating-point
    entry to ``decay * average + (1 - decay) * current``. Integer entries (BatchNorm's
    ``num_batches_tracked``) take the current value. Tensors stay on the device of
    the state they come from.
    """

    def __init__(self, decay: float) -> None:
        self.decay = float(decay)
        self._average: dict[str, Tensor] | None = None

    @property
    def weights(self) -> dict[str, Tensor] | None:
        """The averaged ``state_dict``, or ``None`` before the first update."""
        return None if self._average is None else dict(self._average)

    def update(self, state: Mapping[str, Tensor]) -> None:
        """Fold one ``state_dict`` into the average (new tensors; nothing is changed in place)."""
        previous = self._average
        average = {}
        for key, value in state.items():
            value = value.detach()
            if previous is None or not value.is_floating_point():
                average[key] = value.clone()
            else:
                average[key] = self.decay * previous[key] + (1.0 - self.decay) * value
        self._average = average

    def state(self) -> dict[str, Any]:
        """``{"average": state_dict}`` once something was averaged, else ``{}``."""
        return {} if self._average is None else {"average": dict(self._average)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        average = state.get("average")
        self._average = None if average is None else dict(average)


class EMA(fairdefense.FairnessPlugin):
    """Exponential moving average of the weights (CFA paper's AT+EMA baseline); evaluates the average."""

    name = "ema"

    @dataclass
    class Options:
        """``decay``: weight of the old average (code 0.88, paper 0.85); ``begin``: first epoch averaged (from 0)."""

        decay: float = 0.88
        begin: int = 0

        def __post_init__(self) -> None:
            if not 0.0 <= self.decay < 1.0:
                raise fairdefense.PluginOptionError(
                    f"plugin 'ema': option 'decay' must be in [0, 1), got {self.decay} (e.g. -o ema.decay=0.88)."
                )
            if self.begin < 0:
                raise fairdefense.PluginOptionError(
                    f"plugin 'ema': option 'begin' is an epoch index and must be >= 0, got {self.begin}."
                )

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
