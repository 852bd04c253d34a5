"""An in-memory image classification data set with batched augmentation and normalisation."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import Normalize, Transform

__all__ = ["ImageDataset"]


class ImageDataset(Dataset):
    """Images held as one tensor ``(N, C, H, W)`` with integer labels ``(N,)``.

    An item is ``(x, y)`` with ``x`` float32 ``(C, H, W)`` and ``y`` an int64 scalar: the stored
    pixels are scaled to [0, 1] (``uint8`` images are divided by 255, float images are used as
    they are), augmented (when ``augment`` is set), then standardised with ``mean``/``std``.
    A DataLoader fetches a whole batch at once through ``__getitems__``, so augmentation and
    normalisation run as batched tensor operations.

    Args:
        images: ``(N, C, H, W)`` uint8 or float tensor (or numpy array).
        targets: ``(N,)`` integer labels in ``[0, num_classes)``.
        num_classes: number of classes (default: ``max(targets) + 1``).
        mean: per-channel mean subtracted after scaling (None: no normalisation).
        std: per-channel standard deviation divided by after subtracting ``mean``.
        augment: a random :class:`~deepcurvature.data.transforms.Transform` applied before
            normalisation (None: no augmentation).
        classes: class names, if known.
        name: the data set's name.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        targets: torch.Tensor | np.ndarray | Sequence[int],
        *,
        num_classes: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: Transform | None = None,
        classes: Sequence[str] | None = None,
        name: str = "",
    ) -> None:
        images = torch.as_tensor(images)
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.int64).reshape(-1)
        if images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if images.shape[0] != targets.shape[0]:
            raise ValueError(
                f"{images.shape[0]} images but {targets.shape[0]} labels: the files do not match"
            )
        if images.dtype != torch.uint8 and not images.is_floating_point():
            raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
        if targets.numel() and int(targets.min()) < 0:
            raise ValueError("labels must be non-negative integers")
        top = int(targets.max()) + 1 if targets.numel() else 0
        if num_classes is None:
            num_classes = top
        if top > num_classes:
            raise ValueError(f"label {top - 1} out of range for {num_classes} classes")
        self.images = images
        self.targets = targets
        self.num_classes = int(num_classes)
        self.classes = list(classes) if classes is not None else None
        self.name = name
        self.augment = augment
        self.normalize = Normalize(mean, std) if mean is not None and std is not None else None
        self.mean = None if mean is None else [float(m) for m in np.ravel(mean)]
        self.std = None if std is None else [float(s) for s in np.ravel(std)]

    @property
    def in_channels(self) -> int:
        """Channels ``C`` of the images."""
        return int(self.images.shape[1])

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the images."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def get_batch(
        self, indices: Sequence[int] | torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``(B, C, H, W)`` float32 and targets ``(B,)`` int64 of the items ``indices``.

        Random augmentation draws from ``generator`` (or torch's global generator).
        """
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        x = self.images[idx]
        x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)
        if self.augment is not None:
            x = self.augment(x, generator)
        if self.normalize is not None:
            x = self.normalize(x)
        return x, self.targets[idx]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.get_batch(list(indices))
        return list(zip(x.unbind(0), y.unbind(0), strict=True))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, torch.Tensor):
            index = int(index)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a data set of {n} items")
        x, y = self.get_batch([index % n])
        return x[0], y[0]

    def with_augmentation(self, augment: Transform | None) -> ImageDataset:
        """A copy sharing the stored images, with augmentation ``augment`` (None: none)."""
        out = copy.copy(self)
        out.augment = augment
        return out

    def without_augmentation(self) -> ImageDataset:
        """A copy sharing the stored images, without augmentation (for evaluation)."""
        return self.with_augmentation(None)

    def info(self) -> dict[str, Any]:
        """Shape and normalisation facts: name, size, num_classes, in_channels, input_size..."""
        return {
            "name": self.name,
            "size": len(self),
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "input_size": list(self.input_size),
            "mean": self.mean,
            "std": self.std,
            "augment": repr(self.augment) if self.augment is not None else None,
        }

    def __repr__(self) -> str:
        c, (h, w) = self.in_channels, self.input_size
        aug = f", augment={self.augment!r}" if self.augment is not None else ""
        return (
            f"ImageDataset({self.name or 'unnamed'}: {len(self)} images {c}x{h}x{w}, "
            f"{self.num_classes} classes{aug})"
        )
