"""A small convolutional network with batch normalisation, for quick experiments."""

from __future__ import annotations

from torch import nn

from .layers import activation as make_activation
from .layers import pool_or_identity
from .registry import register_model

__all__ = ["SmallCNN", "cnn"]


class SmallCNN(nn.Sequential):
    """``blocks`` conv blocks ``Conv3x3 -> BatchNorm -> activation -> pool`` and a linear head.

    An ``nn.Sequential`` without a ``forward`` of its own (its children run in order), so that
    the curvature products take the layer-by-layer chain route
    (:mod:`deepcurvature.operators.chain`); the parameter names are those of a plain module.

    Block ``i`` has ``width * 2**i`` channels; every block but the last is followed by a 2x2
    max-pool (skipped once the map is 1x1), the last by global average pooling, so any input
    size works (8x8 digits as well as 32x32 CIFAR images). With the defaults (``width=32``,
    3 blocks) on 3x32x32 inputs and 10 classes it has 94,762 parameters.

    Args:
        in_channels: input channels.
        num_classes: number of outputs.
        input_size: ``(H, W)`` of the inputs (decides which pools are kept).
        width: channels of the first block.
        blocks: number of conv blocks.
        batch_norm: add BatchNorm2d after each convolution (convs then have no bias).
        activation: name of the non-linearity.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        input_size: tuple[int, int] = (32, 32),
        width: int = 32,
        blocks: int = 3,
        batch_norm: bool = True,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if width < 1 or blocks < 1:
            raise ValueError(f"width and blocks must be positive, got {width}, {blocks}")
        layers: list[nn.Module] = []
        c_in, size = in_channels, tuple(input_size)
        for i in range(blocks):
            c_out = width * 2**i
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(make_activation(activation))
            if i < blocks - 1:
                pool, size = pool_or_identity(size)
                layers.append(pool)
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)
        # forward (nn.Sequential's): logits (B, num_classes) of images (B, C, H, W)


@register_model("cnn", aliases=("smallcnn", "convnet"))
def cnn(
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    width: int = 32,
    blocks: int = 3,
    batch_norm: bool = True,
    activation: str = "relu",
) -> SmallCNN:
    """Small CNN with batch norm: 3 conv blocks + BN + ReLU + pooling, linear head (~95k params)."""
    return SmallCNN(in_channels, num_classes, input_size, width, blocks, batch_norm, activation)
