"""``compute_eigenspectrum``: the paper's spectrum workflow (Appendix C.1 and D), files on disk."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis.spectrum import SpectrumResult, spectrum
from ..linalg.lanczos import resolve_basis
from ._network import (
    build_network,
    check_memory,
    checkpoint_options,
    describe_taken,
    evaluation_data,
    rank_shard,
    selected_size,
    stored_path,
    writes_files,
)

__all__ = [
    "CURVATURE_MATRICES",
    "check_basis_memory",
    "compute_eigenspectrum",
    "resolve_device",
]

CURVATURE_MATRICES = {
    "hessian_lanczos": "hessian",
    "ggn_lanczos": "ggn",
    "fisher_lanczos": "fisher",
    "fisher_mc_lanczos": "fisher_mc",
    # short names are accepted too
    "hessian": "hessian",
    "ggn": "ggn",
    "fisher": "fisher",
    "fisher_mc": "fisher_mc",
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; otherwise the device asked for."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"invalid device {device!r}: use 'cpu', 'cuda', 'cuda:1' (or 'mps')"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available: use 'cpu'")
    return dev


def compute_eigenspectrum(
    dataset: Any,
    data_path: str | os.PathLike | None = None,
    model: str | nn.Module = "mlp",
    checkpoint_path: str | os.PathLike | None = None,
    curvature_matrix: str = "hessian_lanczos",
    lanczos_iters: int = 100,
    save_spectrum_path: str | os.PathLike | None = None,
    save_eigvec: bool = False,
    batch_size: int | None = None,
    bn_train_mode: bool = False,
    num_subsamples: int | None = None,
    subsample_seed: int | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    *,
    probes: int = 1,
    params: Any = None,
    dtype: torch.dtype | None = None,
    weight_decay: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
    loss_fn: Any = None,
    download: bool = False,
    verbose: bool = True,
    data_kwargs: dict[str, Any] | None = None,
    basis: str = "memory",
    basis_device: str | torch.device | None = None,
    basis_dir: str | os.PathLike | None = None,
    lanczos_state_path: str | os.PathLike | None = None,
    lanczos_state_every: int = 10,
    cache: bool | str = False,
) -> SpectrumResult:
    """Learn the spectrum of a network's curvature matrix at a checkpoint (paper Appendix C.1).

    The curvature is that of the mean training loss over the (optionally subsampled) training set,
    without augmentation.

    Args:
        dataset: a data-set name (``"digits"``, ``"cifar100"``...), a Dataset or a DataLoader.
        data_path: folder of the data files (file-based data sets).
        model: a model name from the registry or an ``nn.Module``.
        checkpoint_path: a checkpoint written by ``train_network`` (loaded with
            ``weights_only=True``); ``None`` uses the model's current weights.
        curvature_matrix: ``"hessian_lanczos"``, ``"ggn_lanczos"``, ``"fisher_lanczos"`` (empirical)
            or ``"fisher_mc_lanczos"``.
        lanczos_iters: Lanczos steps ``m``.
        save_spectrum_path: where to write ``.npz`` + ``.json`` (``None``: not saved).
        save_eigvec: keep (and save) the ``(P, m)`` Ritz vectors. With several ``probes`` only
            the first probe's Ritz vectors are kept (``config["ritz_vectors_probe"]`` is 0),
            like ``ritz_values``; the density uses every probe.
        batch_size: batch size of the data passes (matters for ``bn_train_mode`` only; default:
            the checkpoint's training batch size, else 128).
        bn_train_mode: batch-norm layers use batch statistics (the loss as trained) instead of
            running statistics.
        num_subsamples: use a seeded random subset of this many training samples (default: the
            subsample the checkpoint's run was trained on, else the whole training set).
        subsample_seed: seed of that subset (default: the checkpoint's, else 0).
        seed: seed of the Lanczos probe vectors.
        device: ``"cpu"``, ``"cuda"``... (default: CUDA when available).
        probes: number of probe vectors.
        params: parameter subset (names, glob patterns or modules).
        dtype: evaluate in this dtype (e.g. ``torch.float64``).
        weight_decay: add ``weight_decay * I`` (the L2 term) to the matrix.
        model_kwargs: keyword arguments of the model factory (default: the checkpoint's, for the
            model name it records).
        loss_fn: the loss (default cross-entropy).
        download: allow downloading a missing data set (torchvision).
        verbose: progress bars.
        data_kwargs: options of the named data set (default: the checkpoint's).
        basis: where the Lanczos basis is kept: ``"memory"`` (on ``basis_device``, default the
            evaluation device), ``"host"`` (host memory while the products run on a GPU) or
            ``"disk"`` (a memory-mapped file in ``basis_dir``, default the state's folder or a
            temporary one). The memory check before the run counts the basis where it is kept
            (a disk basis against the free space of its folder).
        basis_device: device of a memory basis (``"cpu"``: the same as ``basis="host"``).
        basis_dir: folder of a disk basis's file.
        lanczos_state_path: a Lanczos state file, written every ``lanczos_state_every`` steps;
            when it exists the run continues from it (bitwise identical results) after checking
            that it belongs to the same model, data and settings; removed at the end.
        lanczos_state_every: steps between two states.
        cache: the operator's ``cache`` (see :func:`~deepcurvature.hessian`): ``False`` reads
            the data set at every product, ``True`` keeps the prepared batches on the device,
            ``"forward"`` also keeps each batch's forward pass (memory: about one gradient
            pass's activations for every batch), which makes a step with several probes about
            1.2x faster on networks of convolutions; the results are bit-identical.

    A checkpoint written by ``train_network`` records the run's data and model options; the
    arguments above that are not given take the recorded values (listed in the result's
    ``config["from_checkpoint"]``), and a data- or model-defining one given with another value
    (``num_subsamples``, ``subsample_seed``, ``model_kwargs``, ``data_kwargs``, or a ``dataset``
    or ``model`` name other than the recorded one) is refused with a ``ValueError``.

    In a ``torch.distributed`` process group (``torchrun``) every rank loads the whole data set
    and evaluates its contiguous shard (the products are summed over the ranks), every rank
    returns the same result, and only rank 0 writes it and shows progress.

    Returns:
        The :class:`SpectrumResult` (also written to ``save_spectrum_path``).
    """
    key = str(curvature_matrix).lower()
    if key not in CURVATURE_MATRICES:
        raise ValueError(
            f"unknown curvature_matrix {curvature_matrix!r}: use one of "
            f"{', '.join(k for k in CURVATURE_MATRICES if k.endswith('_lanczos'))}"
        )
    matrix = CURVATURE_MATRICES[key]
    dev = resolve_device(device)
    if lanczos_state_path is not None and _world_size() > 1:
        raise ValueError(
            "saving the Lanczos state (lanczos_state_path) is not supported in a process group "
            "(torchrun) yet: run on one process, or without it"
        )
    given: dict[str, Any] = {"model_kwargs": model_kwargs, "batch_size": batch_size}
    if isinstance(dataset, str):  # data options apply to a data set given by name
        given.update(
            num_subsamples=num_subsamples, subsample_seed=subsample_seed, data_kwargs=data_kwargs
        )
    chosen, taken, note = checkpoint_options(checkpoint_path, given, model=model, dataset=dataset)
    model_kwargs, batch_size = chosen["model_kwargs"], chosen["batch_size"] or 128
    num_subsamples = chosen.get("num_subsamples", num_subsamples)
    subsample_seed = chosen.get("subsample_seed", subsample_seed)
    data_kwargs = chosen.get("data_kwargs", data_kwargs)
    within = chosen.get("within")
    holdout = chosen.get("holdout")
    if verbose and writes_files() and (taken or note):
        print(f"note: {note}" if note else f"using {describe_taken(taken)}", flush=True)
    bundle = evaluation_data(
        dataset,
        data_path,
        batch_size=batch_size,
        num_subsamples=num_subsamples,
        subsample_seed=subsample_seed,
        download=download,
        data_kwargs=data_kwargs,
        within=within,
        holdout=holdout,
    )
    model_name = model if isinstance(model, str) else type(model).__name__
    net = build_network(
        model, bundle, model_kwargs=model_kwargs, checkpoint_path=checkpoint_path, device=dev
    )
    P, itemsize = selected_size(net, params, dtype)  # a bad selection fails before any pass
    if all(isinstance(x, int) and x > 0 for x in (lanczos_iters, probes)):
        m = min(lanczos_iters, P)  # full reorthogonalisation keeps the whole basis
        check_basis_memory(
            basis,
            basis_device,
            basis_dir,
            lanczos_state_path,
            probes=probes,
            steps=m,
            dim=P,
            itemsize=itemsize,
            save_eigvec=save_eigvec,
            device=dev,
        )
    res = spectrum(
        net,
        loss_fn or nn.CrossEntropyLoss(),
        rank_shard(bundle.train_loader),  # in a process group: this rank's shard
        matrix=matrix,
        steps=lanczos_iters,
        probes=probes,
        seed=seed,
        store_vectors=save_eigvec,
        verbose=verbose and writes_files(),
        params=params,
        bn_mode="train" if bn_train_mode else "eval",
        dtype=dtype,
        weight_decay=weight_decay,
        device=dev,
        cache=cache,
        basis=basis,
        basis_device=basis_device,
        basis_dir=basis_dir,
        checkpoint=lanczos_state_path,
        checkpoint_every=lanczos_state_every,
        config={
            "curvature_matrix": key,
            "model": model_name,
            "model_kwargs": model_kwargs or {},
            "dataset": dataset if isinstance(dataset, str) else type(dataset).__name__,
            "data_path": stored_path(data_path),
            "checkpoint_path": stored_path(checkpoint_path),
            "batch_size": batch_size,
            "bn_train_mode": bn_train_mode,
            "num_subsamples": num_subsamples,
            "subsample_seed": subsample_seed,
            "subsample_within": within,
            "validation_held_out": holdout,
            "params": params if params is None or isinstance(params, (str, list)) else str(params),
            "weight_decay": weight_decay,
            "cache": cache,
            "data_kwargs": data_kwargs or {},
            "ritz_vectors_probe": 0 if save_eigvec else None,
            "from_checkpoint": taken,
            "checkpoint_note": note,
        },
    )
    if save_spectrum_path is not None and writes_files():  # rank 0 only in a process group
        res.save(Path(save_spectrum_path))
    return res


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def check_basis_memory(
    basis: str,
    basis_device: str | torch.device | None,
    basis_dir: str | os.PathLike | None,
    state_path: str | os.PathLike | None,
    *,
    probes: int,
    steps: int,
    dim: int,
    itemsize: int,
    save_eigvec: bool,
    device: torch.device,
) -> None:
    """Refuse, before any data pass, a Lanczos run whose basis cannot be kept where asked.

    A memory basis counts against ``device``'s memory, a host basis against the host's, a disk
    basis against the free space of its folder (and the Ritz vectors of ``save_eigvec``, kept in
    host memory with a copy of the basis, against the host's); a state file of a memory or host
    basis needs twice the basis on its disk (the new state is written beside the old one).

    Raises:
        ValueError: naming what does not fit and the fix.
    """
    kind, where = resolve_basis(basis, basis_device, basis_dir, device)
    need = probes * steps * dim * itemsize
    vectors = steps * dim * itemsize if save_eigvec else 0
    what = f"the Lanczos basis of probes={probes} x steps={steps} vectors of P = {dim:,} parameters"
    fix = "lower the probes or the steps, or select fewer parameters"
    if kind == "disk":
        if vectors:
            check_memory(
                2 * vectors,
                f"save_eigvec with a disk basis (the Ritz vectors and the basis of P = {dim:,} "
                f"parameters x {steps} steps in host memory)",
                "drop save_eigvec, lower the steps, or select fewer parameters",
                torch.device("cpu"),
            )
        folder = basis_dir or (Path(state_path).parent if state_path else tempfile.gettempdir())
        _check_disk(need, Path(folder), what, f"choose basis_dir on a larger disk, or {fix}")
        return
    check_memory(need + vectors, what, f"{fix}, or use basis='disk'", where)
    if state_path is not None:
        _check_disk(
            2 * need,
            Path(state_path).parent,
            f"the Lanczos state of {what} (written beside the previous one)",
            f"write the state on a larger disk, or {fix}",
        )


def _check_disk(need: int, folder: Path, what: str, fix: str) -> None:
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent  # the folder may not exist yet
    free = shutil.disk_usage(probe).free
    if need > free:
        raise ValueError(
            f"{what} needs {need / 2**30:.3g} GiB of disk space in {folder}, but only "
            f"{free / 2**30:.3g} GiB are free: {fix}"
        )
