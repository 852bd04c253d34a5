"""The data-set registry: build a data set from a (case-insensitive) name.

Names are matched after lower-casing and removing ``-``, ``_``, spaces and dots, so "CIFAR100",
"cifar-100" and "Cifar_100" are the same. A factory is called as
``factory(root, train=..., download=..., augment=..., **kwargs)`` with ``root`` the resolved data
folder (a ``Path``) and returns a ``torch.utils.data.Dataset``.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

__all__ = [
    "DATA_PATH_ENV",
    "get_dataset",
    "list_datasets",
    "normalize_dataset_name",
    "register_dataset",
    "resolve_data_path",
]

#: Environment variable giving the default data folder (otherwise ``./data``).
DATA_PATH_ENV = "DEEPCURVATURE_DATA"

DatasetFactory = Callable[..., Dataset]


@dataclass(frozen=True)
class _Entry:
    name: str
    factory: DatasetFactory
    aliases: tuple[str, ...]
    description: str


_REGISTRY: dict[str, _Entry] = {}
_ALIASES: dict[str, str] = {}


def normalize_dataset_name(name: str) -> str:
    """Lower-case ``name`` and drop ``-``, ``_``, spaces and dots: "CIFAR-100" -> "cifar100"."""
    if not isinstance(name, str):
        raise TypeError(f"a data set name must be a string, got {type(name).__name__}")
    return re.sub(r"[-_\s.]", "", name.strip().lower())


def resolve_data_path(data_path: str | os.PathLike | None = None) -> Path:
    """The data folder: ``data_path``, else ``$DEEPCURVATURE_DATA``, else ``./data``."""
    if data_path is None:
        data_path = os.environ.get(DATA_PATH_ENV) or "data"
    return Path(data_path).expanduser()


def register_dataset(
    name: str,
    *,
    aliases: tuple[str, ...] | list[str] = (),
    description: str = "",
    overwrite: bool = False,
) -> Callable[[DatasetFactory], DatasetFactory]:
    """Decorator registering ``factory(root, *, train, download, augment, **kwargs) -> Dataset``.

    Args:
        name: the name shown by :func:`list_datasets` (matched case-insensitively).
        aliases: other accepted spellings.
        description: one line for listings (default: the factory's first docstring line).
        overwrite: allow replacing an existing name (otherwise a ValueError).

    Returns:
        The decorator, which returns the factory unchanged.
    """
    keys = [normalize_dataset_name(name), *(normalize_dataset_name(a) for a in aliases)]

    def decorator(factory: DatasetFactory) -> DatasetFactory:
        if not overwrite:
            taken = [k for k in keys if k in _ALIASES]
            if taken:
                raise ValueError(
                    f"data set name(s) {taken} already registered (for {_ALIASES[taken[0]]!r}); "
                    "choose another name or pass overwrite=True"
                )
        doc = (inspect.getdoc(factory) or "").strip().splitlines()
        _REGISTRY[keys[0]] = _Entry(
            name, factory, tuple(aliases), description or (doc[0] if doc else "")
        )
        for k in keys:
            _ALIASES[k] = keys[0]
        return factory

    return decorator


def list_datasets() -> list[str]:
    """Names of the registered data sets (aliases not listed), sorted."""
    return sorted((e.name for e in _REGISTRY.values()), key=str.lower)


def dataset_description(name: str) -> str:
    """The one-line description of a registered data set."""
    return _lookup(name).description


def _lookup(name: str) -> _Entry:
    key = normalize_dataset_name(name)
    if key not in _ALIASES:
        raise ValueError(
            f"unknown data set {name!r}. Known data sets: {', '.join(list_datasets())}. Pass a "
            "torch Dataset or DataLoader to use your own data, or register a factory with "
            "@deepcurvature.register_dataset('NAME')."
        )
    return _REGISTRY[_ALIASES[key]]


def dataset_options(name: str) -> set[str] | None:
    """Keyword options a registered data set accepts (None: any, the factory takes ``**kwargs``)."""
    sig = inspect.signature(_lookup(name).factory)
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {
        p.name
        for p in sig.parameters.values()
        if p.kind == p.KEYWORD_ONLY and p.name not in ("train", "download", "augment")
    }


def canonical_dataset_name(name: str) -> str:
    """The registered spelling of ``name`` (e.g. "cifar-100" -> "CIFAR100")."""
    return _lookup(name).name


def get_dataset(
    name: str,
    data_path: str | os.PathLike | None = None,
    *,
    train: bool = True,
    download: bool = False,
    augment: bool = False,
    **kwargs: Any,
) -> Dataset:
    """Build the training or test split of a registered data set.

    Every item is ``(x, y)``: ``x`` float32 ``(C, H, W)``, ``y`` an int64 scalar.

    Args:
        name: a registered name (see :func:`list_datasets`), case-insensitive.
        data_path: folder holding the data files (default ``$DEEPCURVATURE_DATA`` or ``./data``);
            ignored by "digits" and "synthetic", which need no files.
        train: the training split (True) or the test split (False).
        download: fetch missing files into ``data_path`` (needs torchvision: the ``vision``
            extra).
        augment: apply the data set's standard augmentation (random crop and flip for CIFAR;
            the other built-in data sets have none, so it is ignored for them).
        **kwargs: options of the data set (e.g. ``n_train`` for "synthetic").

    Returns:
        The data set (an :class:`~deepcurvature.data.ImageDataset` for the built-in ones).

    Raises:
        ValueError: unknown name.
        FileNotFoundError: the files are missing (the message says where and how to get them).
    """
    entry = _lookup(name)
    accepted = dataset_options(name)
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise TypeError(
                f"data set {entry.name!r} got unexpected option(s) {unknown}; "
                f"it accepts: {sorted(accepted) or 'none'}"
            )
    root = resolve_data_path(data_path)
    return entry.factory(
        root, train=bool(train), download=bool(download), augment=bool(augment), **kwargs
    )
