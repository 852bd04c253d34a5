"""ResNet-18/34 for CIFAR-sized images (He, Zhang, Ren & Sun, 2016, with the CIFAR stem).

A 3x3 stem convolution with 64 channels and no max-pool (instead of the 7x7/stride-2 stem and
max-pool used for ImageNet), four stages of post-activation basic blocks with 64, 128, 256 and 512
channels and strides 1, 2, 2, 2, global average pooling and a linear head. Shortcuts are
identities, or 1x1 convolution + BatchNorm where the shape changes. ResNet-18 on CIFAR-10 has
11,173,962 parameters (the usual "11.2M").
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

__all__ = ["BasicBlock", "ResNet"]


class BasicBlock(nn.Module):
    """``relu(bn(conv3x3(relu(bn(conv3x3(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output ``(B, planes, H / stride, W / stride)``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with basic blocks and a CIFAR stem.

    Args:
        blocks: number of blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: number of outputs.
        in_channels: input channels.
    """

    def __init__(
        self,
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        c = 64
        stages = []
        for i, n in enumerate(blocks):
            planes = 64 * 2**i
            layer = []
            for j in range(n):
                layer.append(BasicBlock(c, planes, (1 if i == 0 else 2) if j == 0 else 1))
                c = planes
            stages.append(nn.Sequential(*layer))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        out = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model("ResNet18", aliases=("resnet-18",))
def resnet18(num_classes: int, in_channels: int, input_size: tuple[int, int]) -> ResNet:
    """ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), 11.2M parameters."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels)


@register_model("ResNet34", aliases=("resnet-34",))
def resnet34(num_classes: int, in_channels: int, input_size: tuple[int, int]) -> ResNet:
    """ResNet-34 with the CIFAR stem (3x3 conv, no max-pool), 21.3M parameters."""
    return ResNet((3, 4, 6, 3), num_classes, in_channels)
