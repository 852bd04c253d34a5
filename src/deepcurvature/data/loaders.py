"""``load_data``: data loaders and shape facts for a named data set or your own data.

The result, a :class:`DataBundle`, carries what a training or curvature run needs: the training
loader, the evaluation loader (the test set, or a held-out validation part of the training set),
the data sets, and ``num_classes``, ``in_channels`` and ``input_size`` to build a matching model
with :func:`deepcurvature.get_model`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .image_dataset import ImageDataset
from .registry import canonical_dataset_name, dataset_options, get_dataset
from .splits import random_subset, stratified_split

__all__ = ["DataBundle", "infer_data_info", "load_data"]

_VAL_STREAM, _SUBSAMPLE_STREAM = 1, 2


@dataclass
class DataBundle:
    """Loaders, data sets and shape facts of one data set.

    Attributes:
        train_loader: batches ``(inputs (B, C, H, W) float32, targets (B,) int64)`` of the
            training data (shuffled with a seeded generator unless ``shuffle_train=False``).
        test_loader: the test set, or the validation split when ``test_is_validation``; never
            shuffled, last batch kept. None when a single user data set was given.
        train_set: the training data set.
        test_set: the evaluation data set (or None).
        num_classes: number of classes.
        in_channels: input channels ``C``.
        input_size: ``(H, W)``.
        name: the data set's name.
        test_is_validation: whether ``test_set`` is held out of the training set.
        info: extra facts (sizes, normalisation, seed).
    """

    train_loader: DataLoader
    test_loader: DataLoader | None
    train_set: Dataset
    test_set: Dataset | None
    num_classes: int
    in_channels: int
    input_size: tuple[int, int]
    name: str
    test_is_validation: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def model_kwargs(self) -> dict[str, Any]:
        """``num_classes``, ``in_channels`` and ``input_size`` for :func:`get_model`."""
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "input_size": self.input_size,
        }


def _base_and_indices(ds: Dataset) -> tuple[Dataset, np.ndarray | None]:
    """Unwrap (nested) Subsets into the base data set and the selected indices."""
    indices = None
    while isinstance(ds, Subset):
        sel = np.asarray(ds.indices, dtype=np.int64)
        indices = sel if indices is None else sel[indices]
        ds = ds.dataset
    return ds, indices


def _targets_of(ds: Dataset) -> torch.Tensor | None:
    """The labels of ``ds`` from a ``targets``/``labels`` attribute (through Subsets), if any."""
    base, indices = _base_and_indices(ds)
    y = None
    for attr in ("targets", "labels"):
        if hasattr(base, attr):
            y = getattr(base, attr)
            break
    if y is None and isinstance(base, torch.utils.data.TensorDataset) and len(base.tensors) > 1:
        y = base.tensors[1]
    if y is None:
        return None
    try:
        y = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y))
    except (TypeError, ValueError):
        return None
    return y if indices is None else y[torch.as_tensor(indices)]


def _shape_facts(x: Any) -> tuple[int, tuple[int, int]]:
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"cannot infer the input shape from an input of type {type(x).__name__}: pass "
            "in_channels and input_size"
        )
    if x.dim() == 3:
        return int(x.shape[0]), (int(x.shape[1]), int(x.shape[2]))
    if x.dim() == 2:  # a single-channel (H, W) image
        return 1, (int(x.shape[0]), int(x.shape[1]))
    if x.dim() == 1:  # a feature vector: 1 x F, so get_model("mlp") gets F inputs
        return 1, (1, int(x.shape[0]))
    raise ValueError(f"cannot infer (C, H, W) from an input of shape {tuple(x.shape)}")


def _first_pair(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        "every item/batch must be an (inputs, targets) pair; got "
        f"{type(batch).__name__}: pass num_classes, in_channels and input_size explicitly"
    )


def infer_data_info(
    data: Dataset | DataLoader,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int | tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Infer ``num_classes``, ``in_channels`` and ``input_size`` of a data set or loader.

    Given values are kept. Otherwise the data set's attributes are used (``num_classes``,
    ``classes``, ``targets``/``labels``, ``in_channels``, ``input_size``); failing that, the
    first item or batch gives the input shape (``(C, H, W)``; an ``(H, W)`` image has one channel;
    a feature vector ``(F,)`` is treated as ``1 x 1 x F``) and one pass over the labels gives the
    number of classes (``max + 1``).

    Returns:
        ``{"num_classes": int, "in_channels": int, "input_size": (H, W)}``.
    """
    dataset = data.dataset if isinstance(data, DataLoader) else data
    base, _ = _base_and_indices(dataset)
    if in_channels is None and hasattr(base, "in_channels"):
        in_channels = int(base.in_channels)
    if input_size is None and hasattr(base, "input_size"):
        input_size = tuple(base.input_size)
    if in_channels is None or input_size is None:
        if isinstance(data, DataLoader):
            x, _ = _first_pair(next(iter(data)))
            c, size = _shape_facts(x[0])
        else:
            x, _ = _first_pair(dataset[0])
            c, size = _shape_facts(x)
        in_channels = c if in_channels is None else in_channels
        input_size = size if input_size is None else input_size
    if num_classes is None:
        if getattr(base, "num_classes", None) is not None:
            num_classes = int(base.num_classes)
        elif getattr(base, "classes", None) is not None:
            num_classes = len(base.classes)
        else:
            y = _targets_of(dataset)
            if y is None:
                batches: Iterable = (
                    data
                    if isinstance(data, DataLoader)
                    else (
                        dataset[i]
                        for i in range(len(dataset))  # type: ignore[arg-type]
                    )
                )
                ys = [torch.as_tensor(_first_pair(b)[1]).reshape(-1) for b in batches]
                y = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.int64)
            if y.is_floating_point() or y.numel() == 0:
                raise ValueError(
                    "cannot infer num_classes: the targets are not integer class labels; pass "
                    "num_classes explicitly"
                )
            num_classes = int(y.max()) + 1
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    return {
        "num_classes": int(num_classes),
        "in_channels": int(in_channels),
        "input_size": (int(input_size[0]), int(input_size[1])),
    }


