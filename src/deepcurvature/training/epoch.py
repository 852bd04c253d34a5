"""One training epoch over the loader, and the test evaluation of the iterate and its averages."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import DataLoader

from ..optim import IterateAveraging
from ..progress import ProgressBar
from .divergence import _diverged
from .stats import evaluate


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    device: torch.device,
    progress: ProgressBar,
    lr_at: Callable[[int], None] | None,
    epoch: int,
) -> tuple[float, float | None, float]:
    """One pass over ``loader``; returns ``(mean loss, accuracy, loss of the first batch)``.

    Each batch's loss is read once (one host read per step) and checked before the backward
    pass: a non-finite loss, or a ``FloatingPointError`` / ``LinAlgError`` inside the
    optimiser's step, raises :class:`TrainingDivergedError` naming ``epoch`` (from 1) and the
    step. The hit masks stay on the device and are reduced once per epoch.
    """
    model.train()
    total = 0.0
    sizes: list[int] = []
    hits: list[torch.Tensor] = []
    classify = None
    first = math.nan
    n_batches = len(loader)
    info_every = max(1, n_batches // 10)
    for b, (x, y) in enumerate(loader):
        if lr_at is not None:
            lr_at(b)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        loss = loss_fn(out, y)
        value = loss.item()
        where = f"epoch {epoch}, step {b + 1} of {n_batches}"
        if not math.isfinite(value):
            raise _diverged(where, f"the training loss is {value}", optimizer)
        if b == 0:
            first = value
        loss.backward()
        try:
            optimizer.step()
        except (FloatingPointError, torch.linalg.LinAlgError) as exc:
            raise _diverged(where, f"in the optimizer's step: {exc}", optimizer) from exc
        total += value * y.shape[0]
        sizes.append(y.shape[0])
        if classify is None:
            classify = out.dim() == 2 and y.dim() == 1 and not y.is_floating_point()
        if classify:
            hits.append(out.detach().argmax(dim=1) == y)
        progress.advance()
        if progress.verbose and ((b + 1) % info_every == 0 or b + 1 == n_batches):
            mean, acc = _epoch_means(total, sizes, hits)
            text = f"loss {mean:.4f}" + (f"  acc {acc:.3f}" if acc is not None else "")
            progress.set_info(text)
    if not sizes:
        raise ValueError("the training loader is empty")
    return (*_epoch_means(total, sizes, hits), first)


def _epoch_means(
    total: float, sizes: list[int], hits: list[torch.Tensor]
) -> tuple[float, float | None]:
    """Sample-weighted mean of the batch losses and the accuracy (one host read)."""
    count = sum(sizes)
    if not hits:
        return total / count, None
    return total / count, float(torch.cat(hits).sum()) / count


def _evaluate_all(
    net: nn.Module,
    swa_model: AveragedModel | None,
    opt: torch.optim.Optimizer,
    loaders: tuple[DataLoader, DataLoader],
    loss_fn: Callable,
    dev: torch.device,
    bn: bool,
    evaluate: Callable[..., dict[str, Any]] = evaluate,
) -> dict[str, Any]:
    """Test statistics of the iterate, and of the SWA / Gadam averages when they exist."""
    train_loader, test_loader = loaders
    t0 = time.perf_counter()
    res = evaluate(net, test_loader, loss_fn, dev)
    row = {
        "test_loss": res["loss"],
        "test_accuracy": res["accuracy"],
        "test_top5_accuracy": res["top5_accuracy"],
    }
    if swa_model is not None and int(swa_model.n_averaged) > 0:
        if bn:  # the averaged weights need their own batch-norm statistics
            update_bn(train_loader, swa_model, device=dev)
        sres = evaluate(swa_model, test_loader, loss_fn, dev)
        row.update(
            swa_test_loss=sres["loss"],
            swa_test_accuracy=sres["accuracy"],
            swa_test_top5_accuracy=sres["top5_accuracy"],
        )
    if isinstance(opt, IterateAveraging) and opt.n_averaged > 0:
        with opt.averaged():
            ares = evaluate(net, test_loader, loss_fn, dev)
        row.update(
            avg_test_loss=ares["loss"],
            avg_test_accuracy=ares["accuracy"],
            avg_test_top5_accuracy=ares["top5_accuracy"],
        )
    row["eval_time"] = time.perf_counter() - t0
    return row
