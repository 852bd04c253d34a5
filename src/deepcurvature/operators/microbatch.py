"""Micro-batches: a batch's rows evaluated in parts, for wide GGN and Fisher blocks on the CPU.

A block of ``k`` columns evaluated together (``vmap``) creates tensors of ``k x`` the batch's
activations; on the CPU tensors of tens of MiB are fresh memory maps at every use, whose page
faults then dominate the product (:mod:`.allocator`). The GGN and Fisher products
``J^T W(f, J V)`` can instead linearise the output of each micro-batch of rows separately (the
forward pass of every micro-batch is recorded once, the ``k`` tangents of a micro-batch are
``vmap``-ed), concatenate ``f`` and ``J V``, form the output-space weights ``W`` on the WHOLE batch
(so any loss, weighted or not, is treated exactly as without micro-batches), and sum the
micro-batches' ``J^T W``. On the CNN of ``benchmarks/hvp.py`` (16 MiB activations per batch of
128) 16 columns in micro-batches of 8 rows cost about 1.1 gradients per column, against about
1.45 one column at a time (noisy measurements, one thread).

This is exact only when every output row depends on its own input row alone. That holds for an
``nn.Sequential`` of the standard per-sample layers of :data:`PER_SAMPLE_MODULES` with batch norm
on its running statistics (``bn_mode="eval"``); any other model (a custom ``forward``, batch
statistics) is evaluated on whole batches.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .batches import Batch

__all__ = ["PER_SAMPLE_MODULES", "micro_batches", "rows_are_independent"]

#: module types whose forward treats the rows (dim 0) of its input independently (batch norm
#: only with running statistics)
PER_SAMPLE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)


def rows_are_independent(model: nn.Module, bn_mode: str) -> bool:
    """Whether every output row of ``model`` depends on its own input row alone (conservative).

    True for an ``nn.Sequential`` (standard ``forward``) made only of :data:`PER_SAMPLE_MODULES`
    (exact types, no hooks), batch norm in ``bn_mode="eval"``.
    """
    if bn_mode != "eval" or type(model) is not nn.Sequential:
        return False
    for m in model.modules():
        if type(m) not in PER_SAMPLE_MODULES or "forward" in m.__dict__:
            return False
        if m._forward_hooks or m._forward_pre_hooks:
            return False
        if isinstance(m, nn.Flatten) and m.start_dim == 0:
            return False
    return True


def micro_batches(batch: Batch, size: int) -> list[Batch] | None:
    """``batch`` split into consecutive parts of ``size`` rows (the last may be smaller).

    ``None`` when the inputs are not a tensor (or a tuple/dict of tensors) with the batch's
    number of rows, or when ``size`` does not split the batch.
    """
    n = batch.n
    if size >= n or size < 1:
        return None
    inputs = batch.inputs
    tensors = (
        list(inputs.values())
        if isinstance(inputs, Mapping)
        else list(inputs)
        if isinstance(inputs, tuple)
        else [inputs]
    )
    if not all(isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == n for t in tensors):
        return None
    parts = []
    for lo in range(0, n, size):
        hi = min(n, lo + size)
        if isinstance(inputs, Mapping):
            x = {k: v[lo:hi] for k, v in inputs.items()}
        elif isinstance(inputs, tuple):
            x = tuple(v[lo:hi] for v in inputs)
        else:
            x = inputs[lo:hi]
        parts.append(Batch(x, batch.targets[lo:hi], hi - lo, batch.index))
    return parts
