"""A minimal third-party fairdefense strategy, packaged on its own.

``upweight-weak`` weights each sample's robust loss by how badly its class did
last epoch: ``w_c = C * softmax(robust_error_c / temperature)``, computed from
the per-class training statistics the trainer hands to ``on_epoch_end``
(uniform weights in the first epoch). It exists to show the packaging path
(install this folder with pip and run ``fairdefense train --plugin upweight-weak``)
and the toolkit a strategy is written with: options checked in ``__post_init__``,
per-class weights kept on the CPU and handed out on the batch's device, and the
weights logged into ``metrics.jsonl`` by returning them from ``on_epoch_end``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import fairdefense
from fairdefense.toolkit import DeviceCache, check_options


class UpweightWeak(fairdefense.FairnessPlugin):
    """Upweight the robust loss of the classes least robust in the previous epoch."""

    name = "upweight-weak"

    @dataclass
    class Options:
        temperature: float = 0.1

        def __post_init__(self) -> None:
            check_options("upweight-weak", self, [(self.temperature > 0, "temperature", "> 0")])

    def __init__(self, **options):
        super().__init__(**options)
        self.class_weights: torch.Tensor | None = None
        self._on_device = DeviceCache(lambda: self.class_weights)

    def on_epoch_end(self, epoch, train_stats):
        error = 1.0 - train_stats.robust_acc  # per-class fractions, float64 on the CPU
        self.class_weights = len(error) * torch.softmax(error / self.options.temperature, dim=0)
        self._on_device.clear()
        return {"class_weights": self.class_weights}  # metrics.jsonl: "plugins": {"upweight-weak": {...}}

    def reweight(self, batch, outputs):
        if self.class_weights is None:
            return None
        return fairdefense.LossWeights(robust=self._on_device.like(outputs.robust)[batch.y])

    def plugin_state(self):
        return {"class_weights": self.class_weights}

    def load_plugin_state(self, state):
        self.class_weights = state["class_weights"]
        self._on_device.clear()
