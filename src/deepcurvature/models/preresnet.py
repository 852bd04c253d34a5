"""Pre-activation residual networks for CIFAR (He et al., 2016).

Reference: He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016.

A 3x3 stem convolution with 16 channels, three stages of residual blocks with 16, 32 and 64
(times the block expansion) channels and strides 1, 2, 2, then BatchNorm -> ReLU -> global
average pooling -> linear head. Blocks are pre-activated (BN -> ReLU -> conv). Depth ``6n + 2``
uses ``n`` basic blocks per stage (PreResNet8/56/110), depth ``9n + 2`` with bottleneck blocks
uses ``n`` bottleneck blocks per stage (PreResNet164). Shortcuts are identities, or a 1x1
convolution where the shape changes.

Parameter counts on CIFAR-10 (10 classes, 3 input channels): PreResNet110 1,730,522 (the 1.7M of
He et al., 2016, Table 3), PreResNet164 1,703,258, PreResNet56 855,578, PreResNet8 77,850.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import register_model

__all__ = ["PreActBasicBlock", "PreActBottleneck", "PreResNet"]


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBasicBlock(nn.Module):
    """``x + conv3x3(relu(bn(conv3x3(relu(bn(x))))))``; a 1x1 conv shortcut if shapes differ."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = _conv3x3(c_in, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.shortcut = _shortcut(c_in, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output ``(B, planes, H / stride, W / stride)``."""
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + self.shortcut(x)


class PreActBottleneck(nn.Module):
    """Pre-activated 1x1 -> 3x3 -> 1x1 bottleneck with expansion 4."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, planes, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu3 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.shortcut = _shortcut(c_in, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output ``(B, 4 * planes, H / stride, W / stride)``."""
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        out = self.conv3(self.relu3(self.bn3(out)))
        return out + self.shortcut(x)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)


class PreResNet(nn.Module):
    """Pre-activation ResNet of depth ``depth`` for CIFAR-sized images.

    Args:
        depth: ``6n + 2`` (basic blocks) or ``9n + 2`` (bottleneck blocks).
        num_classes: number of outputs.
        in_channels: input channels.
        block: "basic" or "bottleneck"; by default bottleneck for depth >= 164, else basic.
        base_width: channels of the stem and first stage (16 in the paper).
    """

    def __init__(
        self,
        depth: int = 110,
        num_classes: int = 10,
        in_channels: int = 3,
        block: str | None = None,
        base_width: int = 16,
    ) -> None:
        super().__init__()
        if block is None:
            block = "bottleneck" if depth >= 164 else "basic"
        if block == "basic":
            block_cls: type[nn.Module] = PreActBasicBlock
            per_block = 6
        elif block == "bottleneck":
            block_cls, per_block = PreActBottleneck, 9
        else:
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if depth < per_block + 2 or (depth - 2) % per_block:
            raise ValueError(
                f"PreResNet depth {depth} does not fit {block} blocks: use depth = {per_block}n"
                f" + 2 (e.g. {per_block + 2}, {per_block * 6 + 2}, {per_block * 12 + 2})"
            )
        n = (depth - 2) // per_block
        self.depth, self.block = depth, block
        self.conv1 = _conv3x3(in_channels, base_width)
        c = base_width
        stages = []
        for i, stride in enumerate((1, 2, 2)):
            planes = base_width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block_cls(c, planes, stride if j == 0 else 1))
                c = planes * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = self.pool(self.relu(self.bn(out)))
        return self.fc(torch.flatten(out, 1))


def _make_factory(depth: int):
    def factory(
        num_classes: int, in_channels: int, input_size: tuple[int, int], block: str | None = None
    ) -> PreResNet:
        return PreResNet(depth, num_classes, in_channels, block=block)

    kind = "bottleneck" if depth >= 164 else "basic"
    factory.__doc__ = f"Pre-activation ResNet-{depth} for CIFAR ({kind} blocks)."
    factory.__name__ = f"preresnet{depth}"
    return factory


for _depth in (8, 20, 56, 110, 164):
    register_model(f"PreResNet{_depth}", aliases=(f"preactresnet{_depth}",))(_make_factory(_depth))


@register_model("PreResNet", aliases=("preactresnet",))
def preresnet(
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    depth: int = 110,
    block: str | None = None,
    base_width: int = 16,
) -> PreResNet:
    """Pre-activation ResNet of any depth 6n+2 (basic) or 9n+2 (bottleneck); default 110."""
    return PreResNet(depth, num_classes, in_channels, block=block, base_width=base_width)
