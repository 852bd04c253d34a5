"""Pieces shared by several subcommands (not a subcommand: the name starts with ``_``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["BRIEF_TRAINING_OPTIMIZER", "train_briefly"]

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
