"""The seeded mini-batch plan of :func:`~deepcurvature.analysis.loss_stats.loss_stats`.

Which raw batches are evaluated, which of them are mini-batches of the statistics and which count
towards the full-data values; inside a process group, the split of that plan over the ranks
(every rank draws the same plan from rank 0's seed and evaluates its share) and the evaluation
batches of the test data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data.dataloader import default_collate

from ..operators.distributed import (
    Ranks,
    all_reduce_sum,
)

# ------------------------------------------------------------------------------------------------
# the mini-batch plan


@dataclass
class _Plan:
    """What to evaluate: an iterable of raw batches and, per batch, two flags.

    In a process group, the batches this rank evaluates (see :func:`loss_stats`); ``slots`` gives
    each one's position among all mini-batches of all ranks, ``num_minibatches`` their number.
    """

    batches: Iterable[Any]
    minibatch: list[bool]  # counts in the mini-batch statistics
    full: list[bool]  # counts in the full-data values
    drawn: bool  # mini-batches drawn here (uniform, without replacement)
    slots: list[int] = field(default_factory=list)  # mini-batch position (-1: not one)
    num_minibatches: int = 0


def _slots(minibatch: list[bool]) -> list[int]:
    out, m = [], 0
    for flag in minibatch:
        out.append(m if flag else -1)
        m += flag
    return out


def _agree(
    ranks: Ranks | None, seed: int, n_list: int, device: torch.device
) -> tuple[int, list[int]]:
    """Rank 0's seed and every rank's number of listed batches (one all-reduce of integers)."""
    if ranks is None:
        return seed, [n_list]
    buf = torch.zeros(ranks.world_size + 1, dtype=torch.int64, device=device)
    if ranks.rank == 0:
        buf[0] = seed
    buf[1 + ranks.rank] = n_list
    values = all_reduce_sum(buf).tolist()
    return int(values[0]), [int(v) for v in values[1:]]


def _positive_int(name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _plan(
    data: Any,
    batch_size: int,
    num_batches: int | None,
    generator: torch.Generator,
    ranks: Ranks | None = None,
    listed: list[int] | None = None,
) -> _Plan:
    if isinstance(data, (list, tuple)):
        counts = listed or [len(data)]
        empty = [r for r, c in enumerate(counts) if c == 0]
        if empty and ranks is not None:
            raise ValueError(
                f"rank(s) {', '.join(map(str, empty))} have an empty list of batches: every rank "
                "needs at least one (inputs, targets) batch of its shard"
            )
        if not data:
            raise ValueError("data is an empty list: pass at least one (inputs, targets) batch")
        n = sum(counts)  # the batches of all ranks, in rank order
        offset = sum(counts[: ranks.rank]) if ranks is not None else 0
        if num_batches is not None and num_batches > n:
            raise ValueError(
                f"num_batches={num_batches} but data is a list of {n} batches; use at most {n} "
                "or pass a Dataset to draw mini-batches from it"
            )
        chosen = set(range(n))
        if num_batches is not None:
            chosen = set(torch.randperm(n, generator=generator)[:num_batches].tolist())
        slots = _slots([i in chosen for i in range(n)])[offset : offset + len(data)]
        mine = [offset + i in chosen for i in range(len(data))]
        return _Plan(list(data), mine, [True] * len(data), False, slots, len(chosen))

    collate: Callable[[list[Any]], Any] = default_collate
    dataset = data
    if isinstance(data, DataLoader):
        dataset, collate = data.dataset, data.collate_fn
    if isinstance(dataset, IterableDataset) or not isinstance(dataset, Dataset):
        kind = type(dataset).__name__
        raise TypeError(
            f"data must be a map-style Dataset, a DataLoader over one (it is re-batched) or a "
            f"list of (inputs, targets) batches; got {kind}. For an IterableDataset or a "
            "generator, collect the batches into a list first"
        )
    try:
        N = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"the data set {type(dataset).__name__} has no len()") from None
    if N == 0:
        raise ValueError("the data set is empty")
    if batch_size > N:
        raise ValueError(
            f"batch_size={batch_size} is larger than the data set ({N} samples); use a batch size "
            f"of at most {N}"
        )
    per_epoch = N // batch_size
    wanted = per_epoch if num_batches is None else num_batches
    chunks: list[list[int]] = []
    minibatch: list[bool] = []
    full: list[bool] = []
    perm = torch.randperm(N, generator=generator).tolist()
    for i in range(per_epoch):
        chunks.append(perm[i * batch_size : (i + 1) * batch_size])
        minibatch.append(i < wanted)
        full.append(True)
    rest = perm[per_epoch * batch_size :]
    if rest:
        chunks.append(rest)
        minibatch.append(False)
        full.append(True)
    extra = wanted - per_epoch
    while extra > 0:
        perm = torch.randperm(N, generator=generator).tolist()
        for i in range(min(extra, per_epoch)):
            chunks.append(perm[i * batch_size : (i + 1) * batch_size])
            minibatch.append(True)
            full.append(False)
        extra -= per_epoch
    slots, total = _slots(minibatch), sum(minibatch)
    if ranks is not None:  # chunk i is evaluated by rank i % world_size
        keep = range(ranks.rank, len(chunks), ranks.world_size)
        chunks = [chunks[i] for i in keep]
        minibatch, full, slots = ([x[i] for i in keep] for x in (minibatch, full, slots))
    loader = DataLoader(dataset, batch_sampler=chunks, collate_fn=collate)  # type: ignore[arg-type]
    return _Plan(loader, minibatch, full, True, slots, total)


def _eval_batches(data: Any, batch_size: int, ranks: Ranks | None = None) -> Iterable[Any]:
    """Batches of test data: a list or DataLoader as it is, a Dataset in order.

    In a process group a list or DataLoader is this rank's shard, and the batches of a Dataset
    are dealt to the ranks in turn.
    """
    if isinstance(data, (list, tuple, DataLoader)):
        return data
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        if ranks is not None:
            starts = range(ranks.rank * batch_size, len(data), ranks.world_size * batch_size)
            chunks = [list(range(i, min(i + batch_size, len(data)))) for i in starts]
            return DataLoader(data, batch_sampler=chunks)  # type: ignore[arg-type]
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    raise TypeError(
        f"test_data must be a Dataset, a DataLoader or a list of batches, got {type(data).__name__}"
    )


# ------------------------------------------------------------------------------------------------
# one batch: loss, gradient and curvature products
