"""ResNet-18's layers, module for module and name for name as torchvision builds them, for loading weights.

Importing torchvision costs about 1.6 s on 2 cores (its package imports every model and torch._dynamo), a
third of a one-image `pneumocam predict`. Loading a trained network needs only the architecture, so the
Predictor builds it here; training from scratch and ImageNet weights still come from torchvision (its
initialisation and weights API). tests/test_network.py checks that both give the same state-dict keys and
shapes and the same outputs for the same weights.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCKS = ((64, 1), (128, 2), (256, 2), (512, 2))  # (width, stride of its first block), two blocks each


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock: two 3x3 convs with batch norm, and the shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def resnet18_trunk() -> list[nn.Module]:
    """bn1, relu, maxpool, layer1..layer4 of ResNet-18 (conv1, which takes 1 channel here, is the caller's)."""
    layers, inplanes = [], 64
    for planes, stride in BLOCKS:
        layers.append(nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
        inplanes = planes
    return [nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2, padding=1), *layers]
