"""Fetching data set files with torchvision (the optional ``vision`` extra)."""

from __future__ import annotations

from pathlib import Path

from .errors import MissingDependencyError

__all__ = ["download_with_torchvision"]

_CLASSES = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "mnist": "MNIST",
    "fashionmnist": "FashionMNIST",
}


def download_with_torchvision(kind: str, root: Path, *, train: bool) -> None:
    """Download a data set's files into ``root`` in torchvision's layout.

    ``kind`` is "cifar10", "cifar100", "mnist" or "fashionmnist"; the files are then parsed by
    this package's readers.

    Raises:
        MissingDependencyError: torchvision is not installed.
    """
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise MissingDependencyError(
            f"download=True needs torchvision to fetch {_CLASSES[kind]}: install it with "
            'pip install "deepcurvature[vision]", or download the files yourself and put them '
            f"in {Path(root).resolve()} (see the FileNotFoundError raised without download=True)"
        ) from None
    Path(root).mkdir(parents=True, exist_ok=True)
    getattr(tvd, _CLASSES[kind])(root=str(root), train=train, download=True)
