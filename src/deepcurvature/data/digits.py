"""scikit-learn's bundled handwritten digits: the offline default data set.

1,797 grey-scale 8x8 images of the digits 0-9 (pixel values 0-16), shipped with scikit-learn, so
no download is needed. Images are scaled to [0, 1] and standardised with the mean and standard
deviation of the training pixels. The train/test split is fixed: 360 test images (20%) held out
stratified by class with ``split_seed=0``, leaving 1,437 training images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .image_dataset import ImageDataset
from .registry import register_dataset
from .splits import stratified_split

__all__ = ["DIGITS_TEST_SIZE", "digits", "load_digits_arrays"]

DIGITS_TEST_SIZE = 360


def load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits: images float32 ``(1797, 1, 8, 8)`` in [0, 1], labels int64 ``(1797,)``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    labels = torch.as_tensor(np.asarray(bunch.target, dtype=np.int64))
    return images, labels


@register_dataset("digits", aliases=("sklearn-digits", "sklearndigits"))
def digits(
    root: Path,
    *,
    train: bool = True,
    download: bool = False,
    augment: bool = False,
    test_size: int | float = DIGITS_TEST_SIZE,
    split_seed: int = 0,
    normalize: bool = True,
) -> ImageDataset:
    """scikit-learn digits: 1x8x8 images, 10 classes, 1,437 train / 360 test (offline)."""
    images, labels = load_digits_arrays()
    train_idx, test_idx = stratified_split(labels, test_size, seed=split_seed)
    mean = std = None
    if normalize:
        pixels = images[torch.as_tensor(train_idx)].to(torch.float64)
        mean, std = [float(pixels.mean())], [float(pixels.std())]
    idx = torch.as_tensor(train_idx if train else test_idx)
    return ImageDataset(
        images[idx],
        labels[idx],
        num_classes=10,
        mean=mean,
        std=std,
        classes=[str(d) for d in range(10)],
        name="digits",
    )
