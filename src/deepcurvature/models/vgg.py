"""VGG networks for CIFAR-sized images (Simonyan & Zisserman, 2014), with and without batch norm.

The convolutional stacks are the standard configurations A (VGG11), B (VGG13), D (VGG16) and
E (VGG19): 3x3 convolutions with padding 1 and five 2x2 max-pools. The classifier is the CIFAR head
used in the curvature literature (Garipov et al. / SWA): ``Dropout, Linear(512, 512), ReLU,
Dropout, Linear(512, 512), ReLU, Linear(512, num_classes)``. VGG16 with 100 classes has exactly
P = 15,291,300 parameters, the count of section 7.1 of the paper.
"""

from __future__ import annotations

import math

from torch import nn

from .layers import pool_or_identity
from .registry import register_model

__all__ = ["VGG", "VGG_CONFIGS"]

#: Output channels of the 3x3 convolutions; "M" is a 2x2 max-pool.
VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", *[256] * 4, "M", *[512] * 4, "M", *[512] * 4, "M"],
}


class VGG(nn.Sequential):
    """VGG-``depth`` for small images: conv stack, global average pool, 3-layer classifier.

    An ``nn.Sequential`` without a ``forward`` of its own (its children run in order), so that
    the curvature products take the layer-by-layer chain route
    (:mod:`deepcurvature.operators.chain`); the parameter names are those of a plain module.

    On 32x32 inputs the five pools reduce the map to 1x1 and the global average pool is the
    identity, so the network is the standard CIFAR VGG. Pools that would shrink a smaller input
    below 1x1 (8x8 digits, 28x28 MNIST) are replaced by identities.

    Args:
        depth: 11, 13, 16 or 19.
        num_classes: number of outputs.
        in_channels: input channels.
        input_size: ``(H, W)`` of the inputs.
        batch_norm: BatchNorm2d after every convolution.
        dropout: dropout probability in the classifier.
    """

    def __init__(
        self,
        depth: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: tuple[int, int] = (32, 32),
        batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}")
        layers: list[nn.Module] = []
        c_in, size = in_channels, tuple(input_size)
        for item in VGG_CONFIGS[depth]:
            if item == "M":
                pool, size = pool_or_identity(size)
                layers.append(pool)
                continue
            layers.append(nn.Conv2d(c_in, int(item), kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(int(item)))
            layers.append(nn.ReLU())
            c_in = int(item)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He initialisation over the fan-out, zero biases (as in the CIFAR VGG of SWA).
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
        # forward (nn.Sequential's): logits (B, num_classes) of images (B, C, H, W)


def _make_factory(depth: int, batch_norm: bool):
    def factory(
        num_classes: int, in_channels: int, input_size: tuple[int, int], dropout: float = 0.5
    ) -> VGG:
        return VGG(depth, num_classes, in_channels, input_size, batch_norm, dropout)

    bn = " with batch norm" if batch_norm else ""
    factory.__doc__ = f"VGG{depth}{bn} for CIFAR-sized images (SWA-style 512-512 classifier)."
    factory.__name__ = f"vgg{depth}{'bn' if batch_norm else ''}"
    return factory


for _depth in VGG_CONFIGS:
    register_model(f"VGG{_depth}", aliases=(f"vgg-{_depth}",))(_make_factory(_depth, False))
    register_model(f"VGG{_depth}BN", aliases=(f"vgg{_depth}_bn", f"vgg-{_depth}-bn"))(
        _make_factory(_depth, True)
    )


@register_model("VGG")
def vgg(
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    depth: int = 16,
    batch_norm: bool = False,
    dropout: float = 0.5,
) -> VGG:
    """VGG of any standard depth (11, 13, 16, 19): ``depth`` and ``batch_norm`` options."""
    return VGG(depth, num_classes, in_channels, input_size, batch_norm, dropout)
