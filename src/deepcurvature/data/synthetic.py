"""A seeded synthetic classification data set labelled by a random teacher network.

Inputs are standard Gaussian images ``(C, H, W)``. A fixed random teacher (determined by
``data_seed``) average-pools each image to at most 4x4, applies a tanh layer of width 64 and a
linear layer to ``num_classes`` scores, and the label is the arg-max. The scores are centred and
scaled on a reference sample so that the classes are roughly balanced. Because the labels depend on
coarse image structure through a smooth function, both MLPs and CNNs can learn them. Training and
test samples are independent draws from the same distribution (different seed streams).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .image_dataset import ImageDataset
from .registry import register_dataset

__all__ = ["make_synthetic", "synthetic"]

_TEACHER, _TRAIN, _TEST, _NOISE = 0, 1, 2, 3


def _generator(seed: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def make_synthetic(
    n: int,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int | tuple[int, int] = 32,
    data_seed: int = 0,
    split: str = "train",
    label_noise: float = 0.0,
    teacher_width: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` labelled samples.

    Args:
        n: number of samples.
        num_classes: number of classes (>= 2).
        in_channels: channels ``C`` of the inputs.
        input_size: ``H`` or ``(H, W)``.
        data_seed: seed of the teacher and of the samples.
        split: "train" or "test" (independent sample streams).
        label_noise: fraction of labels replaced by uniformly random classes.
        teacher_width: hidden width of the teacher.

    Returns:
        Inputs float32 ``(n, C, H, W)`` and labels int64 ``(n,)``.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    if n < 1 or num_classes < 2 or in_channels < 1 or min(h, w) < 1:
        raise ValueError(
            f"synthetic data needs n >= 1, num_classes >= 2 and a positive shape; got n={n}, "
            f"num_classes={num_classes}, shape=({in_channels}, {h}, {w})"
        )
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    ph, pw = min(h, 4), min(w, 4)
    d = in_channels * ph * pw
    g = _generator(data_seed, _TEACHER)
    w1 = torch.randn(d, teacher_width, generator=g, dtype=torch.float64) / d**0.5
    w2 = torch.randn(teacher_width, num_classes, generator=g, dtype=torch.float64)

    def scores(x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x.to(torch.float64), (ph, pw))
        pooled = pooled * ((h * w) / (ph * pw)) ** 0.5  # unit variance again
        return torch.tanh(pooled.flatten(1) @ w1) @ w2

    # The pooled, rescaled input is standard Gaussian: draw the reference sample there.
    ref = torch.tanh(torch.randn(4096, d, generator=g, dtype=torch.float64) @ w1) @ w2
    centre, scale = ref.mean(0), ref.std(0)
    gs = _generator(data_seed, _TRAIN if split == "train" else _TEST)
    x = torch.randn(n, in_channels, h, w, generator=gs)
    y = ((scores(x) - centre) / scale).argmax(1)
    if label_noise > 0:
        gn = _generator(data_seed, _NOISE + (0 if split == "train" else 1))
        flip = torch.rand(n, generator=gn) < label_noise
        y = torch.where(flip, torch.randint(0, num_classes, (n,), generator=gn), y)
    return x.to(torch.float32), y.to(torch.int64)


@register_dataset("synthetic", aliases=("teacher", "gaussian"))
def synthetic(
    root: Path,
    *,
    train: bool = True,
    download: bool = False,
    augment: bool = False,
    n_train: int = 512,
    n_test: int = 256,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int | tuple[int, int] = 32,
    data_seed: int = 0,
    label_noise: float = 0.0,
) -> ImageDataset:
    """Gaussian images labelled by a seeded random teacher (512/256 of 3x32x32, 10 classes)."""
    n = n_train if train else n_test
    x, y = make_synthetic(
        n,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        data_seed=data_seed,
        split="train" if train else "test",
        label_noise=label_noise,
    )
    return ImageDataset(x, y, num_classes=num_classes, name="synthetic")
