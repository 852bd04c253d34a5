"""Set-up shared by the paper's workflows: evaluation data and the network at a checkpoint."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io.results import stored_path

__all__ = [
    "build_network",
    "check_memory",
    "evaluation_data",
    "rank_shard",
    "recorded_path",
    "selected_size",
    "stored_path",
    "writes_files",
]


def recorded_path(value: str | None, result_file: str | os.PathLike) -> str | None:
    """A path read from a result file, resolved so that it works from any working folder.

    As stored when it exists (absolute, or relative to the working folder), else relative to
    the result file's folder (older files stored paths relative to where they were made).
    """
    if not value:
        return None
    p = Path(value)
    if p.is_absolute() or p.exists():
        return value
    beside = Path(result_file).parent / p
    return str(beside) if beside.exists() else value


def evaluation_data(
    dataset: Any,
    data_path: str | os.PathLike | None,
    *,
    batch_size: int,
    num_subsamples: int | None,
    subsample_seed: int | None,
    download: bool,
    use_test: bool = True,
) -> Any:
    """The data set without augmentation or shuffling, optionally a seeded training subsample.

    Returns:
        A :class:`~deepcurvature.data.DataBundle`.
    """
    from ..data import load_data

    return load_data(
        dataset,
        data_path,
        batch_size=batch_size,
        use_test=use_test,
        augment=False,
        shuffle_train=False,
        subsample=num_subsamples,
        seed=0 if subsample_seed is None else subsample_seed,
        download=download,
    )


def rank_shard(loader: Any) -> Any:
    """This rank's exact shard of an (unshuffled) evaluation loader in a process group.

    Outside a ``torch.distributed`` process group the loader itself. Inside one, the workflows
    read the *whole* data set on every rank and keep a contiguous shard of it (no padding, see
    :mod:`deepcurvature.data.sharding`), so that the ranks' shards together are the data set
    once and the result equals the single-process one.
    """
    from ..data.sharding import shard_loader
    from ..operators.distributed import current_ranks

    ranks = current_ranks()
    if ranks is None or loader is None or ranks.world_size == 1:
        return loader
    return shard_loader(loader, ranks.rank, ranks.world_size)


def writes_files() -> bool:
    """Whether this process writes results: outside a process group, or as its rank 0."""
    from ..operators.distributed import current_ranks

    ranks = current_ranks()
    return ranks is None or ranks.rank == 0


def build_network(
    model: str | nn.Module,
    bundle: Any,
    *,
    model_kwargs: dict[str, Any] | None,
    checkpoint_path: str | os.PathLike | None,
    device: torch.device,
) -> nn.Module:
    """The model (a registry name, or a copy of a given module) with the checkpoint's weights.

    A given ``nn.Module`` is copied, so loading a checkpoint never changes the caller's model.
    """
    from ..models import get_model
    from ..training.checkpoint import load_checkpoint

    if isinstance(model, nn.Module):
        net = copy.deepcopy(model)
    else:
        net = get_model(
            model,
            num_classes=bundle.num_classes,
            in_channels=bundle.in_channels,
            input_size=bundle.input_size,
            **(model_kwargs or {}),
        )
    if checkpoint_path is not None:
        load_checkpoint(checkpoint_path, net, map_location="cpu")
    return net.to(device)


def selected_size(net: nn.Module, params: Any, dtype: torch.dtype | None) -> tuple[int, int]:
    """``(P, bytes per entry)`` of the parameters ``params`` selects (checked, names listed)."""
    from ..operators.params import select_parameters

    chosen = set(select_parameters(net, params))
    P = sum(p.numel() for n, p in net.named_parameters() if n in chosen)
    itemsize = torch.empty((), dtype=dtype or next(net.parameters()).dtype).element_size()
    return P, itemsize


def device_memory(device: torch.device) -> int:
    """Bytes of memory of ``device``: the GPU's total, else the machine's physical memory."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 62


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def check_memory(
    need: int, what: str, fix: str, device: torch.device, fraction: float = 0.8
) -> None:
    """Refuse, before any data pass, a computation whose vectors cannot fit in memory.

    Raises:
        ValueError: ``need`` bytes exceed ``fraction`` of the device's memory; the message says
            ``what`` needs them and ``fix``.
    """
    have = device_memory(device)
    if need > fraction * have:
        raise ValueError(
            f"{what} needs {_bytes(need)}, but the {device.type} memory is {_bytes(have)}: {fix}"
        )
