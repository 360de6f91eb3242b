"""Input standardisation as a module, folded into the model so attacks work in input space."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Standardize", "Normalized"]


class Standardize(nn.Module):
    """``(x - mean) / std``; ``mean`` and ``std`` are buffers, broadcast against ``x`` as given."""

    def __init__(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Normalized(Standardize):
    """``net((x - mean) / std)``, with ``mean``/``std`` per channel (dimension 1)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        shape = (1, -1, 1, 1)
        super().__init__(torch.as_tensor(mean, dtype=torch.float32).reshape(shape),
                         torch.as_tensor(std, dtype=torch.float32).reshape(shape))
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:  # tabular: one statistic per feature
            return self.net((x - self.mean.flatten()) / self.std.flatten())
        return self.net(super().forward(x))
