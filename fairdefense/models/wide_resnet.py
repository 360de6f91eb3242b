"""Wide ResNets WRN-28-10 and WRN-34-10 for 32x32 inputs (Zagoruyko & Komodakis, BMVC 2016),
as in the TRADES code and RobustBench, which the FRL and FAAL experiments use.

Stem: one 3x3 convolution with 16 channels; three stages of ``(depth - 4) / 6``
pre-activation blocks with ``16k``, ``32k``, ``64k`` channels (``k`` the widen factor;
stride 2 in the second and third stages; no dropout); a final batch norm + ReLU,
global average pooling and a linear layer. Convolutions are initialised
N(0, 2 / (3 * 3 * out_channels)) as in that code. Parameter names match it
(``conv1``, ``blockK.layer.J.bn1``..., ``convShortcut``, ``bn1``, ``fc``), so
RobustBench/TRADES ``state_dict`` files of the same depth load with ``--init``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fairdefense.errors import ConfigError

__all__ = ["WideBlock", "WideStage", "WideResNet", "wrn28_10", "wrn34_10"]


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the input (a 1x1 convolution of the first
    activation where the width or stride changes)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        changes = stride != 1 or in_planes != out_planes
        # named as in the published checkpoints
        self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False) if changes else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class WideStage(nn.Module):
    """``blocks`` :class:`WideBlock` s, the first one with ``stride``."""

    def __init__(self, blocks: int, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(WideBlock(in_planes if j == 0 else out_planes, out_planes, stride if j == 0 else 1) for j in range(blocks))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``; ``depth - 4`` must be a multiple of 6."""

    def __init__(
        self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)
    ) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n + 4 (28, 34, ...), got {depth}.")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = WideStage(n, widths[0], widths[1], 1)
        self.block2 = WideStage(n, widths[1], widths[2], 2)
        self.block3 = WideStage(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def wrn28_10(num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)) -> WideResNet:
    """WRN-28-10 (36.5M parameters for 10 classes)."""
    return WideResNet(28, 10, num_classes, input_shape)


def wrn34_10(num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)) -> WideResNet:
    """WRN-34-10 (46.2M parameters for 10 classes)."""
    return WideResNet(34, 10, num_classes, input_shape)
