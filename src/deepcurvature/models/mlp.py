"""Fully connected networks: the multi-layer perceptron and logistic regression."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .layers import activation as make_activation
from .registry import register_model

__all__ = ["MLP", "logistic", "mlp"]


class MLP(nn.Sequential):
    """Flatten the input, then ``Linear -> activation`` per hidden layer and a linear head.

    An ``nn.Sequential`` (of one child, ``net``) without a ``forward`` of its own, so that the
    curvature products take the layer-by-layer chain route (:mod:`deepcurvature.operators.chain`).

    Maps ``(B, *input_shape)`` to ``(B, num_classes)``; with ``hidden=()`` it is multinomial
    logistic regression.

    Args:
        in_features: number of input features (``C * H * W`` for images).
        num_classes: number of outputs.
        hidden: widths of the hidden layers.
        activation: name of the non-linearity ("relu", "tanh", "gelu", ...).
        bias: whether the linear layers have biases.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            if int(h) < 1:
                raise ValueError(f"hidden widths must be positive, got {tuple(hidden)}")
            layers += [nn.Linear(width, int(h), bias=bias), make_activation(activation)]
            width = int(h)
        layers.append(nn.Linear(width, num_classes, bias=bias))
        self.net = nn.Sequential(*layers)  # forward: logits (B, num_classes) of (B, ...)


@register_model("mlp", aliases=("perceptron", "fc"))
def mlp(
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
    hidden: Sequence[int] = (64, 64),
    activation: str = "relu",
    bias: bool = True,
) -> MLP:
    """Multi-layer perceptron on flattened inputs (default two hidden layers of 64)."""
    h, w = input_size
    return MLP(in_channels * h * w, num_classes, hidden=hidden, activation=activation, bias=bias)


@register_model("logistic", aliases=("logreg", "logisticregression", "linear"))
def logistic(
    num_classes: int, in_channels: int, input_size: tuple[int, int], bias: bool = True
) -> MLP:
    """Multinomial logistic regression: one linear layer on flattened inputs."""
    h, w = input_size
    return MLP(in_channels * h * w, num_classes, hidden=(), bias=bias)
