"""ResNet-18 for 32x32 inputs (He et al., CVPR 2016), as in the BAT and FAAL code.

CIFAR-style stem: one 3x3 convolution with 64 channels + BN + ReLU, no pooling; four
stages of two basic blocks (64, 128, 256, 512 channels, stride 2 from the second
stage on); global average pooling and a linear layer. Parameter names match the
authors' code (``conv1``, ``bn1``, ``layerK.J.conv1``..., ``shortcut.0`` (conv) and
``shortcut.1`` (BN), ``linear``), so their ``state_dict`` files load with ``--init``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet", "resnet18", "make_stages"]


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU, conv3x3-BN, plus the input (1x1 conv + BN where the shape changes), then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_stages(block: Callable[[int, int, int], nn.Module], num_blocks: Sequence[int]) -> list[nn.Sequential]:
    """Stages of ``block(in_planes, planes, stride)`` with 64, 128, 256, 512 channels after a
    64-channel stem; the first block of every stage but the first has stride 2."""
    stages, in_planes = [], 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks)):
        layers = []
        for j in range(blocks):
            layers.append(block(in_planes, planes, 2 if stage > 0 and j == 0 else 1))
            in_planes = planes
        stages.append(nn.Sequential(*layers))
    return stages


class ResNet(nn.Module):
    """A ResNet of :class:`BasicBlock` stages (``num_blocks`` per stage)."""

    def __init__(self, num_blocks: tuple[int, ...], num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = make_stages(BasicBlock, num_blocks)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet18(num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)) -> ResNet:
    """ResNet-18 (11.17M parameters for 10 classes)."""
    return ResNet((2, 2, 2, 2), num_classes, input_shape)
