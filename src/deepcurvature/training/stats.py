"""Per-epoch statistics: evaluation, weight norms, and the ``stats.json`` file.

``stats.json`` is one JSON object ``{"format": "deepcurvature-stats", "version": 1, "config":
{...}, "columns": [...], "rows": [{...}, ...]}`` with one row per completed epoch, rewritten
atomically after every epoch (so it is always valid JSON). Columns: ``epoch`` (epochs completed,
from 1), ``lr`` (learning rate at the start of the epoch), ``train_loss``, ``train_accuracy``
(running means over the epoch's batches in training mode), ``test_loss``, ``test_accuracy``,
``test_top5_accuracy`` (``null`` when fewer than 5 classes, and every test column is ``null`` on
epochs without evaluation, see ``eval_freq``), ``time`` (seconds of training in the epoch),
``eval_time``, ``weight_l2``, ``weight_linf``, and when used ``swa_test_loss``,
``swa_test_accuracy``, ``swa_test_top5_accuracy``, ``swa_n_averaged`` (SWA) or
``avg_test_loss``, ``avg_test_accuracy``, ``avg_test_top5_accuracy``, ``n_averaged`` (Gadam).
Accuracies are fractions in [0, 1]. Non-finite numbers are written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import atomic_write_text

__all__ = ["StatsLog", "evaluate", "weight_norms"]

BASE_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "test_top5_accuracy",
    "time",
    "eval_time",
    "weight_l2",
    "weight_linf",
]


def _is_classification(out: torch.Tensor, y: torch.Tensor) -> bool:
    return out.dim() == 2 and y.dim() == 1 and not y.is_floating_point()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device | str | None = None,
) -> dict[str, float | None]:
    """Mean loss, accuracy and top-5 accuracy of ``model`` (in eval mode) over ``loader``.

    The loss is weighted by batch size (``loss_fn`` must use mean reduction), so the result is
    the mean over samples. Per-batch losses and hit masks stay on the device and are reduced
    and read once at the end.

    Returns:
        ``{"loss", "accuracy", "top5_accuracy", "count"}``; accuracies are ``None`` when outputs
        are not ``(B, C)`` logits with integer targets, top-5 when ``C < 5``.
    """
    was_training = model.training
    model.eval()
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    losses: list[torch.Tensor] = []
    sizes: list[int] = []
    hits: list[torch.Tensor] = []
    hits5: list[torch.Tensor] = []
    classify, top5 = None, None
    try:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            out = model(x)
            losses.append(loss_fn(out, y))
            sizes.append(y.shape[0])
            if classify is None:
                classify = _is_classification(out, y)
                top5 = classify and out.shape[1] >= 5
            if classify:
                hits.append(out.argmax(dim=1) == y)
                if top5:
                    hits5.append((out.topk(5, dim=1).indices == y.unsqueeze(1)).any(dim=1))
    finally:
        model.train(was_training)
    if not sizes:
        raise ValueError("the evaluation loader is empty")
    # reduced once: sample-weighted loss, hit counts, one host read
    weights = torch.tensor(sizes, dtype=torch.float64, device=losses[0].device)
    parts = [torch.stack(losses).double().mul_(weights).sum()]
    parts += [torch.cat(h).sum().double() for h in (hits, hits5) if h]
    values = torch.stack(parts).tolist()
    count = sum(sizes)
    return {
        "loss": values[0] / count,
        "accuracy": values[1] / count if classify else None,
        "top5_accuracy": values[2] / count if top5 else None,
        "count": count,
    }


@torch.no_grad()
def weight_norms(model: nn.Module) -> tuple[float, float]:
    """``(L2 norm, L-inf norm)`` of all the model's parameters as one vector.

    The norm is accumulated in float64. Parameters are concatenated per device in chunks of at
    most ``2**22`` elements (two reductions per chunk instead of two per tensor), and the two
    numbers are read with one host synchronisation.
    """
    params = [p.detach().reshape(-1) for p in model.parameters() if p.numel()]
    if not params:
        return 0.0, 0.0
    norms, maxima = [], []
    chunk: list[torch.Tensor] = []
    size = 0
    for i, p in enumerate(params):
        chunk.append(p)
        size += p.numel()
        if i + 1 == len(params) or size >= _NORM_CHUNK or params[i + 1].device != p.device:
            flat = torch.cat(chunk) if len(chunk) > 1 else p
            norms.append(torch.linalg.vector_norm(flat, dtype=torch.float64).cpu())
            maxima.append(flat.abs().max().double().cpu())
            chunk, size = [], 0
    if len(norms) == 1:
        both = torch.stack([norms[0], maxima[0]]).tolist()
    else:
        both = torch.stack([torch.stack(norms).norm(), torch.stack(maxima).max()]).tolist()
    return both[0], both[1]


_NORM_CHUNK = 2**22


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class StatsLog:
    """The growing table of per-epoch rows, mirrored to ``stats.json`` after every append.

    Args:
        path: the JSON file, or ``None`` to keep the rows in memory only.
        config: the run description stored beside the rows.
        rows: initial rows (from a resumed checkpoint).
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        config: dict[str, Any] | None = None,
        rows: list[dict[str, Any]] | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.config = dict(config or {})
        self.rows: list[dict[str, Any]] = [dict(r) for r in (rows or [])]

    def columns(self) -> list[str]:
        """Column names: the base ones, then any extra ones in order of appearance."""
        cols = list(BASE_COLUMNS)
        for r in self.rows:
            cols.extend(k for k in r if k not in cols)
        return cols

    def append(self, row: dict[str, Any]) -> None:
        """Add a row and rewrite the file atomically."""
        self.rows.append({k: _clean(v) for k, v in row.items()})
        self.write()

    def write(self) -> None:
        """Rewrite the file (no-op without a path)."""
        if self.path is None:
            return
        doc = {
            "format": "deepcurvature-stats",
            "version": 1,
            "config": self.config,
            "columns": self.columns(),
            "rows": self.rows,
        }
        atomic_write_text(self.path, json.dumps(doc, indent=1, allow_nan=False) + "\n")

    @staticmethod
    def load(path: str | os.PathLike) -> dict[str, Any]:
        """Read a ``stats.json`` file (``{"config", "columns", "rows", ...}``)."""
        return json.loads(Path(path).read_text())
