"""Per-epoch statistics: evaluation, weight norms, and the ``stats.json`` file.

``stats.json`` is one JSON object ``{"format": "deepcurvature-stats", "version": 1, "config":
{...}, "columns": [...], "rows": [{...}, ...], "initial_loss": ..., "warnings": [...]}`` with one
row per completed epoch, rewritten atomically after every epoch (so it is always valid JSON).
``initial_loss`` is the training loss of the run's first batch, before any update (``null`` when
unknown); ``warnings`` lists ``{"epoch", "kind", "message"}`` records of what went wrong:
``"loss_growth"`` when an epoch's mean training loss exceeds :data:`LOSS_GROWTH_FACTOR` times the
initial loss (see :func:`loss_growth_warning`), ``"diverged"`` when the run stopped on a
non-finite loss or update. Columns: ``epoch`` (epochs completed,
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
from ..io.results import read_json

__all__ = ["LOSS_GROWTH_FACTOR", "StatsLog", "evaluate", "loss_growth_warning", "weight_norms"]

#: An epoch whose mean training loss is more than this many times the initial loss (the loss of
#: the run's first batch, before any update) is reported: the loss grew by two orders of
#: magnitude, which a converging run never does, so the run has (almost surely) diverged even
#: when the numbers are still finite.
LOSS_GROWTH_FACTOR = 100.0

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


def loss_growth_warning(
    epoch: int,
    train_loss: float,
    initial_loss: float | None,
    previous_loss: float | None = None,
    *,
    lr: float | None = None,
    factor: float = LOSS_GROWTH_FACTOR,
) -> str | None:
    """The warning for an epoch whose training loss grew by orders of magnitude, else ``None``.

    Args:
        epoch: the epoch (from 1), for the message.
        train_loss: its mean training loss.
        initial_loss: the training loss before any update; no warning when unknown or <= 0.
        previous_loss: the previous epoch's mean training loss: no new warning while the loss
            stays above the threshold (one warning per excursion, not one per epoch).
        lr: the epoch's learning rate, for the message.
        factor: the threshold, as a multiple of ``initial_loss``.
    """
    if initial_loss is None or not initial_loss > 0 or not math.isfinite(initial_loss):
        return None
    limit = factor * initial_loss
    if not train_loss > limit or (previous_loss is not None and previous_loss > limit):
        return None
    now = f" (lr={lr:.3g})" if lr is not None else ""
    return (
        f"the training loss grew by orders of magnitude: {train_loss:.3g} in epoch {epoch} is "
        f"{train_loss / initial_loss:.3g} times the initial loss {initial_loss:.3g} (warning "
        f"threshold: {factor:g} times); the run has probably diverged: lower the learning "
        f"rate{now}"
    )


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
        warnings: initial warning records ``{"epoch", "kind", "message"}``.
        initial_loss: the training loss before any update.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        config: dict[str, Any] | None = None,
        rows: list[dict[str, Any]] | None = None,
        *,
        warnings: list[dict[str, Any]] | None = None,
        initial_loss: float | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.config = dict(config or {})
        self.rows: list[dict[str, Any]] = [dict(r) for r in (rows or [])]
        self.warnings: list[dict[str, Any]] = [dict(w) for w in (warnings or [])]
        self.initial_loss = initial_loss

    def add_warning(self, epoch: int, kind: str, message: str) -> None:
        """Record a warning (written with the next :meth:`write` or :meth:`append`)."""
        self.warnings.append({"epoch": int(epoch), "kind": kind, "message": message})

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
            "initial_loss": _clean(self.initial_loss),
            "warnings": self.warnings,
        }
        atomic_write_text(self.path, json.dumps(doc, indent=1, allow_nan=False) + "\n")

    @staticmethod
    def load(path: str | os.PathLike) -> dict[str, Any]:
        """Read a ``stats.json`` file (``{"config", "columns", "rows", "warnings", ...}``)."""
        doc = read_json(path, what="stats.json file")
        if not isinstance(doc, dict):
            raise ValueError(f"{path} is not a valid stats.json file: its JSON is not an object")
        return doc
