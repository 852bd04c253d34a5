"""The per-layer rules of a chain's curvature products: the tangent of each layer's backward.

:func:`~.chain_products.chain_products` runs the backward pass of a chain along ``k`` columns
with these rules. For a layer ``y = layer(x; w)`` with cotangent ``g_y`` (the loss gradient at its
output, kept by the forward pass: :class:`~.chain_forward.Record`) and its tangent ``dg_y``
``(k, n, ...)``:

* linear and convolution layers: ``dg_x = W^T dg_y + V^T g_y`` (:func:`input_cotangent`),
  ``dg_W = dg_y x0^T + g_y x1^T`` (:func:`parameter_products`, the second term from
  :func:`residual_weight`), ``dg_b = sum dg_y``;
* batch norm (running statistics, ``y = gamma s (x - mean) + beta``):
  ``dg_x = gamma s dg_y + dot gamma s g_y``, ``dg_gamma = sum dg_y x_hat + sum g_y s x1``,
  ``dg_beta = sum dg_y``;
* an elementwise activation: ``dg_x = s'(x) dg_y + s''(x) x1 g_y`` (:func:`module_cotangent`);
* a max pool taken first: ``dg`` of the pooled positions back to the full output
  (:func:`spread_pooled`);
* any other parameter-free module (pooling, reshaping): its vector-Jacobian product.

The terms with ``g_y`` are the Hessian's residual (section 3 of the paper); without them the
rules give ``J^T W J v``, the GGN or Fisher product.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import vjp, vmap

from .chain import conv_backward
from .chain_forward import Record
from .chain_tangents import stacked

__all__ = [
    "disjoint_windows",
    "input_cotangent",
    "joint_conv_backward",
    "module_cotangent",
    "parameter_products",
    "residual_weight",
    "spread_pooled",
]

Tensors = dict[str, torch.Tensor]


def residual_weight(r: Record, x1: torch.Tensor) -> torch.Tensor | None:
    """The Hessian's residual term of the layer's weight, ``g x1_j^T``: ``(k, *weight shape)``.

    ``None`` when the weight is not probed. Batch norm: ``sum g s x1_j`` over the samples and
    positions (``s`` its per-channel scale).
    """
    if "weight" not in r.weights:
        return None
    m, g, k = r.layer.module, r.g, x1.shape[0]
    assert g is not None
    if isinstance(m, nn.Linear):
        n_in = r.x0.shape[-1]
        return torch.matmul(g.reshape(-1, g.shape[-1]).T, x1.reshape(k, -1, n_in))
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        W = r.p["weight"]
        return _stack([conv_backward(m, g, x1[j], W, input_grad=False)[1] for j in range(k)])
    return (g.unsqueeze(0) * x1).sum([1, *range(3, x1.dim())])  # (g kept times s: Record.g)


def spread_pooled(
    dg: torch.Tensor, pool: Record, like: torch.Tensor, kept: dict[int, torch.Tensor]
) -> torch.Tensor:
    """``dg`` ``(k, n, C, *pooled)`` added into zeros ``(k, n, C, *spatial)`` at the positions.

    A position taken by several windows gets their sum. Where the windows are disjoint each
    position is taken at most once, and every chunk of the batch writes the same positions:
    the zeros are then made once per batch (``kept``, by pool) and overwritten in place. On
    the first layer of ``benchmarks/hvp.py``'s CNN that saves a 16 MiB fill per column, 3.8 of
    the 5.2 ms the spreading took. The result is valid until the next chunk's spreading.
    """
    k, dims = dg.shape[0], pool.pool_dims
    index = pool.index.flatten(-dims)
    index = index.expand(k, *index.shape)
    if not disjoint_windows(pool, like):
        full = dg.new_zeros(k, *like.shape)
        full.flatten(-dims).scatter_add_(-1, index, dg.flatten(-dims))
        return full
    zeros = kept.get(id(pool))
    if zeros is None or zeros.shape[0] < k or zeros.dtype != dg.dtype:
        zeros = kept[id(pool)] = dg.new_zeros(k, *like.shape)
    full = zeros[:k]
    full.flatten(-dims).scatter_(-1, index, dg.flatten(-dims))
    return full


def disjoint_windows(pool: Record, like: torch.Tensor) -> bool:
    """Whether no position of ``like`` ``(n, C, *spatial)`` lies in two of the pool's windows."""
    m, dims = pool.layer.module, pool.pool_dims
    assert pool.index is not None
    if "Adaptive" in type(m).__name__:  # windows of equal size exactly when they divide
        sizes = zip(like.shape[-dims:], pool.index.shape[-dims:], strict=True)
        return all(a % b == 0 for a, b in sizes)
    kernel, stride, dilation = (_per_dim(v, dims) for v in (m.kernel_size, m.stride, m.dilation))
    return all(s >= d * (q - 1) + 1 for q, s, d in zip(kernel, stride, dilation, strict=True))


