"""Per-sample squared Jacobian products of chain networks, layer by layer (no per-sample passes).

The exact diagonals of :mod:`.exact_diagonals` need, for ``S`` output-space vectors ``w_{s,i}``
per sample ``i``, the sums ``sum_i weight_{s,i} (J_i^T w_{s,i})^2`` (elementwise, ``P``
entries). Evaluating every sample on its own (``vmap``) works for any network but runs
``n_b * S`` small backward passes per batch and holds ``chunk * S * P`` numbers. For an
``nn.Sequential`` chain of linear, convolution and batch-norm layers (with running statistics)
and parameter-free layers that act on each sample alone, the per-sample gradient of a layer's
weights is a product of two things a batched backward pass already has (BackPACK's approach):

* ``Linear``: ``dW_i = sum_t g_{i,t} x_{i,t}^T`` (``t``: extra leading dimensions of the
  sample, e.g. sequence positions), ``db_i = sum_t g_{i,t}``;
* ``Conv1d``/``Conv2d`` (``groups=1``, zero padding): ``dW_i = g_i unfold(x_i)^T`` (one
  batched matrix product), ``db_i = sum over positions of g_i``;
* ``BatchNorm`` with running statistics: ``dgamma_i = sum over positions of g_i x_hat_i``,
  ``dbeta_i = sum over positions of g_i``;

with ``x_i`` the layer's input and ``g_i = J_{out,i}^T w_i`` the cotangent at its output. One
forward pass per batch and one batched backward pass per vector ``s`` (to the layer outputs
only: no weight gradients) give every ``g``. Samples must not interact, which the chain check
(:func:`chain_layers`) guarantees for the listed modules; anything else returns ``None`` and the
caller evaluates per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..operators.base import CurvatureOperator
from ..operators.batches import Batch
from ..operators.chain import (
    Layer,
    batch_norm_scale,
    chain_layers,
    channel,
    conv_unfold,
    layer_forward,
)

__all__ = ["chain_layers", "layer_squares"]

Tensors = dict[str, torch.Tensor]

#: bytes of the per-sample weight gradients formed at once (samples are taken in chunks)
CHUNK_BYTES = 64 * 2**20
#: bytes of layer inputs (unfolded for convolutions) kept across a batch's backward passes
CACHE_BYTES = 512 * 2**20


def _layer_input(layer: Layer, p: Tensors, x: torch.Tensor) -> torch.Tensor:
    """What the per-sample gradients multiply the cotangents with (computed once per batch).

    ``Linear``: the input ``(n, T, in)``; convolutions: the unfolded input ``(n, L, C k)``; batch
    norm: the normalised input ``x_hat``.
    """
    m, n = layer.module, x.shape[0]
    if isinstance(m, nn.Linear):
        return x.reshape(n, -1, x.shape[-1])
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return conv_unfold(m, x).transpose(1, 2)
    return (x - channel(p["running_mean"], x)) * batch_norm_scale(m, p, x)


def _input_numel(layer: Layer, x: torch.Tensor, out: torch.Tensor) -> int:
    """Elements of :func:`_layer_input` for input ``x`` and output ``out``, without forming it."""
    m = layer.module
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):  # (n, positions, C k)
        return out.numel() // m.out_channels * m.in_channels * math.prod(m.kernel_size)
    return x.numel()


def _per_sample_grads(
    layer: Layer, p: Tensors, xin: torch.Tensor, g: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``{short name: (n, *shape)}`` per-sample gradients; ``xin`` from :func:`_layer_input`."""
    m, n = layer.module, g.shape[0]
    out: dict[str, torch.Tensor] = {}
    if isinstance(m, nn.Linear):
        gs = g.reshape(n, -1, g.shape[-1])
        out["weight"] = torch.bmm(gs.transpose(1, 2), xin)
        out["bias"] = gs.sum(1)
    elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
        gs = g.reshape(n, g.shape[1], -1)  # (n, Cout, L)
        out["weight"] = torch.bmm(gs, xin).reshape(n, *p["weight"].shape)
        out["bias"] = gs.sum(2)
    else:
        dims = tuple(range(2, g.dim()))
        out["weight"] = (g * xin).sum(dims) if dims else g * xin
        out["bias"] = g.sum(dims) if dims else g
    return out


