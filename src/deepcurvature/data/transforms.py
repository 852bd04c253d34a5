"""Image transforms written with torch operations (torchvision is not needed).

Every transform takes a float tensor of one image ``(C, H, W)`` or of a batch ``(B, C, H, W)``
and returns a tensor of the same layout; random transforms draw one independent choice per image
from ``generator`` (or from torch's global generator), so they are deterministic given a seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Transform",
    "cifar_augmentation",
]


class Transform:
    """Base class: ``transform(x, generator=None)`` maps ``(C, H, W)`` or ``(B, C, H, W)``."""

    def apply_batch(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Transform a batch ``(B, C, H, W)``."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transform an image ``(C, H, W)`` or a batch ``(B, C, H, W)``."""
        if x.dim() == 3:
            return self.apply_batch(x.unsqueeze(0), generator).squeeze(0)
        if x.dim() != 4:
            raise ValueError(f"expected an image (C, H, W) or a batch (B, C, H, W), got {x.shape}")
        return self.apply_batch(x, generator)


class Compose(Transform):
    """Apply ``transforms`` in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def apply_batch(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Transform a batch ``(B, C, H, W)``."""
        for t in self.transforms:
            x = t.apply_batch(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Normalize(Transform):
    """Per-channel standardisation ``(x - mean[c]) / std[c]``.

    Args:
        mean: one value per channel (or one value for all channels).
        std: one positive value per channel (or one for all).
    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if self.mean.numel() != self.std.numel():
            raise ValueError(
                f"mean and std lengths differ: {self.mean.numel()} vs {self.std.numel()}"
            )
        if not bool((self.std > 0).all()):
            raise ValueError(f"std must be positive, got {self.std.tolist()}")

    def apply_batch(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Standardise a batch ``(B, C, H, W)``."""
        c = x.shape[1]
        if self.mean.numel() not in (1, c):
            raise ValueError(f"Normalize has {self.mean.numel()} channels, the images have {c}")
        mean = self.mean.to(x.device, x.dtype).reshape(1, -1, 1, 1)
        std = self.std.to(x.device, x.dtype).reshape(1, -1, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class RandomCrop(Transform):
    """Zero-pad by ``padding`` pixels on every side, then crop a random ``size`` window.

    Args:
        size: output ``H`` (square) or ``(H, W)``.
        padding: pixels of zeros added on each side before cropping.
    """

    def __init__(self, size: int | tuple[int, int], padding: int = 0) -> None:
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.padding = int(padding)
        if self.padding < 0 or min(self.size) < 1:
            raise ValueError(f"invalid RandomCrop(size={size}, padding={padding})")

    def apply_batch(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Crop each image of a batch ``(B, C, H, W)`` at its own random offset."""
        p = self.padding
        if p:
            x = F.pad(x, (p, p, p, p))
        b, _, h, w = x.shape
        th, tw = self.size
        if th > h or tw > w:
            raise ValueError(f"crop size {self.size} larger than the padded image {(h, w)}")
        oy = torch.randint(0, h - th + 1, (b,), generator=generator).to(x.device)
        ox = torch.randint(0, w - tw + 1, (b,), generator=generator).to(x.device)
        # All windows as a strided view (B, C, nY, nX, th, tw); pick one per image.
        windows = x.unfold(2, th, 1).unfold(3, tw, 1)
        return windows[torch.arange(b, device=x.device), :, oy, ox]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip(Transform):
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = float(p)

    def apply_batch(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Flip a random subset of a batch ``(B, C, H, W)``."""
        flip = torch.rand(x.shape[0], generator=generator).to(x.device) < self.p
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def cifar_augmentation(size: int | tuple[int, int] = 32, padding: int = 4) -> Compose:
    """The standard CIFAR augmentation: random crop with 4-pixel zero padding, horizontal flip.

    Applied to pixel values in [0, 1] before normalisation, so padding is black as in the usual
    torchvision pipeline.
    """
    return Compose([RandomCrop(size, padding), RandomHorizontalFlip(0.5)])
