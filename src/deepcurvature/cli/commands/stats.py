"""``deepcurvature stats``: loss, gradient-noise and curvature-noise statistics of checkpoints."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..errors import CommandError
from ._common import (
    BRIEF_TRAINING_FILES,
    add_brief_training_option,
    add_checkpoint_data_options,
    add_curvature_options,
    add_output_options,
    claim_output,
    positive,
    recorded_names,
    resolve_brief_training,
    train_briefly,
)

NAME = "stats"
HELP = "loss, gradient-noise and Hessian/GGN-noise statistics of checkpoints (paper section 5)"
DESCRIPTION = (
    "Measure, over seeded random mini-batches of the training set, the loss mean and variance, "
    "the gradient norm and variance tr Cov(g_b), the Hessian (or GGN) along random probe vectors "
    "(Rayleigh quotient, ||Hv||^2, the batch noise E||H_b v - H v||^2 and the shrinkage "
    "coefficient), weight norms and the train/test loss and accuracy, for the whole model and per "
    "layer, at each checkpoint. --checkpoint takes checkpoint files or run folders (all their "
    "checkpoints). With no checkpoint it runs offline: a small MLP is trained briefly on "
    "scikit-learn's digits and its first and last checkpoints are measured. Writes "
    "loss_stats.json (a row per checkpoint) into --out and prints a table."
)

TRAIN_EPOCHS = 5
#: rows of the printed table: (label, key, show the standard error)
TABLE_ROWS = (
    ("train loss", "loss", False),
    ("train accuracy", "accuracy", False),
    ("test loss", "test_loss", False),
    ("test accuracy", "test_accuracy", False),
    ("batch loss variance", "loss_batch_var", False),
    ("||g||^2", "grad_norm_sq", False),
    ("E||g_b||^2", "grad_batch_norm_sq", False),
    ("tr Cov(g_b) = E||g_b - g||^2", "grad_var", False),
    ("per-sample tr Cov(g_i)", "grad_var_per_sample", False),
    ("v^T H v", "curv_rayleigh", True),
    ("||H v||^2", "curv_norm_sq", True),
    ("E||H_b v - H v||^2", "curv_var", True),
    ("shrinkage rho", "curv_shrinkage", True),
    ("tr H (Hutchinson)", "curv_trace", True),
    ("||theta||_2", "weight_l2", False),
    ("||theta||_inf", "weight_linf", False),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name (default: the checkpoint's, or mlp)")
    p.add_argument(
        "--dataset", default=None, help="data set name (default: the checkpoint's, or digits)"
    )
    p.add_argument("--data-path", default=None, help="folder holding the data set's files")
    p.add_argument("--download", action="store_true", help="allow downloading the data set")
    p.add_argument(
        "--checkpoint",
        nargs="+",
        default=None,
        metavar="PATH",
        help="checkpoint files and/or run folders (all their checkpoints)",
    )
    add_brief_training_option(p, TRAIN_EPOCHS)
    p.add_argument(
        "--matrix",
        choices=["hessian", "ggn"],
        default="hessian",
        help="curvature matrix of the curvature statistics",
    )
    p.add_argument("--probes", type=int, default=4, help="random probe vectors")
    p.add_argument("--batch-size", type=int, default=128, help="mini-batch size B")
    p.add_argument(
        "--num-batches",
        type=int,
        default=None,
        help="mini-batches M (default: one random partition of the data, N // B)",
    )
    add_curvature_options(p)
    p.add_argument(
        "--weights",
        choices=["model", "swa", "average"],
        default="model",
        help="which weights of the checkpoints",
    )
    p.add_argument(
        "--validation",
        action="store_true",
        help="test statistics on a validation split of the training set",
    )
    add_checkpoint_data_options(p, batch_size=False)
    p.add_argument("--seed", type=int, default=0, help="seed of the mini-batches and probes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if any)")
    p.add_argument("--float64", action="store_true", help="evaluate in float64")
    add_output_options(p, "stats")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _validate(args: argparse.Namespace) -> dict[str, Any]:
    """Check every argument before anything is written; return the resolved settings."""
    from ...suite.loss_stats import resolve_checkpoints

    positive("--probes", args.probes)
    positive("--batch-size", args.batch_size)
    resolve_brief_training(args, TRAIN_EPOCHS)
    positive("--num-batches", args.num_batches, allow_none=True)
    positive("--subsample", args.subsample, allow_none=True)
    checkpoints: list[Path] = []
    if args.checkpoint is not None:
        try:
            checkpoints = [p for p in resolve_checkpoints(args.checkpoint) if p is not None]
        except FileNotFoundError as exc:
            raise CommandError(f"{exc} (--checkpoint)") from None
    _, model, dataset = recorded_names(args, checkpoints[0] if checkpoints else None)
    model_kwargs = None  # compute_loss_stats reads the checkpoint's (for its model name)
    return {
        "model": model,
        "dataset": dataset,
        "model_kwargs": model_kwargs,
        "checkpoints": checkpoints,
    }


def _fmt(value: Any, se: Any = None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    text = f"{value:.4g}"
    if se is not None and isinstance(se, float) and math.isfinite(se):
        text += f" ± {se:.2g}"
    return text


def run(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from ...suite.loss_stats import compute_loss_stats

    settings = _validate(args)
    training = not settings["checkpoints"]
    folder = claim_output(args, "stats", ("loss_stats.json",) + BRIEF_TRAINING_FILES * training)
    out = folder.path
    console = Console()
    verbose = not args.quiet
    with folder:  # on any failure or interrupt: remove this run's files, and only those
        checkpoints: list[Path] = settings["checkpoints"]
        if training:
            trained = train_briefly(
                out, settings["model"], settings["dataset"], args, console, verbose
            )
            checkpoints = list(trained.checkpoints)
        results = compute_loss_stats(
            settings["dataset"],
            args.data_path,
            model=settings["model"],
            checkpoint_paths=checkpoints,
            save_path=out / "loss_stats.json",
            batch_size=args.batch_size,
            num_batches=args.num_batches,
            curvature_matrix=args.matrix,
            probes=args.probes,
            seed=args.seed,
            use_test=not args.validation,
            bn_train_mode=args.bn_mode == "train",
            num_subsamples=args.subsample,
            subsample_seed=args.subsample_seed,
            device=args.device,
            params=args.params,
            dtype=torch.float64 if args.float64 else None,
            model_kwargs=settings["model_kwargs"] or None,
            weights=args.weights,
            download=args.download,
            verbose=verbose,
        )
        if args.overwrite:
            folder.remove_stale()

    first = results[0]
    title = (
        f"{args.matrix} statistics of {settings['model']} on {settings['dataset']} "
        f"(B={args.batch_size}, M={first.config['num_batches']}, probes={args.probes}, "
        f"P={first.config['num_params']:,}, N={first.config['num_samples']:,})"
    )
    table = Table(title=title)
    table.add_column("quantity")
    for st in results:
        epoch = st.config.get("epoch")
        table.add_column(f"epoch {epoch}" if epoch is not None else "current", justify="right")
    for label, key, with_se in TABLE_ROWS:
        cells = [
            _fmt(st.values.get(key), st.values.get(f"{key}_se") if with_se else None)
            for st in results
        ]
        table.add_row(label, *cells)
    console.print(table)
    _print_from_checkpoint(console, out / "loss_stats.json")
    passes = first.config["data_passes"]
    console.print(
        f"{len(results)} checkpoint(s), {passes:.3g} pass(es) over the training data each; "
        f"results in {out}/loss_stats.json"
    )
    return 0


def _print_from_checkpoint(console: Any, path: Path) -> None:
    """Say which data options came from the checkpoint (as recorded in the written file)."""
    from ...suite.loss_stats import read_loss_stats

    try:
        cfg = read_loss_stats(path).get("config") or {}
    except (OSError, ValueError):  # not written (a rank other than 0)
        return
    taken = cfg.get("from_checkpoint") or {}
    if taken:
        console.print("from the checkpoint: " + ", ".join(f"{k}={v}" for k, v in taken.items()))
    elif cfg.get("checkpoint_note"):
        console.print(f"note: {cfg['checkpoint_note']}")
