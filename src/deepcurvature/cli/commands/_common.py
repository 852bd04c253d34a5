"""Pieces shared by several subcommands (not a subcommand: the name starts with ``_``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...io.outputs import OutputFolder
from ..errors import CommandError
from ..launch import claim_on_rank0

__all__ = [
    "BRIEF_TRAINING_FILES",
    "BRIEF_TRAINING_OPTIMIZER",
    "add_brief_training_option",
    "add_curvature_options",
    "add_output_options",
    "check_dpi",
    "checkpoint_file",
    "claim_output",
    "nonnegative",
    "positive",
    "resolve_brief_training",
    "train_briefly",
]

#: Figures are at most this many dots per inch (a 10-inch figure is then 12,000 pixels wide).
MAX_DPI = 1200
BRIEF_TRAINING_OPTIMIZER = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
#: What a brief training writes into the output folder (its ``train`` sub-folder).
BRIEF_TRAINING_FILES = ("train", "train/checkpoint-*.pt", "train/stats.json")


def add_output_options(p: argparse.ArgumentParser, kind: str) -> None:
    """Add ``--out`` (default: a new ``runs/KIND-TIME`` folder) and ``--overwrite``."""
    p.add_argument(
        "--out",
        default=None,
        help=f"output folder (default: a new folder runs/{kind}-YYYYmmdd-HHMMSS)%(default).0s",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in --out (refused otherwise)",
    )


def claim_output(args: argparse.Namespace, kind: str, outputs: Sequence[str]) -> OutputFolder:
    """Claim ``--out`` for the files ``outputs`` (see :class:`~deepcurvature.io.OutputFolder`).

    Under ``torchrun`` rank 0 claims it and the other ranks follow the path it chose.
    """
    return claim_on_rank0(
        lambda: OutputFolder.claim(
            args.out, kind=kind, outputs=outputs, overwrite=args.overwrite, fix="pass --overwrite"
        ),
        outputs,
    )


def add_brief_training_option(p: argparse.ArgumentParser, default: int) -> None:
    """Add ``--train-epochs`` (only without ``--checkpoint``)."""
    p.add_argument(
        "--train-epochs",
        type=int,
        default=None,
        help=(
            f"without --checkpoint: train the model this many epochs first (default {default}; "
            "0: the seeded initial weights)%(default).0s"
        ),
    )


def resolve_brief_training(args: argparse.Namespace, default: int) -> None:
    """Check ``--train-epochs`` against ``--checkpoint`` and fill in its default."""
    if args.train_epochs is not None and args.checkpoint is not None:
        raise CommandError(
            "--train-epochs trains a new network but --checkpoint gives one to analyse: drop "
            "one of them"
        )
    if args.train_epochs is None:
        args.train_epochs = default
    nonnegative("--train-epochs", args.train_epochs)


def train_briefly(
    out: Path, model: str, dataset: str, args: argparse.Namespace, console: Any, verbose: bool
) -> Any:
    """Train ``model`` on ``dataset`` for ``args.train_epochs`` epochs into ``out / "train"``.

    Used when a command is run without ``--checkpoint`` (the offline default: the MLP on digits).

    Returns:
        The :class:`~deepcurvature.training.TrainResult`.
    """
    from ...training import train_network

    if verbose:
        console.print(
            f"No --checkpoint: training {model} on {dataset} for {args.train_epochs} epochs first."
        )
    return train_network(
        out / "train",
        dataset,
        args.data_path,
        model=model,
        epochs=args.train_epochs,
        optimizer="SGD",
        optimizer_kwargs=dict(BRIEF_TRAINING_OPTIMIZER),
        seed=args.seed,
        device=args.device,
        download=args.download,
        verbose=verbose,
        overwrite=bool(getattr(args, "overwrite", False)),
    )


def checkpoint_file(path: str) -> Path:
    """``path`` as a checkpoint file; a run folder is answered with its latest checkpoint."""
    from ...training import list_checkpoints

    p = Path(path)
    if p.is_dir():
        found = list_checkpoints(p)
        hint = f": give one of its checkpoints, e.g. {found[-1]}" if found else ""
        raise CommandError(f"--checkpoint {p} is a folder, not a checkpoint file{hint}")
    if not p.is_file():
        raise CommandError(f"no checkpoint file at {p}")
    return p


def check_dpi(dpi: int) -> None:
    """Refuse a ``--dpi`` outside ``[10, MAX_DPI]`` (a huge one would allocate gigabytes)."""
    if not 10 <= dpi <= MAX_DPI:
        raise CommandError(f"--dpi must be between 10 and {MAX_DPI}, got {dpi}")


def nonnegative(name: str, value: int) -> None:
    """Raise a :class:`CommandError` naming option ``name`` unless ``value`` is an int >= 0."""
    if value < 0:
        raise CommandError(f"{name} must be 0 or a positive integer, got {value}")


def positive(name: str, value: int | None, allow_none: bool = False) -> None:
    """Raise a :class:`CommandError` naming option ``name`` unless ``value`` is a positive int."""
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise CommandError(f"{name} must be a positive integer, got {value}")


def add_curvature_options(p: argparse.ArgumentParser) -> None:
    """Add ``--params`` and ``--bn-mode``, the options that select the curvature matrix."""
    p.add_argument(
        "--params",
        nargs="+",
        default=None,
        metavar="PATTERN",
        help="parameter names or glob patterns (e.g. 'features.*.weight')",
    )
    p.add_argument(
        "--bn-mode",
        choices=["eval", "train"],
        default="eval",
        help="batch norm: running statistics (eval) or batch statistics (train)",
    )


def add_checkpoint_data_options(
    p: argparse.ArgumentParser,
    *,
    batch_size: bool = True,
    subsample_default: str = "the checkpoint's run's subsample, if any",
) -> None:
    """``--batch-size``, ``--subsample``, ``--subsample-seed``: by default the checkpoint's."""
    if batch_size:
        p.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="batch size of the data passes (default: the checkpoint's, or 128)",
        )
    p.add_argument(
        "--subsample",
        type=int,
        default=None,
        help=f"use N random training samples (default: {subsample_default})",
    )
    p.add_argument(
        "--subsample-seed",
        type=int,
        default=None,
        help="seed of the subsample (default: the checkpoint's, or 0)",
    )


def recorded_names(args: argparse.Namespace, checkpoint: Any) -> tuple[dict, str, str]:
    """``(checkpoint config, model, dataset)``: ``--model``/``--dataset``, else the checkpoint's.

    Both names must be known to the registries, and an explicit name that differs from the one
    the checkpoint records is refused (one line, before anything is written).
    """
    from ...data.registry import dataset_description
    from ...models import model_info
    from ...suite._network import check_recorded_names
    from ...training import read_checkpoint

    config: dict = {}
    if checkpoint is not None:
        config = read_checkpoint(checkpoint, map_location="cpu").get("config") or {}
    model = args.model or config.get("model") or "mlp"
    dataset = args.dataset or config.get("dataset") or "digits"
    try:
        model_info(model)
        dataset_description(dataset)
    except (ValueError, KeyError) as exc:
        raise CommandError(str(exc.args[0] if exc.args else exc)) from None
    if checkpoint is not None:
        try:
            check_recorded_names(
                checkpoint, config, dataset=args.dataset, model=args.model, cli=True
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    return config, model, dataset
