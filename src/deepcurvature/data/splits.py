"""Seeded, reproducible index splits: stratified train/test splits and random subsets."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["random_subset", "stratified_split"]


def _as_count(size: int | float, total: int, what: str) -> int:
    """An int is a count; a float is a fraction of ``total`` in (0, 1)."""
    if isinstance(size, bool):
        raise TypeError(f"{what} must be a count or a fraction, got {size!r}")
    if isinstance(size, float):
        if not 0.0 < size < 1.0:
            raise ValueError(f"{what} as a fraction must be in (0, 1), got {size}")
        count = round(size * total)
    else:
        count = int(size)
    if not 0 < count < total:
        raise ValueError(
            f"{what}={size!r} holds out {count} of {total} samples: both parts of the split "
            "must be non-empty"
        )
    return count


def stratified_split(
    labels: np.ndarray | torch.Tensor, test_size: int | float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train and test parts with (almost) the class proportions of ``labels``.

    Each class ``c`` with ``n_c`` samples gets ``floor(n_c * t / N)`` test samples, the remaining
    ones going to the classes with the largest fractional parts, so exactly ``t`` samples are held
    out; which samples of a class are held out is a seeded random choice.

    Args:
        labels: ``(N,)`` integer labels.
        test_size: number of test samples, or a fraction in (0, 1).
        seed: seed of the random choice.

    Returns:
        ``(train_indices, test_indices)``, each sorted, int64, disjoint, covering ``range(N)``.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    n = y.shape[0]
    t = _as_count(test_size, n, "test_size")
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    exact = counts * (t / n)
    quota = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: t - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    test = []
    for k in range(classes.shape[0]):
        members = np.flatnonzero(inverse == k)
        test.append(rng.permutation(members)[: quota[k]])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask).astype(np.int64), test_idx


def random_subset(total: int, size: int, seed: int = 0) -> np.ndarray:
    """``size`` distinct indices drawn uniformly from ``range(total)`` with ``seed``, sorted."""
    if not 0 < size <= total:
        raise ValueError(f"cannot take a subset of {size} samples from {total}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=size, replace=False)).astype(np.int64)
