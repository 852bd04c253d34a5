"""What :func:`~.train.train_network` returns: the model, optimiser, statistics and files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class TrainResult:
    """What :func:`train_network` produced.

    Attributes:
        dir: the run folder (``None`` for an in-memory run).
        model: the trained model (the last iterate).
        optimizer: the optimiser, with its state.
        stats: one dict per completed epoch (the rows of ``stats.json``).
        checkpoints: the checkpoint files written by this call, in order.
        config: the JSON-serialisable run description stored in checkpoints.
        swa_model: the ``AveragedModel`` when ``swa=True``.
        warnings: the warning records of the run (``{"epoch", "kind", "message"}``, as in
            ``stats.json``).
    """

    dir: Path | None
    model: nn.Module
    optimizer: torch.optim.Optimizer
    stats: list[dict[str, Any]]
    checkpoints: list[Path] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    swa_model: nn.Module | None = None
    warnings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_checkpoint(self) -> Path | None:
        """The last checkpoint written, or ``None``."""
        return self.checkpoints[-1] if self.checkpoints else None

    def column(self, name: str) -> list[Any]:
        """The values of one statistic over the epochs (``None`` where absent)."""
        return [row.get(name) for row in self.stats]
