"""Training in a ``torch.distributed`` process group (``torchrun``): DDP, sampler, rank 0's role.

Inside an initialised process group :func:`~deepcurvature.training.train_network`

* wraps the model in ``DistributedDataParallel`` (gradients averaged over the ranks after every
  backward pass; gloo on the CPU, nccl on CUDA);
* reads the training data through a seeded ``DistributedSampler`` (reshuffled every epoch with
  ``set_epoch``, so a resumed run continues the same order when the number of processes is the
  same). ``batch_size`` stays the *global* batch: each rank takes ``batch_size / world_size``
  samples per step, so the learning rate and schedule mean what they mean in one process (the
  batch size must be divisible by the number of processes). The sampler pads the data set with
  a few repeated samples when its size is not a multiple of the number of processes (as DDP does);
* evaluates every rank on a contiguous shard of the test set (no padding) and sums the results
  over the ranks, so the test loss and accuracy are those of the whole test set; the training
  loss and accuracy of an epoch are the mean of the ranks' (equal-sized) shards;
* writes the run folder, checkpoints (the unwrapped model's ``state_dict``) and ``stats.json`` on
  rank 0 only, and returns on every rank once rank 0 has written them.

Batch norm in training mode uses each rank's own batch statistics (DDP without SyncBatchNorm);
the running statistics of rank 0 are broadcast to the others before every forward pass (DDP's
``broadcast_buffers``), so the replicas stay identical and the checkpoint holds rank 0's. Optimisers
that compute curvature from the batch through hooks (K-FAC, LanczosNewton, LanczosGGN) are refused:
each rank would precondition with its own shard's curvature and the replicas would drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from ..data.sharding import shard_loader
from ..operators.distributed import DistributedError, Ranks, all_reduce_sum, current_ranks
from .stats import evaluate

__all__ = [
    "check_optimizer_data_parallel",
    "data_parallel_loaders",
    "evaluate_sharded",
    "reduce_epoch",
    "set_epoch",
    "training_ranks",
    "wait_for_rank0",
    "wrap_model",
]


def training_ranks() -> Ranks | None:
    """The process group training runs in (``None``: one process, or a group of one)."""
    ranks = current_ranks()
    return ranks if ranks is not None and ranks.world_size > 1 else None


def data_parallel_loaders(
    train: DataLoader, test: DataLoader | None, ranks: Ranks, seed: int
) -> tuple[DataLoader, DataLoader | None]:
    """This rank's training loader (``DistributedSampler``) and contiguous test-set shard.

    Raises:
        ValueError: an iterable-style data set, or a batch size not divisible by the ranks.
    """
    if isinstance(train.dataset, IterableDataset):
        raise ValueError(
            "data-parallel training needs a map-style data set (with len() and indexing), not an "
            "iterable-style one: train in one process, or give a Dataset"
        )
    batch = int(train.batch_size or 1)
    if batch % ranks.world_size:
        lower = batch - batch % ranks.world_size
        raise ValueError(
            f"batch_size={batch} is the global batch and must be divisible by the "
            f"{ranks.world_size} processes: use e.g. batch_size={max(lower, ranks.world_size)} "
            f"or {lower + ranks.world_size}"
        )
    sampler = DistributedSampler(
        train.dataset,
        num_replicas=ranks.world_size,
        rank=ranks.rank,
        shuffle=True,
        seed=seed,
        drop_last=False,
    )
    loader = DataLoader(
        train.dataset,
        batch_size=batch // ranks.world_size,
        sampler=sampler,
        num_workers=train.num_workers,
        collate_fn=train.collate_fn,
        pin_memory=train.pin_memory,
        drop_last=train.drop_last,
        generator=train.generator,  # kept, so that checkpoints hold the same generator states
    )
    shard = shard_loader(test, ranks.rank, ranks.world_size) if test is not None else None
    return loader, shard


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a ``DistributedSampler`` for ``epoch`` (the same order on every rank)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def check_optimizer_data_parallel(opt: torch.optim.Optimizer, name: str) -> None:
    """Refuse optimisers whose batch curvature (hooks) DDP does not synchronise across ranks."""
    if hasattr(opt, "remove_hooks"):
        raise ValueError(
            f"optimizer {name!r} preconditions with the curvature of each batch, which "
            "DistributedDataParallel does not synchronise across processes (every rank would "
            "take a different step): train it in one process (without torchrun), or use a "
            "first-order optimizer (SGD, Adam, AdamW, SWATS, Gadam, MFAC) for data-parallel "
            "training"
        )


def wrap_model(net: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``DistributedDataParallel(net)`` on ``device`` (its parameters broadcast from rank 0)."""
    if device.type != "cuda":
        return DistributedDataParallel(net)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(net, device_ids=[index])


def _reduce(values: list[float], device: torch.device) -> list[float]:
    buf = torch.tensor(values, dtype=torch.float64, device=device)
    return all_reduce_sum(buf).tolist()


def reduce_epoch(
    ranks: Ranks, loss: float, accuracy: float | None, first: float, device: torch.device
) -> tuple[float, float | None, float]:
    """The mean over the ranks of an epoch's training loss, accuracy and first-batch loss.

    The ``DistributedSampler`` gives every rank the same number of samples, so the mean of the
    ranks' means is the mean over all of them.
    """
    acc = math.nan if accuracy is None else accuracy
    total = _reduce([loss, acc, first], device)
    w = ranks.world_size
    return total[0] / w, None if accuracy is None else total[1] / w, total[2] / w


def evaluate_sharded(device: torch.device) -> Callable[..., dict[str, float | None]]:
    """:func:`~deepcurvature.training.stats.evaluate` on each rank's shard, summed over ranks.

    A rank with an empty shard (a test set smaller than the number of processes) adds nothing.
    """

    def run(model: nn.Module, loader: Any, loss_fn: Callable, dev: Any = None) -> dict[str, Any]:
        res: dict[str, Any] = {"loss": 0.0, "accuracy": None, "top5_accuracy": None, "count": 0}
        if loader is not None and len(loader.dataset) > 0:
            res = evaluate(model, loader, loss_fn, dev)
        c = res["count"]
        acc, top5 = res["accuracy"], res["top5_accuracy"]
        parts = [res["loss"] * c, (acc or 0.0) * c, (top5 or 0.0) * c, c]
        parts += [float(acc is not None), float(top5 is not None)]
        s = _reduce(parts, device)
        n = s[3]
        if n == 0:
            raise ValueError("the evaluation loader is empty")
        return {
            "loss": s[0] / n,
            "accuracy": s[1] / n if s[4] > 0 else None,
            "top5_accuracy": s[2] / n if s[5] > 0 else None,
            "count": int(n),
        }

    return run


def wait_for_rank0() -> None:
    """Return once every rank got here (rank 0 has written its files by then)."""
    try:
        dist.barrier()
    except Exception as exc:
        raise DistributedError(
            f"rank {dist.get_rank()} finished training but another rank did not (see its "
            f"error): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