def _per_dim(v: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    return (v,) * dims if isinstance(v, int) else tuple(v)


def joint_conv_backward(r: Record, dg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(W^T dg_j, dg_j x0^T)`` of a convolution in one ``convolution_backward`` per column.

    As the gradient pass computes them (both from one call: cheaper than two); ``None`` where
    the separate forms apply (no probed weight, narrow patches). The Hessian's terms
    ``V^T g`` and ``g x1^T`` are added to them separately. For a convolution from 32 to 64
    channels of 16 x 16 and 128 images that took 31 ms per column, against 58 ms for one weight
    gradient of the stacked pairs ``(x0, dg_j), (x1_j, g)`` and two input gradients.
    """
    m = r.layer.module
    if not isinstance(m, (nn.Conv1d, nn.Conv2d)) or "weight" not in r.weights:
        return None
    if r.patches is not None:
        return None
    W, k = r.p["weight"], dg.shape[0]
    inputs, weights = [], []
    for j in range(k):
        gi, gw = conv_backward(m, dg[j], r.x0, W)
        inputs.append(gi)
        weights.append(gw)
    return _stack(inputs), _stack(weights)


def parameter_products(
    r: Record,
    dg: torch.Tensor,
    residual: torch.Tensor | None,
    joint: tuple[torch.Tensor, torch.Tensor] | None = None,
    pooled: torch.Tensor | None = None,
) -> Tensors:
    """``{short name: (k, *shape)}``: the product's part for the layer's probed parameters.

    ``residual``: the Hessian's term ``g x1^T`` of the weight (:func:`residual_weight`).
    ``pooled``: a convolution's ``dg`` before :func:`spread_pooled` (the bias sums it, not the
    larger spread tensor: the sums are the same).
    """
    m, x0, k = r.layer.module, r.x0, dg.shape[0]
    out: Tensors = {}
    if isinstance(m, nn.Linear):
        if "weight" in r.weights:
            dgm = dg.reshape(k, -1, dg.shape[-1])  # (k, M, out)
            w = torch.matmul(dgm.transpose(1, 2), x0.reshape(-1, x0.shape[-1]))
            out["weight"] = w if residual is None else w + residual
        if "bias" in r.weights:
            out["bias"] = dg.reshape(k, -1, dg.shape[-1]).sum(1)
        return out
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if "weight" in r.weights:
            w = _conv_weight_products(r, dg, joint)
            out["weight"] = w if residual is None else w.add_(residual)
        if "bias" in r.weights:
            src = dg if pooled is None else pooled
            out["bias"] = src.sum([1, *range(3, src.dim())])
        return out
    # batch norm
    dims = [1, *range(3, dg.dim())]  # the samples and positions of (k, n, C, ...)
    if "weight" in r.weights:
        assert r.x_hat is not None
        w = (dg * r.x_hat.unsqueeze(0)).sum(dims)
        out["weight"] = w if residual is None else w + residual
    if "bias" in r.weights:
        out["bias"] = dg.sum(dims)
    return out


def _conv_weight_products(
    r: Record, dg: torch.Tensor, joint: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """``dg_j x0^T`` for a convolution: ``(k, out, in, *kernel)``."""
    m, x0, k = r.layer.module, r.x0, dg.shape[0]
    W = r.p["weight"]
    if joint is not None:
        return joint[1]
    if r.patches is not None:
        # (k, n, out, L) x (n, C k, L): sum over samples and positions
        dgf = dg.flatten(3)  # (k, n, out, L)
        return torch.matmul(dgf, r.patches.transpose(1, 2)).sum(1).reshape(k, *W.shape)
    return _stack([conv_backward(m, dg[j], x0, W, input_grad=False)[1] for j in range(k)])


def input_cotangent(
    r: Record,
    dg: torch.Tensor,
    cols: Tensors,
    joint: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``dg_x = J_x^T dg_y (+ dJ_x^T g_y)`` of a layer with parameters, ``(k, n, ...)``."""
    m, x0, k = r.layer.module, r.x0, dg.shape[0]
    g = r.g
    V = cols.get(r.weights["weight"]) if "weight" in r.weights else None
    if isinstance(m, nn.Linear):
        W = r.p["weight"]
        out = torch.matmul(dg, W)
        if g is not None and V is not None:
            out = out + torch.matmul(g.reshape(-1, g.shape[-1]), V).reshape(k, *x0.shape)
        return out
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        input_grad = (
            torch.nn.grad.conv1d_input if isinstance(m, nn.Conv1d) else torch.nn.grad.conv2d_input
        )
        if joint is not None:
            out = joint[0]
        else:
            size = (k * x0.shape[0], *x0.shape[1:])
            out = input_grad(size, r.p["weight"], stacked(dg), m.stride, m.padding, m.dilation)
            out = out.reshape(k, *x0.shape)
        if g is not None and V is not None:
            out = out + _transposed_products(m, V, g, x0)
        return out
    # batch norm (its g is kept times rsqrt(var + eps): Record.g)
    assert r.scale is not None
    out = dg * r.scale
    if g is not None and V is not None:
        shape = (k, 1, -1, *([1] * (x0.dim() - 2)))
        out.addcmul_(g.unsqueeze(0), V.reshape(shape))
    return out


def _transposed_products(
    m: nn.Module, V: torch.Tensor, g: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """``V_j^T g`` for every ``j``: ``(k, n, in, *spatial)`` from one transposed convolution."""
    k = V.shape[0]
    input_grad = (
        torch.nn.grad.conv1d_input if isinstance(m, nn.Conv1d) else torch.nn.grad.conv2d_input
    )
    # weight (out, k in, *kernel) as a convolution from k * in channels to out channels
    W = V.transpose(0, 1).reshape(V.shape[1], k * V.shape[2], *V.shape[3:])
    size = (x0.shape[0], k * x0.shape[1], *x0.shape[2:])
    back = input_grad(size, W, g, m.stride, m.padding, m.dilation)  # (n, k in, *spatial)
    return back.unflatten(1, (k, x0.shape[1])).transpose(0, 1)


def module_cotangent(r: Record, dg: torch.Tensor, x1: torch.Tensor | None) -> torch.Tensor:
    """``dg_x`` of a parameter-free module, ``(k, n, ...)``."""
    if r.d1 is not None:
        out = dg * r.d1
        if r.d2 is not None and r.g is not None and x1 is not None:
            out.addcmul_(r.g.unsqueeze(0), x1)  # g s''(x0) x1 (g kept times s'': Record.g)
        return out
    if _global_average(r):  # the mean's pullback: dg / positions, broadcast (a view)
        spatial = r.x0.shape[2:]
        return (dg / math.prod(spatial)).expand(*dg.shape[:3], *spatial)
    if r.pullback is None:  # once per batch: the module is linear in its input here
        # ``forward``, not the module: global module hooks (``FlopCounterMode``) would put
        # gradient hooks on its output, which fail inside ``vmap``
        r.pullback = vjp(r.layer.module.forward, r.x0)[1]
    pullback = r.pullback
    return vmap(lambda t: pullback(t)[0])(dg)


def _global_average(r: Record) -> bool:
    """Whether ``r`` averages each channel of ``(n, C, *spatial)`` over all its positions."""
    m = r.layer.module
    if not isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        return False
    return r.x0.dim() >= 3 and r.y0 is not None and all(s == 1 for s in r.y0.shape[2:])


def _stack(ts: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(ts)``; one tensor as a view (no copy: a chunk of one column)."""
    return ts[0].unsqueeze(0) if len(ts) == 1 else torch.stack(ts)
