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
    "check_recorded_names",
    "checkpoint_options",
    "describe_taken",
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
    val_fraction: float | None = None,
    data_kwargs: dict[str, Any] | None = None,
    within: int | None = None,
    holdout: float | None = None,
) -> Any:
    """The data set without augmentation or shuffling, optionally a seeded training subsample.

    With ``holdout`` (the ``val_fraction`` of a run trained with a validation split) the
    training data leaves out that run's validation split (drawn with ``subsample_seed``, as in
    training), also when evaluating on the test set. With ``within`` (the subsample a
    checkpoint's run was trained on, larger than ``num_subsamples``) the ``num_subsamples``
    samples are a seeded subset of those ``within`` training samples, so that the analysis
    only sees data the run was trained on.

    Returns:
        A :class:`~deepcurvature.data.DataBundle`.
    """
    import dataclasses

    import numpy as np
    from torch.utils.data import DataLoader, Subset

    from ..data import load_data
    from ..data.splits import random_subset

    nested = within is not None and num_subsamples is not None and num_subsamples < within
    seed = 0 if subsample_seed is None else subsample_seed
    bundle = load_data(
        dataset,
        data_path,
        batch_size=batch_size,
        use_test=use_test,
        **({} if val_fraction is None else {"val_fraction": val_fraction}),
        **({} if holdout is None or not use_test else {"val_fraction": holdout}),
        exclude_validation=holdout is not None and use_test,
        augment=False,
        shuffle_train=False,
        subsample=within if nested else num_subsamples,
        seed=seed,
        download=download,
        **(data_kwargs or {}),
    )
    if not nested:
        return bundle
    stream = int(np.random.SeedSequence([int(seed), 3]).generate_state(1)[0])
    keep = random_subset(len(bundle.train_set), int(num_subsamples), seed=stream)
    subset = Subset(bundle.train_set, [int(i) for i in keep])
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False)
    return dataclasses.replace(bundle, train_set=subset, train_loader=loader)


#: The options of the analysis workflows that a checkpoint's config records: workflow argument
#: -> config key. ``"hard"`` ones define the data or the model (a conflicting value is refused).
_RECORDED = {
    "model_kwargs": ("model_kwargs", True),
    "num_subsamples": ("subsample", True),
    "subsample_seed": ("subsample_seed", True),
    "data_kwargs": ("data_kwargs", True),
    "batch_size": ("batch_size", False),
    "val_fraction": ("val_fraction", True),  # given only when evaluating on a validation split
}


def _registered(name: str, kind: str) -> str | None:
    """The registry key of a data-set (``kind="dataset"``) or model name, ``None`` if unknown."""
    if kind == "dataset":
        from ..data.registry import _ALIASES
        from ..data.registry import normalize_dataset_name as normalize
    else:
        from ..models.registry import _ALIASES
        from ..models.registry import normalize_model_name as normalize
    return _ALIASES.get(normalize(name))


def check_recorded_names(
    checkpoint_path: str | os.PathLike | None,
    cfg: dict[str, Any] | None,
    *,
    dataset: Any = None,
    model: Any = None,
    cli: bool = False,
) -> None:
    """Refuse a data-set or model name that is not the one a checkpoint's run recorded.

    Only names are compared (a Dataset, DataLoader or ``nn.Module`` is the caller's choice), and
    only a recorded name of the registries (a run on a custom data set records its class name).

    Raises:
        ValueError: one line naming both values and the fix (``cli``: worded with the
            ``--dataset``/``--model`` options).
    """
    if checkpoint_path is None or not cfg:
        return
    for arg, value, what in (("dataset", dataset, "data set"), ("model", model, "model")):
        recorded = cfg.get(arg)
        if not (isinstance(value, str) and isinstance(recorded, str)):
            continue
        key = _registered(recorded, arg)
        if key is None or _registered(value, arg) == key:
            continue
        if cli:
            raise ValueError(
                f"--{arg} {value} conflicts with the {what} {recorded} recorded in "
                f"{checkpoint_path} (the {what} its run was trained with): leave --{arg} out "
                f"or pass --{arg} {recorded}, or analyse a checkpoint of {value}"
            )
        raise ValueError(
            f"{arg}={value!r} conflicts with the {what} {recorded!r} recorded in "
            f"{checkpoint_path} (the {what} its run was trained with): pass {arg}={recorded!r}, "
            f"or analyse a checkpoint of {value!r}"
        )


