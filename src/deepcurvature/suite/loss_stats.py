"""``compute_loss_stats``: the paper's loss-statistics workflow (section 5), files on disk.

One JSON file holds a row per checkpoint::

    {"format": "deepcurvature-loss-stats", "version": 1, "complete": true,
     "config": {... shared settings: data set, model, matrix, probes, seed, batch size ...},
     "columns": ["epoch", "checkpoint", "matrix", ..., "loss", "grad_var", ...],
     "rows": [{"epoch": 0, "checkpoint": "run/checkpoint-00000.pt", "loss": 2.31, ...}, ...],
     "layers": [{"net.1": {"grad_var": ..., ...}, ...}, ...]}

``rows[j]`` is :meth:`LossStats.as_row` of checkpoint ``j`` (the keys are defined in
:mod:`deepcurvature.analysis.loss_stats`), ``layers[j]`` its per-layer values; undefined numbers
(NaN) are ``null``. The file is rewritten atomically after every checkpoint, with ``"complete":
false`` until the last one is done, so it is always valid JSON. Every checkpoint is evaluated on
the same mini-batches and probe vectors (one seed), so the rows compare like with like.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis.loss_stats import LossStats, loss_stats
from ..io import atomic_write_text
from ..io.results import json_default
from ..linalg.probes import resolve_seed
from ._network import (
    check_memory,
    check_recorded_names,
    checkpoint_options,
    describe_taken,
    evaluation_data,
    rank_shard,
    selected_size,
    stored_path,
    writes_files,
)
from .eigenspectrum import resolve_device

__all__ = ["LOSS_STATS_FORMAT", "compute_loss_stats", "read_loss_stats", "resolve_checkpoints"]

LOSS_STATS_FORMAT = "deepcurvature-loss-stats"

STATS_MATRICES = {
    "hessian": "hessian",
    "hessian_lanczos": "hessian",
    "ggn": "ggn",
    "ggn_lanczos": "ggn",
}

_EPOCH = re.compile(r"checkpoint-(\d+)\.pt$")


def resolve_checkpoints(
    checkpoint_paths: str | os.PathLike | Sequence[str | os.PathLike] | None,
) -> list[Path | None]:
    """Expand checkpoint arguments into a list of files.

    Files stay, a run folder becomes all its ``checkpoint-*.pt`` (sorted by epoch), ``None`` means
    "the model's current weights" (``[None]``).

    Raises:
        FileNotFoundError: a path does not exist, or a folder holds no checkpoint.
    """
    from ..training.checkpoint import list_checkpoints

    if checkpoint_paths is None:
        return [None]
    items = (
        [checkpoint_paths]
        if isinstance(checkpoint_paths, (str, os.PathLike))
        else list(checkpoint_paths)
    )
    if not items:
        raise ValueError("checkpoint_paths is empty: give a checkpoint file or a run folder")
    out: list[Path | None] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list_checkpoints(p)
            if not found:
                raise FileNotFoundError(
                    f"the folder {p} holds no checkpoint-*.pt files; give a run folder written by "
                    "train_network or the checkpoint files themselves"
                )
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no checkpoint file or run folder at {p}")
    return out


def _json_path(save_path: str | os.PathLike) -> Path:
    p = Path(save_path)
    if p.suffix == "":
        p = p.with_name(p.name + ".json")
    if p.suffix.lower() != ".json":
        raise ValueError(
            f"save_path {str(save_path)!r} must be a .json file (or have no suffix): the loss "
            "statistics are written as one JSON file with a row per checkpoint"
        )
    if p.exists() and p.is_dir():
        raise ValueError(f"save_path {p} is a folder; give a file name such as {p / 'stats.json'}")
    return p


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _write(path: Path, config: dict[str, Any], results: list[LossStats], complete: bool) -> None:
    rows = []
    for st in results:
        row = {"epoch": st.config.get("epoch"), "checkpoint": st.config.get("checkpoint")}
        row.update(st.as_row())
        rows.append(row)
    columns = list(rows[0]) if rows else []
    doc = {
        "format": LOSS_STATS_FORMAT,
        "version": 1,
        "complete": complete,
        "config": config,
        "columns": columns,
        "rows": rows,
        "layers": [st.layers for st in results],
    }
    text = json.dumps(_clean(doc), indent=1, default=json_default, allow_nan=False)
    atomic_write_text(path, text + "\n")


def read_loss_stats(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`compute_loss_stats` (``null`` numbers become NaN).

    Returns:
        The document: ``config``, ``columns``, ``rows`` (list of dicts), ``layers``, ``complete``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no loss statistics file at {p}")
    doc = json.loads(p.read_text())
    if not isinstance(doc, dict) or doc.get("format") != LOSS_STATS_FORMAT:
        raise ValueError(f"{p} is not a loss statistics file written by compute_loss_stats")

    def nan(d: dict[str, Any]) -> dict[str, Any]:
        return {
            k: (math.nan if v is None and k not in ("epoch", "checkpoint") else v)
            for k, v in d.items()
        }

    doc["rows"] = [nan(r) for r in doc["rows"]]
    doc["layers"] = [{k: nan(v) for k, v in lay.items()} for lay in doc.get("layers", [])]
    return doc


def _epoch_of(ckpt: dict[str, Any], path: Path | None) -> int | None:
    epoch = ckpt.get("epoch")
    if epoch is not None:
        return int(epoch)
    if path is not None and (m := _EPOCH.search(path.name)):
        return int(m.group(1))
    return None


def compute_loss_stats(
    dataset: Any,
    data_path: str | os.PathLike | None = None,
    model: str | nn.Module = "mlp",
    checkpoint_paths: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    save_path: str | os.PathLike | None = None,
    *,
    batch_size: int = 128,
    num_batches: int | None = None,
    curvature_matrix: str = "hessian",
    probes: int = 4,
    seed: int | None = None,
    use_test: bool = True,
    val_fraction: float | None = None,
    bn_train_mode: bool = False,
    num_subsamples: int | None = None,
    subsample_seed: int | None = None,
    device: str | torch.device | None = None,
    params: Any = None,
    dtype: torch.dtype | None = None,
    model_kwargs: dict[str, Any] | None = None,
    loss_fn: Any = None,
    per_layer: bool = True,
    weights: str = "model",
    download: bool = False,
    verbose: bool = True,
    data_kwargs: dict[str, Any] | None = None,
) -> list[LossStats]:
    """Loss, gradient and curvature statistics of a network at each checkpoint (paper section 5).

    For every checkpoint, :func:`deepcurvature.loss_stats` over the training set (no augmentation),
    with test loss and accuracy on the test set; one row per checkpoint in ``save_path`` (format in
    the module documentation).

    Args:
        dataset: a data-set name (``"digits"``, ``"cifar100"``...), a Dataset or a DataLoader.
        data_path: folder of the data files.
        model: a model name (built with the data set's classes, channels and size; its keyword
            arguments default to the first checkpoint's) or an ``nn.Module`` (copied, not
            modified).
        checkpoint_paths: a checkpoint file, a run folder (all its checkpoints), or a list of
            them; ``None`` evaluates the model's current weights.
        save_path: the JSON file to write (``.json`` added when there is no suffix); ``None``:
            nothing written.
        batch_size: mini-batch size ``B``.
        num_batches: mini-batches ``M`` (default: one random partition, ``N // B``).
        curvature_matrix: ``"hessian"`` or ``"ggn"`` (``"*_lanczos"`` names accepted too).
        probes: probe vectors for the curvature statistics.
        seed: seed of the mini-batches and probes, shared by all checkpoints (recorded).
        use_test: test statistics on the test set; ``False``: on a validation split held out of
            the training set (as ``dc.load_data`` does).
        val_fraction: size of that validation split (default: the first checkpoint's run's
            split, with its seed, else 0.1); another value than the recorded one is refused.
        bn_train_mode: batch norm uses batch statistics (``bn_mode="train"``).
        num_subsamples: use a seeded random subset of this many training samples (default: the
            subsample the first checkpoint's run was trained on, else the whole training set).
        subsample_seed: seed of that subset (default: the checkpoint's, else 0).
        device: ``"cpu"``, ``"cuda"``... (default: CUDA when available).
        params: parameter subset (names, glob patterns or modules).
        dtype: evaluate in this dtype (e.g. ``torch.float64``).
        model_kwargs: keyword arguments of the model factory.
        loss_fn: the loss (default cross-entropy).
        per_layer: per-layer statistics too.
        weights: which weights of a checkpoint: ``"model"``, ``"swa"`` or ``"average"``.
        download: allow downloading a missing data set.
        verbose: progress bars.
        data_kwargs: options of the named data set (default: the first checkpoint's).

    The data options not given take the values recorded in the first checkpoint (listed in the
    file's ``config["from_checkpoint"]``); a conflicting ``num_subsamples``, ``subsample_seed``
    or ``data_kwargs`` is refused with a ``ValueError``. ``batch_size`` is the statistics'
    mini-batch size ``B``, chosen here (not read from the checkpoint).

    In a ``torch.distributed`` process group every rank loads the whole data set: the training
    mini-batches are dealt to the ranks by :func:`deepcurvature.loss_stats` and the test set is
    split into contiguous shards; every rank returns the single-process result and only rank 0
    writes ``save_path``.

    Returns:
        The :class:`LossStats` of each checkpoint (``config["epoch"]``, ``config["checkpoint"]``).

    Raises:
        FileNotFoundError: a missing checkpoint or data set.
        ValueError: bad arguments (before anything is computed), a checkpoint that does not fit.
    """
    from ..models import get_model
    from ..training.checkpoint import load_checkpoint, read_checkpoint

    key = str(curvature_matrix).lower()
    if key not in STATS_MATRICES:
        raise ValueError(
            f"unknown curvature_matrix {curvature_matrix!r} for loss statistics: use 'hessian' "
            "or 'ggn'"
        )
    matrix = STATS_MATRICES[key]
    for name, value in (("batch_size", batch_size), ("probes", probes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if num_batches is not None and (
        isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1
    ):
        raise ValueError(f"num_batches must be a positive integer or None, got {num_batches!r}")
    out_path = _json_path(save_path) if save_path is not None else None
    checkpoints = resolve_checkpoints(checkpoint_paths)
    used_seed = resolve_seed(seed)
    dev = resolve_device(device)
    taken: dict[str, Any] = {}
    note = None
    within = None
    holdout = None
    if isinstance(dataset, str):  # data options apply to a data set given by name
        given = dict(
            num_subsamples=num_subsamples, subsample_seed=subsample_seed, data_kwargs=data_kwargs
        )
        if not use_test:  # the run's validation split, if it had one
            given["val_fraction"] = val_fraction
        chosen, taken, note = checkpoint_options(
            checkpoints[0], given, model=model, dataset=dataset
        )
        val_fraction = chosen.get("val_fraction", val_fraction)
        num_subsamples, subsample_seed = chosen["num_subsamples"], chosen["subsample_seed"]
        within = chosen.get("within")
        holdout = chosen.get("holdout")
        data_kwargs = chosen["data_kwargs"]
    if verbose and writes_files() and (taken or note):
        print(f"note: {note}" if note else f"using {describe_taken(taken)}", flush=True)

    bundle = evaluation_data(
        dataset,
        data_path,
        batch_size=batch_size,
        num_subsamples=num_subsamples,
        subsample_seed=subsample_seed,
        download=download,
        use_test=use_test,
        val_fraction=val_fraction,
        data_kwargs=data_kwargs,
        within=within,
        holdout=holdout,
    )
    first_cfg: dict[str, Any] = {}
    if checkpoints[0] is not None:
        first_cfg = read_checkpoint(checkpoints[0], map_location="cpu").get("config") or {}
        check_recorded_names(checkpoints[0], first_cfg, model=model)
    if isinstance(model, nn.Module):
        net = copy.deepcopy(model)
        model_name = type(model).__name__
    else:
        if model_kwargs is None and first_cfg.get("model") == model:
            model_kwargs = first_cfg.get("model_kwargs") or {}
        net = get_model(
            model,
            num_classes=bundle.num_classes,
            in_channels=bundle.in_channels,
            input_size=bundle.input_size,
            **(model_kwargs or {}),
        )
        model_name = model
    net = net.to(dev)
    loss = loss_fn or nn.CrossEntropyLoss()
    P, itemsize = selected_size(net, params, dtype)  # a bad selection fails before any pass
    check_memory(  # probes, their products and the per-batch products, per parameter
        4 * probes * P * itemsize,
        f"the curvature statistics with probes={probes} on P = {P:,} parameters",
        "lower the probes, or select fewer parameters",
        dev,
    )

    config = {
        "dataset": dataset if isinstance(dataset, str) else type(dataset).__name__,
        "data_path": stored_path(data_path),
        "model": model_name,
        "model_kwargs": model_kwargs or {},
        "curvature_matrix": matrix,
        "probes": probes,
        "seed": used_seed,
        "batch_size": batch_size,
        "num_batches": num_batches,
        "use_test": use_test,
        "test_is_validation": bundle.test_is_validation,
        "bn_train_mode": bn_train_mode,
        "num_subsamples": num_subsamples,
        "subsample_seed": subsample_seed,
        "subsample_within": within,
        "validation_held_out": holdout,
        "data_kwargs": data_kwargs or {},
        "from_checkpoint": taken,
        "checkpoint_note": note,
        "params": params if params is None or isinstance(params, (str, list)) else str(params),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "weights": weights,
        "device": str(dev),
        "checkpoints": [stored_path(c) for c in checkpoints],
    }
    results: list[LossStats] = []
    for path in checkpoints:
        ckpt: dict[str, Any] = {}
        if path is not None:
            ckpt = load_checkpoint(path, net, map_location=dev, weights=weights)
        st = loss_stats(
            net,
            loss,
            bundle.train_loader,
            batch_size=batch_size,
            num_batches=num_batches,
            matrix=matrix,
            probes=probes,
            seed=used_seed,
            params=params,
            per_layer=per_layer,
            bn_mode="train" if bn_train_mode else "eval",
            test_data=rank_shard(bundle.test_loader),  # a loader is each rank's shard
            dtype=dtype,
            device=dev,
            verbose=verbose,
        )
        st.config["epoch"] = _epoch_of(ckpt, path)
        st.config["checkpoint"] = stored_path(path)
        results.append(st)
        if out_path is not None and writes_files():  # rank 0 only in a process group
            _write(out_path, config, results, complete=len(results) == len(checkpoints))
    return results
