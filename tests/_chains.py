"""Small float64 layer chains (every supported layer kind) with data and a loss, for the tests of
the chain routes (Taylor-mode quadratic forms, chain products)."""

import torch
import torch.nn.functional as F
from torch import nn

from _helpers import seeded_float64 as seeded

DT = torch.float64


def batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def cnn_case():
    """Narrow first convolution (patches route), wide second one, in-place activations."""
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 3, stride=2, dilation=1, padding=2, bias=False),
        nn.BatchNorm2d(4, affine=False),
        nn.LeakyReLU(0.1, inplace=True),
        nn.ConstantPad2d(1, 3.0),
        nn.AvgPool2d(2),
        nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 2 * 2, 3)),
    ).to(DT)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(13, 2, 8, 8, generator=g, dtype=DT)
    return seeded(model), batches(x, torch.randint(0, 3, (13,), generator=g), 5), F.cross_entropy


def conv1d_case():
    """Smooth activations (second-order sources), a 1-D convolution, adaptive max pooling."""
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3, stride=2, dilation=2, padding=1),
        nn.BatchNorm1d(4),
        nn.GELU(),
        nn.AdaptiveMaxPool1d(3),
        nn.Conv1d(4, 9, 2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(9 * 2, 5),
        nn.BatchNorm1d(5),
        nn.Softplus(),
        nn.ReLU6(),
        nn.Linear(5, 2, bias=False),
    ).to(DT)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 3, 11, generator=g, dtype=DT)
    return seeded(model, 3), batches(x, torch.randn(9, 2, generator=g, dtype=DT), 4), nn.MSELoss()


def sequence_case():
    """Linear layers on (n, T, d) inputs, sigmoid and SiLU, a binary cross-entropy loss."""
    model = nn.Sequential(
        nn.Linear(4, 6), nn.SiLU(), nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 3)
    ).to(DT)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10, 7, 4, generator=g, dtype=DT)
    y = torch.rand(10, 7, 3, generator=g, dtype=DT)
    return seeded(model, 5), batches(x, y, 6), nn.BCEWithLogitsLoss()


def custom_loss_case():
    """A loss without a closed form (differentiated automatically), a 2-D max pool at the end."""
    model = nn.Sequential(
        nn.Conv2d(1, 3, 2),
        nn.Hardtanh(-0.5, 0.5),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    ).to(DT)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(8, 1, 5, 5, generator=g, dtype=DT)

    def loss(out, y):
        return ((out - y) ** 4).mean() + out.logsumexp(1).mean()

    return seeded(model, 7), batches(x, torch.randn(8, 2, generator=g, dtype=DT), 3), loss


def overlapping_pools_case():
    """Max pooling with overlapping windows (a position taken twice) after batch norm and
    smooth activations, then a second pool with ``ceil_mode``."""
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Dropout(0.2),
        nn.MaxPool2d(3, stride=1, padding=1),
        nn.Softplus(),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4),
    ).to(DT)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(7, 2, 5, 5, generator=g, dtype=DT)
    return seeded(model, 9), batches(x, torch.randint(0, 4, (7,), generator=g), 4), F.cross_entropy


def global_average_case():
    """Global average pooling (its pullback a broadcast view) after a smooth activation, on
    3-D and 1-D feature maps."""
    model = nn.Sequential(
        nn.Conv2d(2, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(2),
        nn.Conv1d(5, 4, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).to(DT)
    g = torch.Generator().manual_seed(10)
    x = torch.randn(7, 2, 4, 5, generator=g, dtype=DT)
    return seeded(model, 11), batches(x, torch.randint(0, 3, (7,), generator=g), 4), F.cross_entropy


CASES = {
    "global-average": global_average_case,
    "overlapping-pools": overlapping_pools_case,
    "cnn": cnn_case,
    "conv1d": conv1d_case,
    "sequence": sequence_case,
    "custom-loss": custom_loss_case,
}


class Residual(nn.Module):
    """A block with a skip connection: not a chain (its ``forward`` is its own)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x):
        return x + torch.tanh(self.a(x))