def _seed_for(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed), stream]).generate_state(1)[0])


def _loader(
    ds: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int,
    pin_memory: bool,
    drop_last: bool = False,
) -> DataLoader:
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        drop_last=drop_last,
        pin_memory=pin_memory,
    )


def _check_positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _without_augmentation(ds: Dataset) -> Dataset | None:
    if isinstance(ds, ImageDataset):
        return ds.without_augmentation()
    if hasattr(ds, "without_augmentation"):
        return ds.without_augmentation()
    return None


def load_data(
    name: str | Dataset | DataLoader | tuple | list,
    data_path: str | os.PathLike | None = None,
    *,
    batch_size: int = 128,
    use_test: bool = True,
    val_fraction: float = 0.1,
    augment: bool = True,
    download: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    subsample: int | None = None,
    shuffle_train: bool = True,
    test_batch_size: int | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    exclude_validation: bool = False,
    **dataset_kwargs: Any,
) -> DataBundle:
    """Data loaders for a registered data set, or for your own data.

    Args:
        name: a registered name ("digits", "synthetic", "CIFAR10", "CIFAR100", "MNIST",
            "FashionMNIST", ... case-insensitive), a ``Dataset`` (training data), a
            ``DataLoader`` (used as the training loader as it is), or a ``(train, test)`` pair of
            Datasets/DataLoaders.
        data_path: folder of the data files (default ``$DEEPCURVATURE_DATA`` or ``./data``).
        batch_size: training batch size.
        use_test: evaluate on the test set (True) or on a validation split of the training set
            (False): ``val_fraction`` of it, stratified by class when labels are known, chosen
            with ``seed``, and never augmented.
        val_fraction: fraction of the training set held out when ``use_test=False``.
        augment: apply the data set's standard augmentation to the training data (CIFAR: random
            crop with padding 4 and horizontal flip; no effect for the others).
        download: fetch missing files (needs torchvision, the ``vision`` extra).
        num_workers: DataLoader worker processes.
        seed: seeds the validation split, the subsample and the training shuffle order (the
            loader's ``generator``), so a run is reproducible.
        subsample: keep a seeded random subset of this many training samples.
        shuffle_train: shuffle the training data each epoch.
        test_batch_size: evaluation batch size (default ``batch_size``).
        drop_last: drop the last incomplete training batch (evaluation never drops one).
        pin_memory: pin host memory in the loaders (for GPU training).
        num_classes: override/provide the number of classes (user data).
        in_channels: override/provide the input channels (user data).
        input_size: override/provide ``(H, W)`` (user data).
        exclude_validation: with ``use_test=True``, still hold the validation split that
            ``use_test=False`` would draw (``val_fraction``, ``seed``) out of the training data:
            the training part of a run that was trained with a validation split, evaluated on
            the test set.
        **dataset_kwargs: options of the named data set (e.g. ``n_train=256`` for "synthetic").

    Returns:
        A :class:`DataBundle`.
    """
    batch_size = _check_positive(batch_size, "batch_size")
    test_batch_size = _check_positive(test_batch_size or batch_size, "test_batch_size")
    if isinstance(num_workers, bool) or int(num_workers) < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")
    if subsample is not None:
        subsample = _check_positive(subsample, "subsample")
    opts = {"num_workers": int(num_workers), "pin_memory": bool(pin_memory)}

    checks: dict[str, Any] = {}
    given_test: Dataset | DataLoader | None = None
    if isinstance(name, (tuple, list)):
        if len(name) != 2:
            raise ValueError(f"pass data as a (train, test) pair, got {len(name)} items")
        name, given_test = name
    if isinstance(name, str):
        if given_test is not None:
            raise TypeError("a (train, test) pair must hold Datasets or DataLoaders, not names")
        display = canonical_dataset_name(name)
        # Shape options go to data sets that take them ("synthetic"); for the others they are
        # checked against the data.
        accepted = dataset_options(name)
        for key, value in (
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("input_size", input_size),
        ):
            if value is None:
                continue
            if accepted is None or key in accepted:
                dataset_kwargs[key] = value
            else:
                checks[key] = value
        num_classes = in_channels = input_size = None
        full_train = get_dataset(
            name, data_path, train=True, download=download, augment=augment, **dataset_kwargs
        )
        test_set: Dataset | None = None
        if use_test:
            test_set = get_dataset(
                name, data_path, train=False, download=download, augment=False, **dataset_kwargs
            )
    elif isinstance(name, (Dataset, DataLoader)):
        if dataset_kwargs:
            raise TypeError(
                f"data set options {sorted(dataset_kwargs)} only apply to named data sets"
            )
        display = type(name.dataset if isinstance(name, DataLoader) else name).__name__
        display = getattr(name, "name", None) or display
        full_train = name
        test_set = given_test  # may be a DataLoader too
    else:
        raise TypeError(
            f"data must be a data set name, a Dataset, a DataLoader or a (train, test) pair; "
            f"got {type(name).__name__}"
        )

    test_is_validation = False
    train_loader: DataLoader
    if isinstance(full_train, DataLoader):
        if subsample is not None or not use_test or exclude_validation:
            raise ValueError(
                "subsample and use_test=False need a Dataset to split, not a DataLoader: pass "
                "the loader's dataset instead"
            )
        train_loader, train_set = full_train, full_train.dataset
    else:
        train_idx = np.arange(len(full_train), dtype=np.int64)
        if (not use_test or exclude_validation) and given_test is None:
            if not 0.0 < float(val_fraction) < 1.0:
                raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
            labels = _targets_of(full_train)
            if labels is not None and not labels.is_floating_point():
                train_idx, val_idx = stratified_split(
                    labels, float(val_fraction), seed=_seed_for(seed, _VAL_STREAM)
                )
            else:
                perm = np.random.default_rng(_seed_for(seed, _VAL_STREAM)).permutation(
                    len(train_idx)
                )
                n_val = round(float(val_fraction) * len(train_idx))
                if not 0 < n_val < len(train_idx):
                    raise ValueError(
                        f"val_fraction={val_fraction} leaves an empty split of {len(train_idx)}"
                    )
                val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
            if not use_test:
                plain = _without_augmentation(full_train)
                if plain is None and isinstance(name, str):
                    plain = get_dataset(
                        name,
                        data_path,
                        train=True,
                        download=False,
                        augment=False,
                        **dataset_kwargs,
                    )
                test_set = Subset(plain if plain is not None else full_train, val_idx.tolist())
                test_is_validation = True
        if subsample is not None:
            if subsample > len(train_idx):
                raise ValueError(
                    f"subsample={subsample} is larger than the {len(train_idx)} training samples"
                )
            keep = random_subset(len(train_idx), subsample, seed=_seed_for(seed, _SUBSAMPLE_STREAM))
            train_idx = train_idx[keep]
        if len(train_idx) == len(full_train):
            train_set = full_train
        else:
            train_set = Subset(full_train, train_idx.tolist())
        train_loader = _loader(
            train_set, batch_size, shuffle=shuffle_train, seed=seed, drop_last=drop_last, **opts
        )

    test_loader: DataLoader | None = None
    if isinstance(test_set, DataLoader):
        test_loader, test_set = test_set, test_set.dataset
    elif test_set is not None:
        test_loader = _loader(test_set, test_batch_size, shuffle=False, seed=seed, **opts)

    facts = infer_data_info(
        train_loader if isinstance(full_train, DataLoader) else train_set,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
    )
    for key, value in checks.items():
        expected = tuple(value) if key == "input_size" and not isinstance(value, int) else value
        if key == "input_size" and isinstance(value, int):
            expected = (value, value)
        if facts[key] != expected:
            raise ValueError(
                f"{display} has {key}={facts[key]}, not {value}: drop the {key} argument"
            )
    base, _ = _base_and_indices(train_set)
    info: dict[str, Any] = {
        "train_size": len(train_set),  # type: ignore[arg-type]
        "test_size": None if test_set is None else len(test_set),  # type: ignore[arg-type]
        "seed": int(seed),
        "augment": bool(augment) if isinstance(name, str) else None,
        "subsample": subsample,
    }
    if isinstance(base, ImageDataset):
        info.update(mean=base.mean, std=base.std, classes=base.classes)
    return DataBundle(
        train_loader=train_loader,
        test_loader=test_loader,
        train_set=train_set,
        test_set=test_set,
        num_classes=facts["num_classes"],
        in_channels=facts["in_channels"],
        input_size=facts["input_size"],
        name=str(display),
        test_is_validation=test_is_validation,
        info=info,
    )
