"""CIFAR-10 and CIFAR-100 from the "python version" files, read without torchvision.

Expected layout (the one torchvision and the original archives use), inside ``data_path``::

    cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
    cifar-100-python/train, test, meta

Each batch is a pickled dict with ``data`` (a uint8 array ``(N, 3072)``, the red, green and blue
32x32 planes of each image in turn) and ``labels`` (CIFAR-10) or ``fine_labels`` /
``coarse_labels`` (CIFAR-100). The pickles are read with a restricted unpickler
(:func:`~deepcurvature.data.safe_pickle.safe_load_pickle`) that cannot run code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io.errors import read_failure
from .download import download_with_torchvision
from .errors import DatasetNotFoundError
from .image_dataset import ImageDataset
from .registry import register_dataset
from .safe_pickle import safe_load_pickle
from .transforms import cifar_augmentation

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "read_cifar"]

#: Per-channel mean and standard deviation of the CIFAR training images (pixels in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_SPECS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "title": "CIFAR-10",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    },
    "cifar100": {
        "title": "CIFAR-100",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    },
}


def _find_folder(root: Path, kind: str, train: bool) -> Path | None:
    spec = _SPECS[kind]
    files = spec["train" if train else "test"]
    for folder in (root / spec["folder"], root):
        if all((folder / f).is_file() for f in files):
            return folder
    return None


def _not_found(root: Path, kind: str, train: bool) -> DatasetNotFoundError:
    spec = _SPECS[kind]
    files = ", ".join(spec["train" if train else "test"])
    where = (root / spec["folder"]).resolve()
    return DatasetNotFoundError(
        f"{spec['title']} not found: expected the files {files} in {where}. "
        "Fetch them with download=True (command line: --download; needs "
        'pip install "deepcurvature[vision]"), or download the python version '
        f"{spec['url']} and extract it into {root.resolve()}, or point data_path "
        "(--data-path) at the folder that holds them."
    )


def _key(d: dict, name: str) -> Any:
    for k in (name, name.encode("latin1")):
        if k in d:
            return d[k]
    raise ValueError(f"missing key {name!r}")


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_load_pickle(path)
    if not isinstance(batch, dict):
        raise ValueError(
            f"{path} is not a CIFAR batch: it holds a {type(batch).__name__}; delete it and "
            "download the data set again"
        )
    try:
        data = np.asarray(_key(batch, "data"))
        labels = np.asarray(_key(batch, label_key), dtype=np.int64).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(
            f"{path} is not a CIFAR batch ({read_failure(exc).reason}); delete it and download "
            "the data set again"
        ) from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: 'data' must be a uint8 array of shape (N, 3072), got {data.dtype} "
            f"{data.shape}; the file is corrupt"
        )
    if labels.shape[0] != data.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _decode(names: Sequence[Any]) -> list[str]:
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def read_cifar(
    root: str | Path, kind: str = "cifar10", *, train: bool = True, label_type: str = "fine"
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Read a CIFAR split from the python-version files under ``root``.

    Args:
        root: the data folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` (or that
            folder itself).
        kind: "cifar10" or "cifar100".
        train: the training batches (True) or the test batch (False).
        label_type: for CIFAR-100, "fine" (100 classes) or "coarse" (20 super-classes).

    Returns:
        Images uint8 ``(N, 3, 32, 32)``, labels int64 ``(N,)`` and the class names (None when
        the meta file is absent).

    Raises:
        DatasetNotFoundError: the files are not there (the message says how to get them).
    """
    root = Path(root).expanduser()
    if kind not in _SPECS:
        raise ValueError(f"kind must be 'cifar10' or 'cifar100', got {kind!r}")
    if label_type not in ("fine", "coarse"):
        raise ValueError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
    folder = _find_folder(root, kind, train)
    if folder is None:
        raise _not_found(root, kind, train)
    spec = _SPECS[kind]
    label_key = "labels" if kind == "cifar10" else f"{label_type}_labels"
    parts = [_read_batch(folder / f, label_key) for f in spec["train" if train else "test"]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    names = None
    meta_path = folder / spec["meta"]
    if meta_path.is_file():
        meta = safe_load_pickle(meta_path)
        names_key = "label_names" if kind == "cifar10" else f"{label_type}_label_names"
        if isinstance(meta, dict):
            try:
                names = _decode(_key(meta, names_key))
            except (ValueError, TypeError):
                names = None
    return images, labels, names


def _normalisation(normalize: bool | tuple, default: tuple[tuple, tuple]) -> tuple:
    if normalize is True:
        return default
    if normalize is False or normalize is None:
        return None, None
    mean, std = normalize
    return tuple(mean), tuple(std)


def _cifar_dataset(
    kind: str,
    root: Path,
    train: bool,
    download: bool,
    augment: bool,
    normalize: bool | tuple,
    label_type: str = "fine",
) -> ImageDataset:
    if download and _find_folder(root, kind, train) is None:
        download_with_torchvision(kind, root, train=train)
    images, labels, names = read_cifar(root, kind, train=train, label_type=label_type)
    if kind == "cifar10":
        num_classes, stats = 10, (CIFAR10_MEAN, CIFAR10_STD)
    else:
        num_classes, stats = (100 if label_type == "fine" else 20), (CIFAR100_MEAN, CIFAR100_STD)
    mean, std = _normalisation(normalize, stats)
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels),
        num_classes=num_classes,
        mean=mean,
        std=std,
        augment=cifar_augmentation(32, 4) if augment else None,
        classes=names,
        name=_SPECS[kind]["title"].replace("-", ""),
    )


@register_dataset("CIFAR10", aliases=("cifar-10",))
def cifar10(
    root: Path,
    *,
    train: bool = True,
    download: bool = False,
    augment: bool = False,
    normalize: bool | tuple = True,
) -> ImageDataset:
    """CIFAR-10: 50,000 / 10,000 colour 32x32 images, 10 classes."""
    return _cifar_dataset("cifar10", root, train, download, augment, normalize)


@register_dataset("CIFAR100", aliases=("cifar-100",))
def cifar100(
    root: Path,
    *,
    train: bool = True,
    download: bool = False,
    augment: bool = False,
    normalize: bool | tuple = True,
    label_type: str = "fine",
) -> ImageDataset:
    """CIFAR-100: 50,000 / 10,000 colour 32x32 images, 100 classes (or 20 coarse ones)."""
    return _cifar_dataset("cifar100", root, train, download, augment, normalize, label_type)
