"""Batches of a data set as the curvature operators see them.

A data set is any iterable of batches ``(inputs, targets)``, iterated once per product: a
``DataLoader`` or a list of tuples. ``inputs`` is a tensor (called as ``model(x)``), a dict of
tensors (``model(**x)``, e.g. ``{"input_ids": ..., "attention_mask": ...}``) or a tuple of tensors
(``model(*x)``); ``targets`` is a tensor whose leading dimension is the number of samples ``n_b`` of
the batch. Tensors are moved to the operator's device and floating tensors to its dtype.

With ``targets="labels"`` (any key), each batch is instead a dict holding the targets under that
key (HuggingFace style, ``{"input_ids": ..., "attention_mask": ..., "labels": ...}``): the targets
are ``batch["labels"]`` and the model is called with the remaining entries as keyword arguments
(``model(input_ids=..., attention_mask=...)``), so it never sees the labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Batch", "BatchSource", "prepare_batch", "split_batch"]


@dataclass
class Batch:
    """One batch on the operator's device.

    Attributes:
        inputs: a tensor, a dict of tensors or a tuple of tensors.
        targets: the targets, leading dimension ``n``.
        n: number of samples ``n_b`` (the leading dimension of ``targets``).
        index: position of the batch in the data set (0-based), used in error messages.
    """

    inputs: Any
    targets: torch.Tensor
    n: int
    index: int

    def call(self, fn: Any) -> Any:
        """Call ``fn`` with the inputs: ``fn(x)``, ``fn(**x)`` or ``fn(*x)``."""
        if isinstance(self.inputs, Mapping):
            return fn(**self.inputs)
        if isinstance(self.inputs, tuple):
            return fn(*self.inputs)
        return fn(self.inputs)


def _move(x: Any, device: torch.device, dtype: torch.dtype, where: str) -> Any:
    if isinstance(x, torch.Tensor):
        if x.is_floating_point():
            return x.to(device=device, dtype=dtype)
        return x.to(device=device)
    if isinstance(x, Mapping):
        return {k: _move(v, device, dtype, f"{where}[{k!r}]") for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(_move(v, device, dtype, f"{where}[{i}]") for i, v in enumerate(x))
    if x is None or isinstance(x, (bool, int, float, str)):
        return x  # plain keyword values (e.g. flags) pass through
    raise TypeError(
        f"{where} is a {type(x).__name__}; inputs must be tensors, dicts of tensors or tuples of "
        "tensors"
    )


def split_batch(raw: Any, index: int, targets_key: str | None = None) -> tuple[Any, Any]:
    """``(inputs, targets)`` of one raw batch: a pair, or a dict with ``targets_key`` inside.

    Raises:
        TypeError: the batch has neither form (the message names the fix).
    """
    if targets_key is not None:
        if not isinstance(raw, Mapping):
            raise TypeError(
                f"batch {index} is a {type(raw).__name__}, but targets={targets_key!r} expects "
                f"each batch to be a dict holding the targets under {targets_key!r}; for "
                "(inputs, targets) pairs leave targets=None"
            )
        if targets_key not in raw:
            raise KeyError(
                f"batch {index} has no key {targets_key!r} (targets={targets_key!r}); its keys "
                f"are {sorted(map(str, raw))}"
            )
        inputs = {k: v for k, v in raw.items() if k != targets_key}
        return inputs, raw[targets_key]
    if isinstance(raw, Mapping):
        raise TypeError(
            f"batch {index} is a dict with keys {sorted(map(str, raw))}; pass the key of the "
            "targets, e.g. dc.hessian(model, loss_fn, data, targets='labels') (the model is then "
            "called with the other keys), or give batches as pairs (inputs, targets)"
        )
    if not isinstance(raw, (tuple, list)) or len(raw) != 2:
        kind = type(raw).__name__ + (f" of length {len(raw)}" if hasattr(raw, "__len__") else "")
        raise TypeError(
            f"batch {index} is a {kind}; each batch must be a pair (inputs, targets), e.g. a "
            "DataLoader over a TensorDataset(x, y) or a list of (x, y) tuples"
        )
    return raw[0], raw[1]


def prepare_batch(
    raw: Any,
    index: int,
    device: torch.device,
    dtype: torch.dtype,
    targets_key: str | None = None,
) -> Batch:
    """Check one raw batch and move it to ``device`` / ``dtype``.

    A batch is a pair ``(inputs, targets)``, or (with ``targets_key``) a dict holding the targets
    under that key and the model's keyword inputs under the others.

    Raises:
        TypeError: the batch is not a pair of inputs and a target tensor (or not a dict with
            ``targets_key``).
        KeyError: a dict batch lacks ``targets_key``.
        ValueError: the targets have no leading (sample) dimension.
    """
    inputs, targets = split_batch(raw, index, targets_key)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(
            f"the targets of batch {index} are a {type(targets).__name__}; they must be a tensor "
            "(convert with torch.as_tensor)"
        )
    if targets.ndim == 0:
        raise ValueError(
            f"the targets of batch {index} are a scalar; they need a leading sample dimension "
            "(shape (n_b, ...))"
        )
    n = int(targets.shape[0])
    if n == 0:
        raise ValueError(f"batch {index} is empty (0 samples); remove empty batches")
    moved_inputs = _move(inputs, device, dtype, f"the inputs of batch {index}")
    moved_targets = _move(targets, device, dtype, f"the targets of batch {index}")
    return Batch(moved_inputs, moved_targets, n, index)


class BatchSource:
    """Iterates a data set once per product, yielding :class:`Batch` objects on the device.

    Args:
        data: any iterable of ``(inputs, targets)`` batches (re-iterable: a list or DataLoader).
        device: where batches go.
        dtype: dtype of floating tensors.
        cache: keep the prepared batches after the first complete pass (memory: the whole data
            set on ``device`` in ``dtype``).
        targets_key: the key of the targets in dict batches (``None``: pairs).
    """

    def __init__(
        self,
        data: Iterable[Any],
        device: torch.device,
        dtype: torch.dtype,
        cache: bool = False,
        targets_key: str | None = None,
    ) -> None:
        if targets_key is not None and not isinstance(targets_key, str):
            raise TypeError(
                f"targets must be None or the key (a str) of the targets in dict batches, got "
                f"{type(targets_key).__name__}"
            )
        if isinstance(data, (torch.Tensor, Mapping)) or not isinstance(data, Iterable):
            raise TypeError(
                f"data must be an iterable of (inputs, targets) batches (a DataLoader or a list of "
                f"tuples), got {type(data).__name__}; e.g. data=[(x, y)] for a single batch"
            )
        if isinstance(data, Iterator):
            raise TypeError(
                "data is a one-shot iterator (e.g. a generator), but every product iterates the "
                "data again; pass a list of batches or a DataLoader"
            )
        self.data = data
        self.device, self.dtype, self.cache = device, dtype, cache
        self.targets_key = targets_key
        self._cached: list[Batch] | None = None
        self.num_batches: int | None = None
        self.num_samples: int | None = None
        try:
            self.num_batches = len(data)  # type: ignore[arg-type]
        except TypeError:
            pass

    def __iter__(self) -> Iterator[Batch]:
        if self._cached is not None:
            yield from self._cached
            return
        kept: list[Batch] = []
        count, n_total = 0, 0
        for i, raw in enumerate(self.data):
            batch = prepare_batch(raw, i, self.device, self.dtype, self.targets_key)
            if self.cache:
                kept.append(batch)
            count += 1
            n_total += batch.n
            yield batch
        if count == 0:
            raise ValueError("the data set yielded no batches; pass at least one (inputs, targets)")
        self.num_batches, self.num_samples = count, n_total
        if self.cache:
            self._cached = kept

    def count_samples(self) -> int:
        """``N``, the number of samples of the data set.

        From the last pass, from ``len(loader.sampler)`` (i.e. ``len(dataset)``) of a DataLoader
        with the default batch sampler and ``drop_last=False``, or by iterating the targets once
        (without running the model).
        """
        if self.num_samples is not None:
            return self.num_samples
        loader = self.data
        if (
            isinstance(loader, torch.utils.data.DataLoader)
            and loader.batch_size is not None  # the default BatchSampler over loader.sampler
            and not loader.drop_last
            and not isinstance(loader.dataset, torch.utils.data.IterableDataset)
        ):
            try:
                return len(loader.sampler)  # len(dataset), or the size of a subset sampler
            except TypeError:
                pass
        n, count = 0, 0
        for i, raw in enumerate(self.data):
            _, targets = split_batch(raw, i, self.targets_key)
            if not isinstance(targets, torch.Tensor) or targets.ndim == 0:
                prepare_batch(raw, i, self.device, self.dtype, self.targets_key)  # the clear error
            n += int(targets.shape[0])
            count += 1
        if count == 0:
            raise ValueError("the data set yielded no batches; pass at least one (inputs, targets)")
        self.num_batches, self.num_samples = count, n
        return n
