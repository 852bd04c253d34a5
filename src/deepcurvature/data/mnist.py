"""MNIST and Fashion-MNIST from their idx files, read with numpy (no torchvision needed).

Expected layout (torchvision's), inside ``data_path``::

    MNIST/raw/train-images-idx3-ubyte  train-labels-idx1-ubyte
              t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte
    FashionMNIST/raw/  (the same four names)

Each file may also be gzipped (``.gz`` appended). The idx format is a 4-byte magic number (two
zero bytes, a type code, the number of dimensions), the dimensions as big-endian uint32, then the
values in row-major order.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from ..io.errors import read_failure, unreadable_file
from .download import download_with_torchvision
from .errors import DatasetNotFoundError
from .image_dataset import ImageDataset
from .registry import register_dataset

__all__ = [
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "read_idx",
    "read_mnist",
]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_FASHION_CLASSES = "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"

_SPECS = {
    "mnist": {
        "title": "MNIST",
        "folders": ("MNIST/raw", "MNIST", "mnist"),
        "classes": [str(d) for d in range(10)],
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    },
    "fashionmnist": {
        "title": "FashionMNIST",
        "folders": ("FashionMNIST/raw", "FashionMNIST", "fashion-mnist", "fashionmnist"),
        "classes": _FASHION_CLASSES.split(","),
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    },
}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (plain or gzipped) into a numpy array of its shape and native dtype.

    Raises:
        ValueError: not an idx file, or a truncated/oversized one.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise unreadable_file(path, "idx file", exc) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(
                f"{path} is not a valid gzip file ({read_failure(exc).reason}): it is truncated "
                "or corrupt; delete it and download the data set again"
            ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number {raw[:4]!r})")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated (incomplete header)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = math.prod(shape)
    if len(raw) != header + count * dtype.itemsize:
        raise ValueError(
            f"{path} holds {len(raw) - header} data bytes but its header announces shape "
            f"{shape} ({count * dtype.itemsize} bytes): the file is truncated or corrupt"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _find(root: Path, kind: str, train: bool) -> tuple[Path, Path] | None:
    for folder in (*(root / f for f in _SPECS[kind]["folders"]), root):
        found = []
        for name in _FILES[train]:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found.append(candidate)
                    break
        if len(found) == 2:
            return found[0], found[1]
    return None


def _not_found(root: Path, kind: str, train: bool) -> DatasetNotFoundError:
    spec = _SPECS[kind]
    files = " and ".join(f"{n}[.gz]" for n in _FILES[train])
    where = (root / spec["folders"][0]).resolve()
    return DatasetNotFoundError(
        f"{spec['title']} not found: expected {files} in {where}. Fetch them with "
        'download=True (command line: --download; needs pip install "deepcurvature[vision]"), '
        f"or download the four idx files from {spec['url']} into {where}, or point data_path "
        "(--data-path) at the folder that holds them."
    )


def read_mnist(
    root: str | Path, kind: str = "mnist", *, train: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST-format split under ``root``.

    Args:
        root: the data folder (holding ``MNIST/raw`` or ``FashionMNIST/raw``, or the files).
        kind: "mnist" or "fashionmnist".
        train: the 60,000 training images (True) or the 10,000 test images (False).

    Returns:
        Images uint8 ``(N, 1, 28, 28)`` and labels int64 ``(N,)``.

    Raises:
        DatasetNotFoundError: the files are not there (the message says how to get them).
        ValueError: the files are corrupt or do not match each other.
    """
    root = Path(root).expanduser()
    if kind not in _SPECS:
        raise ValueError(f"kind must be 'mnist' or 'fashionmnist', got {kind!r}")
    paths = _find(root, kind, train)
    if paths is None:
        raise _not_found(root, kind, train)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{paths[0]}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1:
        raise ValueError(f"{paths[1]}: expected a vector of labels, got shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{paths[0]} has {images.shape[0]} images but {paths[1]} has {labels.shape[0]} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{paths[1]}: labels must be in 0..9, got {labels.min()}..{labels.max()}")
    return images[:, None, :, :], labels.astype(np.int64)


def _mnist_dataset(
    kind: str, root: Path, train: bool, download: bool, normalize: bool | tuple
) -> ImageDataset:
    if download and _find(root, kind, train) is None:
        download_with_torchvision(kind, root, train=train)
    images, labels = read_mnist(root, kind, train=train)
    stats = (MNIST_MEAN, MNIST_STD) if kind == "mnist" else (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    if normalize is True:
        mean, std = stats
    elif normalize is False or normalize is None:
        mean = std = None
    else:
        mean, std = normalize
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels),
        num_classes=10,
        mean=mean,
        std=std,
        classes=_SPECS[kind]["classes"],
        name=_SPECS[kind]["title"],
    )


@register_dataset("MNIST")
def mnist(
    root: Path,
    *,
    train: bool = True,
    download: bool = False,
    augment: bool = False,
    normalize: bool | tuple = True,
) -> ImageDataset:
    """MNIST: 60,000 / 10,000 grey-scale 28x28 digits, normalised with (0.1307, 0.3081)."""
    return _mnist_dataset("mnist", root, train, download, normalize)


@register_dataset("FashionMNIST", aliases=("fashion-mnist", "fmnist", "fashion"))
def fashionmnist(
    root: Path,
    *,
    train: bool = True,
    download: bool = False,
    augment: bool = False,
    normalize: bool | tuple = True,
) -> ImageDataset:
    """Fashion-MNIST: 60,000 / 10,000 grey-scale 28x28 clothing images, 10 classes."""
    return _mnist_dataset("fashionmnist", root, train, download, normalize)