def checkpoint_options(
    checkpoint_path: str | os.PathLike | None,
    given: dict[str, Any],
    *,
    model: Any = None,
    dataset: Any = None,
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """The data and model options of a workflow, filled in from a checkpoint's recorded config.

    Args:
        checkpoint_path: the checkpoint (``None``: the given values are returned unchanged).
        given: the workflow's arguments (``num_subsamples``, ``subsample_seed``,
            ``model_kwargs``, ``data_kwargs``, ``batch_size``); ``None`` means not given.
        model: the model argument; ``model_kwargs`` is only taken over for the checkpoint's
            model name (not for an ``nn.Module`` or another name).
        dataset: the data-set argument; a name other than the recorded one is refused (as is
            a model name other than the recorded one, see :func:`check_recorded_names`).

    A ``val_fraction`` key in ``given`` (evaluating on a validation split) takes the run's
    recorded split: its ``val_fraction`` and, for the split, its ``subsample_seed``. Without
    one, the training data of a run trained with a validation split still leaves that split
    out: ``values["holdout"]`` is then the run's ``val_fraction`` (and its ``subsample_seed``
    is taken), for :func:`evaluation_data`.

    Returns:
        ``(values, from_checkpoint, note)``: the options to use, the ones taken from the
        checkpoint, and a note for a checkpoint that records no data options (``None`` else).
        A ``num_subsamples`` smaller than the run's subsample is allowed: ``values["within"]``
        is then the run's subsample, for :func:`evaluation_data` to draw from.

    Raises:
        ValueError: one line, when a given value conflicts with the recorded one of an option
            that defines the data or the model (the data it was trained on would change): a
            ``num_subsamples`` larger than the run's subsample, another ``subsample_seed``,
            other ``model_kwargs``, ``data_kwargs`` or ``val_fraction``, or another data-set or
            model name.
    """
    values = dict(given)
    if checkpoint_path is None:
        return values, {}, None
    from ..training.checkpoint import read_checkpoint

    cfg = read_checkpoint(checkpoint_path, map_location="cpu").get("config") or {}
    check_recorded_names(checkpoint_path, cfg, dataset=dataset, model=model)
    split = "val_fraction" in values and cfg.get("use_test", True) is False
    taken: dict[str, Any] = {}
    holdout = (
        "val_fraction" not in values
        and "num_subsamples" in values  # data options apply (a data set given by name)
        and cfg.get("use_test", True) is False
        and cfg.get("val_fraction") is not None
    )
    if holdout:
        values["holdout"] = taken["holdout"] = cfg["val_fraction"]
    note = None
    if cfg and "subsample" not in cfg:
        note = (
            f"{checkpoint_path} records no data options (written by an older deepcurvature): "
            "the given or default subsample and data options are used"
        )
    for arg, (key, hard) in _RECORDED.items():
        if arg not in values or key not in cfg:
            continue
        if arg == "model_kwargs" and not (isinstance(model, str) and model == cfg.get("model")):
            continue
        if arg == "subsample_seed" and cfg.get("subsample") is None and not (split or holdout):
            continue  # no subsample or split was drawn: its seed does not define the data
        if arg == "val_fraction" and not split:
            continue  # the run had no validation split: the given or default one is used
        from ..training.setup import jsonable

        recorded = cfg[key]
        value = jsonable(values[arg])  # as recorded: tuples as lists
        empty = (None, {}) if arg in ("model_kwargs", "data_kwargs") else (None,)
        if values[arg] is None:
            if recorded not in empty:
                values[arg] = recorded
                taken[arg] = recorded
            continue
        if hard and value != recorded and not (value in empty and recorded in empty):
            if arg == "num_subsamples" and (recorded is None or value < recorded):
                if recorded is not None:  # drawn from the run's own subsample
                    values["within"] = recorded
                continue  # a subsample of the training data the run used
            raise ValueError(
                f"{arg}={value!r} conflicts with the value {recorded!r} recorded in "
                f"{checkpoint_path} (the run's {key}): leave it out to use the recorded value (the "
                "data and model the checkpoint was trained with), or analyse another checkpoint"
            )
    return values, taken, note


def describe_taken(taken: dict[str, Any]) -> str:
    """``"num_subsamples=300, subsample_seed=0 (from the checkpoint)"``, or ``""``."""
    if not taken:
        return ""
    return ", ".join(f"{k}={v!r}" for k, v in taken.items()) + " (from the checkpoint)"


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
