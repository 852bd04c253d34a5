"""The All-Convolutional Net, model C (Springenberg et al., 2015).

Reference: Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for Simplicity: The All
Convolutional Net", ICLR workshop 2015.

Max-pooling is replaced by 3x3 convolutions with stride 2. Layers (Table 2 of the paper, model
All-CNN-C): input dropout 0.2; conv3x3 96, conv3x3 96, conv3x3 96 stride 2; dropout 0.5;
conv3x3 192, conv3x3 192, conv3x3 192 stride 2; dropout 0.5; conv3x3 192 (valid), conv1x1 192,
conv1x1 ``num_classes``; every convolution followed by ReLU; global average pooling. It has
1,369,738 parameters on CIFAR-10.
"""

from __future__ import annotations

from torch import nn

from .registry import register_model

__all__ = ["AllCNN"]


class AllCNN(nn.Sequential):
    """All-CNN-C.

    An ``nn.Sequential`` without a ``forward`` of its own (its children run in order), so that
    the curvature products take the layer-by-layer chain route
    (:mod:`deepcurvature.operators.chain`); the parameter names are those of a plain module.

    Args:
        num_classes: number of outputs.
        in_channels: input channels.
        input_size: ``(H, W)``; the "valid" 3x3 convolution after the second stride-2 layer
            uses padding 1 instead when the map there is smaller than 3x3 (inputs below 9x9).
        width: channels of the first three convolutions (96); the others have ``2 * width``.
        dropout: use the paper's dropout (0.2 on the input, 0.5 after each stride-2 layer).
        batch_norm: add BatchNorm2d after every convolution but the last (a common variant).
        final_relu: apply the paper's ReLU to the class scores before the average pool.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: tuple[int, int] = (32, 32),
        width: int = 96,
        dropout: bool = True,
        batch_norm: bool = False,
        final_relu: bool = True,
    ) -> None:
        super().__init__()
        w1, w2 = width, 2 * width
        h, w = input_size
        after_strides = (((h + 1) // 2 + 1) // 2, ((w + 1) // 2 + 1) // 2)
        valid_pad = 0 if min(after_strides) >= 3 else 1

        def conv(c_in: int, c_out: int, k: int, stride: int = 1, pad: int = 1) -> list[nn.Module]:
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad, bias=not batch_norm)
            ]
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            return [*layers, nn.ReLU()]

        def drop(p: float) -> list[nn.Module]:
            return [nn.Dropout(p)] if dropout else []

        head: list[nn.Module] = [nn.Conv2d(w2, num_classes, 1)]
        if final_relu:
            head.append(nn.ReLU())
        self.features = nn.Sequential(
            *drop(0.2),
            *conv(in_channels, w1, 3),
            *conv(w1, w1, 3),
            *conv(w1, w1, 3, stride=2),
            *drop(0.5),
            *conv(w1, w2, 3),
            *conv(w2, w2, 3),
            *conv(w2, w2, 3, stride=2),
            *drop(0.5),
            *conv(w2, w2, 3, pad=valid_pad),
            *conv(w2, w2, 1, pad=0),
            *head,
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        # forward (nn.Sequential's): logits (B, num_classes) of images (B, C, H, W)


@register_model("AllCNN", aliases=("allcnnc", "allconvnet", "allcnncifar10", "allcnncifar"))
def allcnn(
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    width: int = 96,
    dropout: bool = True,
    batch_norm: bool = False,
    final_relu: bool = True,
) -> AllCNN:
    """All-Convolutional Net C (strided convolutions instead of pooling), 1.37M parameters."""
    return AllCNN(num_classes, in_channels, input_size, width, dropout, batch_norm, final_relu)
