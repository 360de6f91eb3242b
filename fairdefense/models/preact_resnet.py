"""PreAct-ResNet-18 for 32x32 inputs (He et al., "Identity Mappings in Deep Residual
Networks", ECCV 2016), as used by the CFA and FAAL code and by FRL's experiments.

CIFAR-style stem: one 3x3 convolution with 64 channels, no pooling; four stages of
two pre-activation basic blocks (64, 128, 256, 512 channels, stride 2 from the second
stage on); a final batch norm + ReLU, global average pooling and a linear layer.
Parameter names match the authors' code (``conv1``, ``layerK.J.bn1``...,
``shortcut.0``, ``bn``, ``linear``), so their ``state_dict`` files load with
``--init``. FRL's own code omits the final batch norm (``bn``); its checkpoints lack
those two tensors and do not load into this model.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from fairdefense.models.resnet import make_stages

__all__ = ["PreActBlock", "PreActResNet", "preact_resnet18"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the input (a 1x1 convolution of the first
    activation where the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """A pre-activation ResNet of :class:`PreActBlock` stages (``num_blocks`` per stage)."""

    def __init__(self, num_blocks: tuple[int, ...], num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
        self.layer1, self.layer2, self.layer3, self.layer4 = make_stages(PreActBlock, num_blocks)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def preact_resnet18(num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32)) -> PreActResNet:
    """PreAct-ResNet-18 (11.17M parameters for 10 classes)."""
    return PreActResNet((2, 2, 2, 2), num_classes, input_shape)
