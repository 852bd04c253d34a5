"""Exact shards of a data set for data-parallel runs: every sample on exactly one rank.

``torch.utils.data.DistributedSampler`` pads a data set whose size is not a multiple of the
number of ranks with repeated samples, which changes a curvature matrix (a mean over samples).
:func:`shard_indices` splits ``range(n)`` into contiguous, nearly equal parts without padding
(the first ``n mod world`` ranks hold one sample more), so the ranks' shards together are the
data set exactly once, in order.
"""

from __future__ import annotations

from torch.utils.data import DataLoader, IterableDataset, Subset

__all__ = ["shard_indices", "shard_loader"]


def shard_indices(n: int, rank: int, world_size: int) -> range:
    """The indices of rank ``rank``'s contiguous shard of ``range(n)`` (no padding).

    Raises:
        ValueError: ``rank`` not in ``[0, world_size)``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def shard_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """A loader over rank ``rank``'s shard of ``loader``'s data set, in order, same batching.

    ``loader`` must be unshuffled (evaluation data): the shard keeps its batch size, workers,
    collate function and ``pin_memory``; the last batch of a shard may be smaller.
    """
    if isinstance(loader.dataset, IterableDataset):
        raise ValueError(
            "an iterable-style data set cannot be split into shards here: give every rank its own "
            "shard of the data (a DataLoader over its part) to the library functions directly"
        )
    n = len(loader.dataset)  # type: ignore[arg-type]
    part = Subset(loader.dataset, list(shard_indices(n, rank, world_size)))
    return DataLoader(
        part,
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=False,
    )
