"""``train_network``: train a model, writing checkpoints and per-epoch statistics (Appendix C).

A run folder holds ``checkpoint-00000.pt`` (before training), ``checkpoint-EEEEE.pt`` every
``save_freq`` epochs and at the end (see :mod:`.checkpoint`), and ``stats.json`` (see
:mod:`.stats`). Learning rates follow ``alpha_0 * schedule(e)`` at the start of epoch
``e = 0, ..., T - 1`` (equation 11 for ``"linear"``). With ``swa=True`` the schedule runs over
the first ``swa_start`` epochs (``"linear"`` then ends at ``swa_lr``, as in Izmailov et al.
2018), the learning rate is ``swa_lr`` afterwards, and the weights after every ``swa_c_epochs``-th
epoch from ``swa_start`` on are averaged (``torch.optim.swa_utils.AveragedModel``; batch-norm
statistics are recomputed with ``update_bn`` before each SWA evaluation).

Safety rules (see ``docs/training.md``): every argument, the checkpoint to resume from and the run
folder are checked before anything is written; a non-finite training loss stops the run at the
step where it appears, and so does a non-finite value inside the optimiser's step
(:class:`TrainingDivergedError`); an epoch whose training loss exceeds ``LOSS_GROWTH_FACTOR``
times the initial loss is reported (``warnings.warn`` and the ``warnings`` of ``stats.json``); a
call that fails before writing a checkpoint beyond the one it started from removes the files and
folders it created, so that the same call can be retried.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset

from .._version import __version__
from ..io.results import stored_path
from ..linalg.probes import resolve_seed
from ..optim import (
    IterateAveraging,
    optimizer_defaults,
)
from ..progress import ProgressBar
from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .data_parallel import (
    check_optimizer_data_parallel,
    data_parallel_loaders,
    evaluate_sharded,
    reduce_epoch,
    set_epoch,
    training_ranks,
    wait_for_rank0,
    wrap_model,
)
from .divergence import TrainingDivergedError, _diverged
from .epoch import _evaluate_all, _train_epoch
from .rng import get_rng_state, loader_generators, set_rng_state
from .run_folder import (
    check_run_dir,
    keep_asked_hyperparameters,
    missing_folders,
    read_resume,
    remove_partial_run,
)
from .schedules import Schedule, get_schedule
from .setup import (
    check_args,
    check_config,
    check_optimizer,
    has_batchnorm,
    jsonable,
    resolve_data,
    resolve_device,
    resolve_model,
    resolve_optimizer,
    resume_options,
    seed_everything,
)
from .stats import StatsLog, evaluate, loss_growth_warning, weight_norms
from .summary import print_summary
from .train_result import TrainResult

__all__ = ["TrainResult", "TrainingDivergedError", "train_network"]


def train_network(
    dir: str | os.PathLike | None,
    dataset: str | Dataset | DataLoader | Sequence = "digits",
    data_path: str | os.PathLike | None = None,
    model: str | nn.Module = "mlp",
    optimizer: str | type = "SGD",
    optimizer_kwargs: dict[str, Any] | None = None,
    epochs: int = 20,
    batch_size: int = 128,
    schedule: str | Callable[[float, float], float] = "linear",
    schedule_kwargs: dict[str, Any] | None = None,
    save_freq: int | None = None,
    eval_freq: int = 1,
    use_test: bool = True,
    resume: str | os.PathLike | None = None,
    swa: bool = False,
    swa_start: int | None = None,
    swa_lr: float | None = None,
    swa_c_epochs: int = 1,
    seed: int | None = None,
    device: str | torch.device | None = None,
    model_kwargs: dict[str, Any] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    verbose: bool = True,
    *,
    num_classes: int | None = None,
    download: bool = False,
    augment: bool = True,
    subsample: int | None = None,
    val_fraction: float = 0.1,
    num_workers: int = 0,
    schedule_unit: str = "epoch",
    overwrite: bool = False,
    data_kwargs: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a network and write checkpoints and statistics into ``dir`` (paper, Appendix C).

    Args:
        dir: run folder (created); ``None`` trains without writing any file.
        dataset: a data-set name (``dc.load_data``: "digits", "synthetic", "cifar10", ...), a
            ``Dataset``/``DataLoader``, or a ``(train, test)`` pair of them.
        data_path: where the data set's files are.
        model: a model name (``dc.get_model``) or an ``nn.Module``.
        optimizer: a name (``dc.list_optimizers()``) or a ``torch.optim.Optimizer`` subclass.
        optimizer_kwargs: its arguments (``lr``, ``momentum``, ``weight_decay``...).
        epochs: number of epochs ``T``; 0 writes only the (seeded) initial weights.
        batch_size: training batch size (when the loaders are built here).
        schedule: ``"linear"`` (equation 11), ``"constant"``, ``"step"``, ``"cosine"`` or
            ``f(t, T) -> factor``.
        schedule_kwargs: the schedule's parameters (``r``, ``milestones``, ``gamma``).
        save_freq: also checkpoint every this many epochs (always at epoch 0 and at the end).
        eval_freq: evaluate the test set every this many epochs (and at the last one).
        use_test: evaluate on the test set; ``False``: on a validation split of the training set.
        resume: a checkpoint to continue from (the run then matches an uninterrupted one exactly).
            The options that define the run's data and model (``model_kwargs``, ``data_kwargs``,
            ``batch_size``, ``subsample``, ``augment``, ``use_test``, ``val_fraction``, and
            ``seed`` when it draws a subsample or split) are the checkpoint's recorded values
            when left at their defaults; another value is refused (``ValueError``).
        swa: stochastic weight averaging.
        swa_start: epoch from which the weights are averaged (default ``0.75 T``).
        swa_lr: learning rate from ``swa_start`` on (default 0.1 of the initial one).
        swa_c_epochs: average every this many epochs.
        seed: seeds torch, numpy and Python; ``None`` draws one (recorded in the config).
        device: default: the model's device, else CUDA when available, else CPU.
        model_kwargs: extra arguments of ``dc.get_model``.
        loss_fn: ``loss_fn(outputs, targets)`` with mean reduction; default cross-entropy.
        verbose: progress bars and the final summary table.
        num_classes: override / supply the number of classes (for custom loaders).
        download: fetch a missing data set (``dc.load_data``).
        augment: the data set's standard training augmentation.
        subsample: train on a seeded subset of this many samples.
        val_fraction: size of the validation split when ``use_test=False``.
        num_workers: data-loader worker processes.
        schedule_unit: ``"epoch"`` or ``"iteration"`` (the schedule's ``t`` and ``T``).
        overwrite: allow writing into a folder that already holds a run.
        data_kwargs: options of the named data set (e.g. ``{"n_train": 256}`` for "synthetic").

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: before anything is written: bad arguments (a non-finite or wrongly signed
            optimiser argument, an invalid device, an unknown model, data set or optimiser
            name), an existing run in ``dir`` (without ``resume``/``overwrite``), a ``resume``
            checkpoint at or beyond ``epochs``, made by another optimiser, or followed by later
            checkpoints in ``dir`` (without ``overwrite``).
        TrainingDivergedError: (a ``ValueError``) a non-finite training loss, optimiser update
            or weight, naming the epoch and the step.

    Warns:
        RuntimeWarning: an epoch's mean training loss above ``LOSS_GROWTH_FACTOR`` (100) times
            the initial loss (also recorded in ``stats.json``'s ``warnings``).

    Inside a ``torch.distributed`` process group (``torchrun``) the model is trained with
    ``DistributedDataParallel``, ``batch_size`` is the global batch split over the processes,
    and only rank 0 writes ``dir`` and prints; every rank returns the same result once rank 0's
    files are written (see :mod:`deepcurvature.training.data_parallel`).

    A call that fails (any exception, ``KeyboardInterrupt`` included) before writing a
    checkpoint beyond the epoch it started from removes the files it created (``stats.json``,
    ``checkpoint-00000.pt``, temporaries) and the folders it created, if then empty; files that
    existed before the call are never removed.
    """
    check_args(
        epochs,
        batch_size,
        save_freq,
        eval_freq,
        swa,
        swa_start,
        swa_lr,
        swa_c_epochs,
        schedule_unit,
    )
    if loss_fn is None:
        loss_fn = nn.CrossEntropyLoss()
    optimizer_kwargs = dict(optimizer_kwargs or {})
    schedule_kwargs = dict(schedule_kwargs or {})
    get_schedule(schedule, 1, **schedule_kwargs)  # fail fast on a bad name or parameter
    # the checkpoint first: resuming with another optimizer is named as such, not as arguments
    # (taken from the checkpoint's run) that the other optimizer does not take
    resume_ckpt = read_resume(resume, optimizer, epochs) if resume is not None else None
    check_optimizer(optimizer, optimizer_kwargs)
    start_epoch = int(resume_ckpt["epoch"]) if resume_ckpt is not None else 0
    run_dir = Path(dir) if dir is not None else None
    ranks = training_ranks()  # a torchrun process group: see .data_parallel
    writer = ranks is None or ranks.rank == 0  # only rank 0 writes files and prints
    verbose = verbose and writer
    if run_dir is not None and writer:
        check_run_dir(run_dir, resume, start_epoch, overwrite)
    taken: dict[str, Any] = {}
    if resume_ckpt is not None:  # the data and model of the checkpoint's run, unless refused
        recorded = resume_ckpt.get("config") or {}
        given = dict(
            model_kwargs=model_kwargs,
            data_kwargs=data_kwargs,
            batch_size=batch_size,
            subsample=subsample,
            augment=augment,
            use_test=use_test,
            val_fraction=val_fraction,
            seed=seed,
        )
        chosen, taken, note = resume_options(
            recorded,
            given,
            resume,
            by_name=isinstance(dataset, str),
            model_by_name=isinstance(model, str),
        )
        model_kwargs, data_kwargs = chosen["model_kwargs"], chosen["data_kwargs"]
        batch_size, subsample = chosen["batch_size"], chosen["subsample"]
        augment = chosen["augment"]
        use_test, val_fraction = chosen["use_test"], chosen["val_fraction"]
        if note is not None and verbose:
            print(f"note: {note}", flush=True)
        if seed is None:
            seed = recorded.get("seed")
    seed = resolve_seed(seed)
    seed_everything(seed)
    dev = resolve_device(device, model)

    data = resolve_data(
        dataset,
        data_path,
        dict(
            batch_size=batch_size,
            use_test=use_test,
            val_fraction=val_fraction,
            augment=augment,
            download=download,
            num_workers=num_workers,
            subsample=subsample,
            num_classes=num_classes,
            seed=seed % 2**32,
            data_kwargs=dict(data_kwargs or {}),
        ),
    )
    train_loader, test_loader = data["train_loader"], data["test_loader"]
    if ranks is not None:
        train_loader, test_loader = data_parallel_loaders(train_loader, test_loader, ranks, seed)
    loaders = (train_loader, test_loader)
    n_batches = len(train_loader)
    net, model_name = resolve_model(model, model_kwargs, data)
    net.to(dev)
    swa_model = AveragedModel(net) if swa else None  # before the optimizer adds any hooks
    opt, opt_name = resolve_optimizer(optimizer, net, optimizer_kwargs)
    try:
        if ranks is not None:
            check_optimizer_data_parallel(opt, opt_name)
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
        lr0 = float(opt.param_groups[0]["initial_lr"])

        if swa:
            swa_start = int(0.75 * epochs) if swa_start is None else int(swa_start)
            swa_lr = 0.1 * lr0 if swa_lr is None else float(swa_lr)
            horizon = swa_start
            if str(schedule).lower() == "linear" and "r" not in schedule_kwargs:
                schedule_kwargs["r"] = min(1.0, swa_lr / lr0)
        else:
            horizon = epochs
        scale = n_batches if schedule_unit == "iteration" else 1
        sched: Schedule | None = (
            get_schedule(schedule, horizon * scale, **schedule_kwargs) if horizon > 0 else None
        )

        config = jsonable(
            {
                "model": model_name,
                "model_kwargs": model_kwargs or {},
                "dataset": data["name"],
                "data_path": stored_path(data_path),
                "data_kwargs": data_kwargs or {},
                "num_classes": data["num_classes"],
                "in_channels": data["in_channels"],
                "input_size": data["input_size"],
                "use_test": use_test,
                "val_fraction": val_fraction,
                "batch_size": batch_size,
                "subsample": subsample,
                "subsample_seed": seed % 2**32,
                "augment": augment,
                "batchnorm": has_batchnorm(net),
                "bn_mode_training": "train",
                "optimizer": opt_name,
                "optimizer_kwargs": (
                    {**optimizer_defaults(optimizer), **optimizer_kwargs}
                    if isinstance(optimizer, str)
                    else optimizer_kwargs
                ),
                "schedule": sched.config() if sched is not None else None,
                "schedule_unit": schedule_unit,
                "epochs": epochs,
                "eval_freq": eval_freq,
                "save_freq": save_freq,
                "swa": swa,
                "swa_start": swa_start,
                "swa_lr": swa_lr,
                "swa_c_epochs": swa_c_epochs,
                "seed": seed,
                "loss": getattr(loss_fn, "__name__", type(loss_fn).__name__),
                "device": str(dev),
                "deepcurvature_version": __version__,
            }
        )
        if ranks is not None:
            config["data_parallel"] = {"world_size": ranks.world_size, "backend": ranks.backend}
        check_config(config)

        rows: list[dict[str, Any]] = []
        notes: list[dict[str, Any]] = []
        initial_loss = None
        if resume_ckpt is not None:
            asked = [dict(g) for g in opt.param_groups]
            load_checkpoint(resume, net, opt, map_location=dev)
            keep_asked_hyperparameters(opt, asked, optimizer_kwargs, resume)
            rows = [r for r in resume_ckpt.get("stats", []) if r.get("epoch", 0) <= start_epoch]
            notes = [w for w in resume_ckpt.get("warnings", []) if w.get("epoch", 0) <= start_epoch]
            initial_loss = resume_ckpt.get("initial_loss")
            if initial_loss is None and rows:  # a checkpoint written before it was recorded
                initial_loss = rows[0].get("train_loss")
            if swa_model is not None and resume_ckpt.get("swa_state"):
                swa_model.load_state_dict(resume_ckpt["swa_state"])
        log = StatsLog(
            run_dir / "stats.json" if run_dir and writer else None,
            config,
            rows,
            warnings=notes,
            initial_loss=initial_loss,
        )
        gens = loader_generators(train_loader)
        if resume_ckpt is not None:
            set_rng_state(resume_ckpt["rng"], gens)
        trained = wrap_model(net, dev) if ranks is not None else net  # DDP: rank 0's weights
        evaluator = evaluate_sharded(dev) if ranks is not None else evaluate
    except BaseException:
        _remove_hooks(opt)
        raise

    # ------------------------------------------------------------------ writing starts here
    written: list[Path] = []
    saved: list[int] = []  # their epochs
    created = missing_folders(run_dir) if run_dir is not None and writer else []
    before: set[str] = set()  # the names in the run folder before this call wrote anything
    if run_dir is not None and writer and run_dir.is_dir():
        before = {p.name for p in run_dir.iterdir()}

    def save(epoch: int) -> None:
        if run_dir is None:
            return
        if not writer:  # the other ranks list the checkpoints rank 0 writes
            written.append(checkpoint_path(run_dir, epoch))
            saved.append(epoch)
            return
        extra: dict[str, Any] = {
            "rng": get_rng_state(gens),
            "stats": log.rows,
            "warnings": log.warnings,
            "initial_loss": log.initial_loss,
        }
        if swa_model is not None:
            extra["swa_state"] = swa_model.state_dict()
        if isinstance(opt, IterateAveraging) and opt.n_averaged > 0:
            with opt.averaged():
                extra["average_state"] = {k: v.clone() for k, v in net.state_dict().items()}
        path = checkpoint_path(run_dir, epoch)
        save_checkpoint(path, net, opt, epoch=epoch, config=config, **extra)
        written.append(path)
        saved.append(epoch)

    def set_lr(t_epoch: int, batch: int = 0) -> None:
        if swa and t_epoch >= swa_start:
            factor_lr = [swa_lr] * len(opt.param_groups)
        else:
            f = sched(t_epoch * scale + batch)
            factor_lr = [g["initial_lr"] * f for g in opt.param_groups]
        for g, lr in zip(opt.param_groups, factor_lr, strict=True):
            g["lr"] = lr

    bn = has_batchnorm(net)
    try:
        if run_dir is not None and writer:
            run_dir.mkdir(parents=True, exist_ok=True)
            if verbose:
                print(f"run folder: {run_dir}", flush=True)
        if taken and verbose:
            text = ", ".join(f"{k}={v!r}" for k, v in taken.items())
            print(f"from the checkpoint {resume}: {text}", flush=True)
        log.write()
        if resume_ckpt is None:
            save(0)
        for e in range(start_epoch, epochs):
            set_lr(e)
            lr_now = opt.param_groups[0]["lr"]
            per_iter = None
            if schedule_unit == "iteration" and not (swa and e >= swa_start):
                per_iter = lambda b, e=e: set_lr(e, b)  # noqa: E731
            t0 = time.perf_counter()
            set_epoch(train_loader, e)
            try:
                with ProgressBar(n_batches, f"epoch {e + 1}/{epochs}", verbose) as bar:
                    train_loss, train_acc, first_loss = _train_epoch(
                        trained, train_loader, opt, loss_fn, dev, bar, per_iter, e + 1
                    )
                if ranks is not None:  # the means over all ranks' samples
                    train_loss, train_acc, first_loss = reduce_epoch(
                        ranks, train_loss, train_acc, first_loss, dev
                    )
                l2, linf = weight_norms(net)
                if not (math.isfinite(l2) and math.isfinite(linf)):
                    raise _diverged(
                        f"epoch {e + 1}, step {n_batches} of {n_batches}",
                        "the weights are not finite after the optimizer's step",
                        opt,
                    )
            except TrainingDivergedError as exc:
                log.add_warning(e + 1, "diverged", str(exc))
                with contextlib.suppress(OSError):  # the failure to report is the divergence
                    log.write()
                raise
            train_time = time.perf_counter() - t0
            if log.initial_loss is None:
                log.initial_loss = first_loss
            if hasattr(opt, "epoch_end"):
                opt.epoch_end(e + 1)
            if swa and e + 1 >= swa_start and (e + 1 - swa_start) % swa_c_epochs == 0:
                swa_model.update_parameters(net)
            row: dict[str, Any] = {
                "epoch": e + 1,
                "lr": lr_now,
                "train_loss": train_loss,
                "train_accuracy": train_acc,
                "test_loss": None,
                "test_accuracy": None,
                "test_top5_accuracy": None,
                "time": train_time,
                "eval_time": None,
                "weight_l2": l2,
                "weight_linf": linf,
            }
            if (e + 1) % eval_freq == 0 or e + 1 == epochs:
                row.update(_evaluate_all(net, swa_model, opt, loaders, loss_fn, dev, bn, evaluator))
            if swa_model is not None:
                row["swa_n_averaged"] = int(swa_model.n_averaged)
            if isinstance(opt, IterateAveraging):
                row["n_averaged"] = opt.n_averaged
            previous = log.rows[-1].get("train_loss") if log.rows else None
            note = loss_growth_warning(e + 1, train_loss, log.initial_loss, previous, lr=lr_now)
            if note is not None:
                log.add_warning(e + 1, "loss_growth", note)
                warnings.warn(note, RuntimeWarning, stacklevel=2)
            log.append(row)
            if (save_freq is not None and (e + 1) % save_freq == 0) or e + 1 == epochs:
                save(e + 1)
    except BaseException:
        # nothing to resume from beyond the starting point: leave the folder as it was found
        if run_dir is not None and writer and not any(e > start_epoch for e in saved):
            remove_partial_run(run_dir, created, before, {p.name for p in written})
        raise
    finally:
        _remove_hooks(opt)
    if ranks is not None:
        wait_for_rank0()  # every rank returns once rank 0's files are written
    if verbose and log.rows:
        title = f"{model_name} on {data['name']} with {opt_name}"
        if run_dir is not None:
            title += f" -> {run_dir}"
        print_summary(log.rows, title, log.warnings)
    return TrainResult(run_dir, net, opt, log.rows, written, config, swa_model, log.warnings)


def _remove_hooks(opt: torch.optim.Optimizer) -> None:
    if hasattr(opt, "remove_hooks"):
        opt.remove_hooks()  # K-FAC's hooks must not outlive training
