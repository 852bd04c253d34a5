"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", 2016).

WRN-``depth``-``k``: a 3x3 stem with 16 channels, three groups of ``(depth - 4) / 6``
pre-activated basic blocks with ``16k``, ``32k`` and ``64k`` channels and strides 1, 2, 2, then
BatchNorm -> ReLU -> global average pooling -> linear head. Convolutions have no bias; a 1x1
convolution shortcut is used where the shape changes. WRN-28-10 on CIFAR-10 has 36,479,194
parameters (the 36.5M of the paper, Table 1).
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

__all__ = ["WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """``shortcut(x) + conv3x3(relu(bn(dropout(conv3x3(relu(bn(x)))))))``."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output ``(B, c_out, H / stride, W / stride)``."""
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(self.dropout(out))))
        return out + self.shortcut(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` for CIFAR-sized images.

    Args:
        depth: ``6n + 4`` (28 in the paper's headline model).
        widen_factor: the width multiplier ``k``.
        num_classes: number of outputs.
        in_channels: input channels.
        dropout: dropout probability between the convolutions of each block.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 (e.g. 16, 28, 40), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"widen_factor must be a positive integer, got {widen_factor}")
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        c = 16
        groups = []
        for width, stride in zip(widths, (1, 2, 2), strict=True):
            blocks = []
            for j in range(n):
                blocks.append(WideBasicBlock(c, width, stride if j == 0 else 1, dropout))
                c = width
            groups.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = groups
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = self.pool(self.relu(self.bn(out)))
        return self.fc(torch.flatten(out, 1))


@register_model(
    "WideResNet28x10",
    aliases=("wrn28x10", "wrn2810", "wideresnet2810", "wrn28_10", "wideresnet28_10"),
)
def wideresnet28x10(
    num_classes: int, in_channels: int, input_size: tuple[int, int], dropout: float = 0.0
) -> WideResNet:
    """Wide ResNet WRN-28-10 (36.5M parameters on CIFAR-10)."""
    return WideResNet(28, 10, num_classes, in_channels, dropout)


@register_model("WideResNet", aliases=("wrn",))
def wideresnet(
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.0,
) -> WideResNet:
    """Wide ResNet of any depth 6n+4 and width factor (default WRN-28-10)."""
    return WideResNet(depth, widen_factor, num_classes, in_channels, dropout)
