"""Fold per-channel mean/std normalisation into the model, so attacks work in input space."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Normalized"]


class Normalized(nn.Module):
    """``net((x - mean) / std)``, with ``mean``/``std`` per channel (dimension 1)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(shape))

    def forward(self, x: Tensor) -> Tensor:
        mean, std = self.mean, self.std
        if x.dim() == 2:  # tabular: one statistic per feature
            mean, std = mean.flatten(), std.flatten()
        return self.net((x - mean) / std)