def layer_squares(
    op: CurvatureOperator,
    layers: list[Layer],
    state: Tensors,
    fixed: Tensors,
    batch: Batch,
    cotangents: Callable[[torch.Tensor, Batch], tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """``sum_i weights[s, i] * (J_i^T W[s, i])**2`` for each ``s``: ``(S, P)`` float64.

    ``cotangents(output, batch) -> (W, weights)`` makes the ``(S, n_b, *out)`` output-space
    vectors and their ``(S, n_b)`` weights from the batch's output, as in ``_squares_pass`` of
    :mod:`.exact_diagonals`. For a chain from :func:`chain_layers`: one forward pass of the batch
    (its output also feeds ``cotangents``) and one backward pass per ``s`` to the outputs of the
    layers with selected parameters.
    """
    tensors = {**fixed, **state}
    offsets, o = {}, 0
    for name, numel in zip(op.layout.names, op.layout.numels, strict=True):
        offsets[name] = (o, o + numel)
        o += numel
    selected = set(state)
    records: list[tuple[Layer, Tensors, torch.Tensor, torch.Tensor]] = []
    with torch.enable_grad():
        h = batch.inputs
        for layer in layers:
            if not layer.has_params:
                h = layer.module(h)
                continue
            p = layer.tensors(tensors)
            if not any(layer.qualified(k) in selected for k in p):
                h = layer_forward(layer, p, h)
                continue
            x = h if h.requires_grad else h.detach().requires_grad_()  # the graph starts here
            h = layer_forward(layer, p, x)
            records.append((layer, p, x, h))
        output = h
    W, weights = cotangents(output.detach(), batch)
    S = W.shape[0]
    out = torch.zeros((S, op.num_params), dtype=torch.float64, device=op.device)
    if not records:
        return out
    outputs = [r[3] for r in records]
    # what multiplies the cotangents, kept across the S backward passes while it fits in
    # CACHE_BYTES (unfolded convolution inputs are k times the activations), else recomputed
    inputs: list[torch.Tensor | None] = []
    kept = 0
    for layer, p, x, h in records:
        size = _input_numel(layer, x, h) * x.element_size()
        if S > 1 and kept + size <= CACHE_BYTES:
            kept += size
            inputs.append(_layer_input(layer, p, x.detach()))
        else:
            inputs.append(None)
    for s in range(S):
        cots = torch.autograd.grad(output, outputs, W[s], retain_graph=s < S - 1)
        w = weights[s]
        for (layer, p, x, _), xin, g in zip(records, inputs, cots, strict=True):
            if xin is None:
                xin = _layer_input(layer, p, x.detach())
            grads = _chunked_squares(layer, p, xin, g, w)
            del xin
            for short, sq in grads.items():
                name = layer.qualified(short)
                if name in offsets:
                    a, b = offsets[name]
                    out[s, a:b] += sq
    return out


def _chunked_squares(
    layer: Layer, p: Tensors, xin: torch.Tensor, g: torch.Tensor, w: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``{short name: sum_i w_i * (per-sample gradient_i)**2}`` (float64), in sample chunks.

    The squares of a chunk are summed in the operator's dtype (a weighted sum of at most a
    chunk of non-negative terms for a positive semi-definite output Hessian: relative error
    about ``chunk * eps``), the chunks in float64.
    """
    n = g.shape[0]
    per_sample = sum(t.numel() for t in p.values()) * g.element_size()
    chunk = max(1, min(n, CHUNK_BYTES // max(1, per_sample)))
    w = w.to(g.dtype)
    acc: dict[str, torch.Tensor] = {}
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        for short, gi in _per_sample_grads(layer, p, xin[a:b], g[a:b]).items():
            if short not in p:
                continue
            flat = gi.reshape(b - a, -1)
            sq = (w[a:b] @ flat.square()).double()  # (K,)
            acc[short] = acc[short] + sq if short in acc else sq
    return acc
