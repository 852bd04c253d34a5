"""``build_loss_landscape``: the paper's landscape workflow (Appendix C.2 and D), files on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis.landscape import LandscapeResult, loss_landscape
from ..analysis.spectrum import SpectrumResult
from ._network import (
    build_network,
    check_recorded_names,
    checkpoint_options,
    describe_taken,
    evaluation_data,
    rank_shard,
    recorded_path,
    stored_path,
    writes_files,
)
from .eigenspectrum import resolve_device

__all__ = ["build_loss_landscape"]


def _same_model(a: Any, b: Any) -> bool:
    from ..models import normalize_model_name

    try:
        return normalize_model_name(str(a)) == normalize_model_name(str(b))
    except TypeError:
        return False


def build_loss_landscape(
    dataset: Any,
    data_path: str | os.PathLike | None = None,
    model: str | nn.Module | None = None,
    dist: float = 1.0,
    n_points: int = 21,
    spectrum_path: str | os.PathLike | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    save_path: str | os.PathLike | None = None,
    *,
    directions: Any = None,
    plane: Any = None,
    batch_size: int | None = None,
    bn_recompute: bool = False,
    use_test: bool = True,
    val_fraction: float | None = None,
    device: str | torch.device | None = None,
    num_subsamples: int | None = None,
    subsample_seed: int | None = None,
    seed: int | None = None,
    params: Any = "spectrum",
    quadratic: bool = True,
    theta: str = "rayleigh",
    bias_bn: str = "zero",
    dtype: torch.dtype | None = None,
    model_kwargs: dict[str, Any] | None = None,
    loss_fn: Any = None,
    download: bool = False,
    verbose: bool = True,
    data_kwargs: dict[str, Any] | None = None,
) -> LandscapeResult:
    """Loss and accuracy along the eigenvectors of a saved spectrum (paper section 9, App. C.2).

    Loads the network from ``checkpoint_path``, the eigenvectors from ``spectrum_path`` (written
    by :func:`compute_eigenspectrum` with ``save_eigvec=True``), evaluates the train and test
    loss and accuracy at ``w* + t u`` for ``n_points`` values ``t`` in ``[-dist, dist]`` and saves
    a :class:`LandscapeResult` to ``save_path`` (``.npz`` + ``.json``), which
    ``plot_loss_landscape(save_path)`` draws.

    Args:
        dataset: a data-set name (``"digits"``, ``"CIFAR100"``...), a Dataset or a DataLoader.
        data_path: folder of the data files.
        model: a model name or an ``nn.Module``; ``None``: the checkpoint's model (or the
            spectrum's).
        dist: largest ``|t|``; eigenvectors have unit norm, so ``t`` is the distance in
            parameter space.
        n_points: points per direction (odd numbers include ``t = 0``).
        spectrum_path: a saved spectrum with eigenvectors (``None``: only random directions).
        checkpoint_path: the weights ``w*`` (loaded with ``weights_only=True``); ``None``: the
            spectrum's checkpoint, else the model's current weights.
        save_path: where to write ``.npz`` + ``.json`` (``None``: not saved).
        directions: direction specs (:func:`deepcurvature.resolve_directions`); default
            ``"extremes:3"`` (three largest and three smallest Ritz values) with a spectrum,
            ``"random:2"`` without.
        plane: a 2-D landscape instead: two direction specs (``"random:2"``, ``"largest:2"``...).
        batch_size: batch size of the evaluation passes (default: the checkpoint's, else 128).
        bn_recompute: recompute batch-norm statistics at every point (one extra pass per point).
        use_test: evaluate on the test set (``False``: on the validation split).
        val_fraction: size of that validation split (default: the checkpoint's run's split, with
            its seed, else 0.1).
        device: ``"cpu"``, ``"cuda"``... (default: CUDA when available).
        num_subsamples: use a seeded random subset of this many training samples; default: the
            subsample the checkpoint's run was trained on, else the spectrum's, if any.
        subsample_seed: seed of that subset (default: the checkpoint's or the spectrum's, else 0).
        seed: seed of random directions.
        params: parameters that move: ``"spectrum"`` (those of the spectrum, default), ``None``
            (all) or names/patterns.
        quadratic: store the quadratic model ``L + t g.u + theta t^2 / 2``.
        theta: ``"rayleigh"`` (``u^T H u`` computed) or ``"ritz"`` (the stored Ritz values).
        bias_bn: filter normalisation of biases/BN parameters (random directions).
        dtype: evaluation dtype (e.g. ``torch.float64``).
        model_kwargs: arguments of the model factory (default: the checkpoint's, when its model
            is the one named).
        loss_fn: the loss (default cross-entropy).
        download: allow downloading a missing data set.
        verbose: progress bars.
        data_kwargs: options of the named data set (default: the checkpoint's).

    The data options not given take the values recorded in the checkpoint (listed in the
    result's ``config["from_checkpoint"]``); a conflicting ``num_subsamples``,
    ``subsample_seed``, ``data_kwargs`` or ``val_fraction`` (with ``use_test=False``), or a
    ``dataset`` or ``model`` name other than the recorded one, is refused with a ``ValueError``.

    In a ``torch.distributed`` process group every rank loads the whole data set and passes its
    contiguous shard to :func:`deepcurvature.loss_landscape`; only rank 0 writes ``save_path``.

    Returns:
        The :class:`LandscapeResult` (also written to ``save_path``).
    """
    from ..training.checkpoint import read_checkpoint

    spectrum = None
    spec_cfg: dict[str, Any] = {}
    if spectrum_path is not None:
        spectrum = SpectrumResult.load(spectrum_path)
        spec_cfg = spectrum.config or {}
        if spectrum.ritz_vectors is None and plane is None and directions is None:
            raise ValueError(
                f"the spectrum {spectrum_path} holds no eigenvectors: recompute it with "
                "save_eigvec=True ('deepcurvature spectrum --save-eigvec'), or pass random "
                "directions (directions='random:2')"
            )
    if checkpoint_path is None and spec_cfg.get("checkpoint_path"):
        checkpoint_path = recorded_path(spec_cfg["checkpoint_path"], spectrum_path)
    ckpt_cfg: dict[str, Any] = {}
    if checkpoint_path is not None:
        ckpt_cfg = read_checkpoint(checkpoint_path, map_location="cpu").get("config") or {}
        check_recorded_names(checkpoint_path, ckpt_cfg, dataset=dataset, model=model)
    if model is None:
        model = ckpt_cfg.get("model") or spec_cfg.get("model")
        if model is None:
            raise ValueError(
                "no model given and none recorded in the checkpoint or spectrum: pass model="
            )
    if model_kwargs is None and isinstance(model, str):
        for cfg in (ckpt_cfg, spec_cfg):
            if cfg.get("model") and _same_model(cfg["model"], model):
                model_kwargs = cfg.get("model_kwargs") or {}
                break
    if params == "spectrum":
        params = spec_cfg.get("params")
    if num_subsamples is None and spec_cfg.get("num_subsamples"):  # the spectrum's data
        num_subsamples = spec_cfg["num_subsamples"]
        if subsample_seed is None:
            subsample_seed = spec_cfg.get("subsample_seed")
    taken: dict[str, Any] = {}
    note = None
    within = None
    holdout = None
    if isinstance(dataset, str):  # data options apply to a data set given by name
        given = dict(
            num_subsamples=num_subsamples,
            subsample_seed=subsample_seed,
            data_kwargs=data_kwargs,
            batch_size=batch_size,
        )
        if not use_test:  # the run's validation split, if it had one
            given["val_fraction"] = val_fraction
        chosen, taken, note = checkpoint_options(checkpoint_path, given)
        num_subsamples, subsample_seed = chosen["num_subsamples"], chosen["subsample_seed"]
        within = chosen.get("within")
        holdout = chosen.get("holdout")
        data_kwargs, batch_size = chosen["data_kwargs"], chosen["batch_size"]
        val_fraction = chosen.get("val_fraction", val_fraction)
    batch_size = batch_size or 128
    if verbose and writes_files() and (taken or note):
        print(f"note: {note}" if note else f"using {describe_taken(taken)}", flush=True)
    dev = resolve_device(device)
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
    model_name = model if isinstance(model, str) else type(model).__name__
    net = build_network(
        model, bundle, model_kwargs=model_kwargs, checkpoint_path=checkpoint_path, device=dev
    )
    result = loss_landscape(
        net,
        loss_fn or nn.CrossEntropyLoss(),
        rank_shard(bundle.train_loader),  # in a process group: this rank's shard
        rank_shard(bundle.test_loader),
        directions=directions,
        plane=plane,
        spectrum=spectrum,
        dist=dist,
        n_points=n_points,
        params=params,
        bn_recompute=bn_recompute,
        quadratic=quadratic,
        theta=theta,
        bias_bn=bias_bn,
        seed=seed,
        dtype=dtype,
        device=dev,
        verbose=verbose and writes_files(),
        config={
            "model": model_name,
            "model_kwargs": model_kwargs or {},
            "dataset": dataset if isinstance(dataset, str) else type(dataset).__name__,
            "data_path": stored_path(data_path),
            "checkpoint_path": stored_path(checkpoint_path),
            "spectrum_path": stored_path(spectrum_path),
            "spectrum_matrix": spec_cfg.get("matrix"),
            "batch_size": batch_size,
            "use_test": use_test,
            "val_fraction": None if use_test else (val_fraction or 0.1),
            "test_is_validation": bundle.test_is_validation,
            "num_subsamples": num_subsamples,
            "subsample_seed": subsample_seed,
            "subsample_within": within,
            "validation_held_out": holdout,
            "data_kwargs": data_kwargs or {},
            "from_checkpoint": taken,
            "checkpoint_note": note,
        },
    )
    if save_path is not None and writes_files():  # rank 0 only in a process group
        result.save(Path(save_path))
    return result
