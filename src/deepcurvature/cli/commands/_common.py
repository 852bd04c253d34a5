"""Pieces shared by several subcommands (not a subcommand: the name starts with ``_``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import CommandError

__all__ = ["BRIEF_TRAINING_OPTIMIZER", "add_curvature_options", "positive", "train_briefly"]

BRIEF_TRAINING_OPTIMIZER = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


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
        overwrite=True,
    )


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
