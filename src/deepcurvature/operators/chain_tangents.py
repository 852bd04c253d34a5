"""First-order tangents through a layer chain: the forward machinery of the chain routes.

From a batch's recorded forward pass (:mod:`.chain_forward`), the tangents ``x1 = d x / dt`` of
``k`` columns ``v`` are pushed through the chain (``W x1 + V x0`` for a layer with parameters),
and one backward pass gives the gradients at the layers' outputs. Both chain routes use it: the
Taylor-mode quadratic forms (:mod:`.taylor`) and the products written out layer by layer
(:mod:`.chain_products`).

Two rewrites make the tangents cheap on image networks. Max pooling after position-wise layers
(batch norm, activations) is taken first (:func:`gather_early`), so those layers act on the
pooled positions only (after monotone ones the forward pass has already done so). Convolutions
with short patches (``in_channels x kernel <= NARROW_PATCH``, the first layer of an image
network) take the columns' weight tangents ``V x0`` as matrix products with the unfolded input,
which beats a convolution with three input channels several times over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vmap

from .chain import batch_norm_scale
from .chain_forward import Record, pick, pointwise

__all__ = [
    "TANGENT_CHUNK_BYTES",
    "batch_norm_tangent",
    "chunk_columns",
    "forward_tangents",
    "gather_early",
    "gathered_gradients",
    "input_tangent",
    "layer_gradients",
    "module_tangent",
    "needs_gradient",
    "stacked",
    "weight_tangent",
    "widened_masks",
]

Tensors = dict[str, torch.Tensor]

#: bytes of a chunk's largest tangent (``chunk x`` the largest activation): probes are taken in
#: chunks of at most this size
TANGENT_CHUNK_BYTES = 16 * 2**20
#: parameter-free modules linear in their input and acting on each sample alone: the tangent of
#: ``k`` probes is the module applied to the ``(k * n, ...)`` stack
_LINEAR = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
)


def gather_early(records: list[Record]) -> list[tuple[Record, list[Record], Record]]:
    """Move max pooling before the position-wise layers that precede it.

    In ``conv -> batch norm -> ReLU -> max pool`` the tangent is needed at the pooled positions
    only, and every position-wise operation commutes with taking positions: the convolution's
    output tangent is gathered at once and batch norm and the activation act on a tensor
    ``prod(kernel)`` times smaller (their per-position tensors ``x_hat``, ``s'``, ``s''`` are
    gathered once per batch). Their second-order sources ``<g, .>`` need the gradients in the
    pooled positions, which :func:`gathered_gradients` forms from the gradient at the pool's
    output (overlapping windows that take a position twice count it twice, as they should).

    Returns:
        The runs ``(producer, position-wise layers, pool)`` rewritten.
    """
    runs = []
    for j, pool in enumerate(records):
        if pool.index is None:
            continue
        i = j - 1
        while i >= 0 and records[i].tangent_in and pointwise(records[i]):
            i -= 1
        mids = records[i + 1 : j]
        if i < 0 or not mids:
            continue
        if not pool.absorbed:  # (already taken by the forward pass: see _pool_first)
            index, dims = pool.index, pool.pool_dims
            for r in mids:
                r.x_hat = None if r.x_hat is None else pick(r.x_hat, index, dims)
                r.d1 = None if r.d1 is None else pick(r.d1, index, dims)
                r.d2 = None if r.d2 is None else pick(r.d2, index, dims)
            records[i].gather = pool
            pool.absorbed = True
        runs.append((records[i], mids, pool))
    return runs


def gathered_gradients(mids: list[Record], pool: Record) -> None:
    """The gradients at the outputs of the position-wise layers ``mids``, in pooled positions.

    From the gradient at the pool's output backwards: through an activation times ``s'``,
    through batch norm times its per-channel scale.
    """
    running = pool.g
    for i in range(len(mids) - 1, -1, -1):
        r = mids[i]
        if running is None:
            return
        if needs_gradient(r):
            r.g = _kept_gradient(r, running)
        if not any(needs_gradient(q) for q in mids[:i]):
            return
        if r.d1 is not None:
            running = running * r.d1
        elif r.scale is not None:
            running = running * r.scale


def _kept_gradient(r: Record, g: torch.Tensor) -> torch.Tensor:
    """The gradient ``g`` at the layer's output as its record keeps it (:attr:`Record.g`).

    Batch norm's is kept times ``rsqrt(running_var + eps)``: each of its second-order terms
    (the weight's ``sum g s x1`` and the input's ``g s gamma_dot``) takes that factor. A smooth
    activation's is kept times ``s''(x0)``, as in its term ``g s''(x0) x1``. The factor is
    applied here once per batch instead of once per column.
    """
    if r.layer.has_params and r.scale is not None:
        return g * batch_norm_scale(r.layer.module, r.p, r.x0)
    if r.d2 is not None:
        return g * r.d2
    return g


def needs_gradient(r: Record) -> bool:
    """Whether the layer has a second-order source (a probed weight, or a smooth activation)."""
    if not r.tangent_in:
        return False
    if r.layer.has_params:
        return any(short != "bias" for short in r.weights)
    return r.d2 is not None


def batch_norm_tangent(r: Record, x1: torch.Tensor, probes: Tensors) -> torch.Tensor:
    """``x1 * scale + dot gamma * x_hat + dot beta`` of batch norm, in two passes."""
    k = x1.shape[0]
    shape = (k, 1, -1, *([1] * (x1.dim() - 3)))
    if "bias" in r.weights:
        y = torch.addcmul(probes[r.weights["bias"]].reshape(shape), x1, r.scale)
    else:
        y = x1 * r.scale
    if "weight" in r.weights:
        assert r.x_hat is not None
        y.addcmul_(r.x_hat.unsqueeze(0), probes[r.weights["weight"]].reshape(shape))
    return y


def stacked(x1: torch.Tensor) -> torch.Tensor:
    """``(k, n, ...)`` as one batch ``(k * n, ...)``."""
    return x1.reshape(-1, *x1.shape[2:])


def input_tangent(r: Record, x1: torch.Tensor) -> torch.Tensor:
    """``W x1``: the layer's Jacobian with respect to its input applied to ``(k, n, ...)``."""
    m, p, k = r.layer.module, r.p, x1.shape[0]
    if isinstance(m, nn.Linear):
        return F.linear(x1, p["weight"])
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        y = conv(stacked(x1), p["weight"], None, m.stride, m.padding, m.dilation)
        return y.reshape(k, -1, *y.shape[1:])
    assert r.scale is not None
    return x1 * r.scale


def weight_tangent(r: Record, parts: Tensors, k: int) -> torch.Tensor:
    """``V x0 + dot b``: the tangent ``(k, n, ...)`` from the layer's own parameters.

    ``parts`` holds the probes' parts ``(k, *shape)`` of the layer's probed parameters.
    """
    m, x0 = r.layer.module, r.x0
    y: torch.Tensor | None = None
    if isinstance(m, nn.Linear):
        if "weight" in parts:
            V = parts["weight"]  # (k, out, in)
            y = F.linear(x0, V.reshape(-1, V.shape[-1]))  # (n, ..., k * out)
            y = y.unflatten(-1, (k, V.shape[1])).movedim(-2, 0)
        if "bias" in parts:
            b = parts["bias"].reshape(k, *([1] * (x0.dim() - 1)), -1)
            y = b.expand(k, *x0.shape[:-1], b.shape[-1]) if y is None else y + b
        assert y is not None
        return y
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        if "weight" in parts:
            V = parts["weight"]  # (k, out, in, *kernel)
            if r.patches is not None:
                y = torch.matmul(V.reshape(k * V.shape[1], -1), r.patches)  # (n, k out, L)
                y = y.reshape(x0.shape[0], k * V.shape[1], *r.y0.shape[2:])
            else:
                y = conv(x0, V.reshape(-1, *V.shape[2:]), None, m.stride, m.padding, m.dilation)
            if "bias" in parts:  # in place, in the (n, k out, ...) layout
                y.add_(parts["bias"].reshape(1, -1, *([1] * (x0.dim() - 2))))
            return y.unflatten(1, (k, V.shape[1])).transpose(0, 1)  # (k, n, out, *spatial)
        assert "bias" in parts
        b = parts["bias"].reshape(k, 1, -1, *([1] * (x0.dim() - 2)))
        spatial = r.y0.shape[2:] if r.y0 is not None else x0.shape[2:]
        return b.expand(k, x0.shape[0], r.p["weight"].shape[0], *spatial)
    # batch norm: gamma x_hat + beta, per channel
    shape = (k, 1, -1, *([1] * (x0.dim() - 2)))
    if "weight" in parts:
        assert r.x_hat is not None
        y = r.x_hat.unsqueeze(0) * parts["weight"].reshape(shape)
    if "bias" in parts:
        b = parts["bias"].reshape(shape)
        y = b.expand(k, *x0.shape) if y is None else y.add_(b)
    assert y is not None
    return y.contiguous()


def module_tangent(r: Record, x1: torch.Tensor) -> torch.Tensor:
    """The tangent ``m'(x0) x1`` of a parameter-free module, for ``(k, n, ...)``."""
    m, k = r.layer.module, x1.shape[0]
    if r.d1 is not None:
        return x1 * r.d1
    if r.index is not None:
        return pick(x1, r.index, r.pool_dims)
    if isinstance(m, _LINEAR):
        y = m(stacked(x1))
        return y.reshape(k, -1, *y.shape[1:])
    if isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
        y = F.pad(stacked(x1), m.padding)  # the tangent of a constant is zero
        return y.reshape(k, -1, *y.shape[1:])
    if isinstance(m, nn.Flatten) and m.start_dim not in (0, -x1.dim() + 1):
        start = m.start_dim if m.start_dim < 0 else m.start_dim + 1
        end = m.end_dim if m.end_dim < 0 else m.end_dim + 1
        return x1.flatten(start, end)
    x0 = r.x0
    return vmap(lambda t: jvp(m, (x0,), (t,))[1])(x1)


def layer_gradients(
    records: list[Record],
    runs: list[tuple[Record, list[Record], Record]],
    value: torch.Tensor,
    scale: float = 1.0,
) -> None:
    """Set ``r.g`` of every layer with a second-order source (:func:`needs_gradient`).

    ``r.g`` is ``scale`` times the gradient of ``value`` at the layer's output, from one backward
    pass to the activations. Layers inside a run of :func:`gather_early` get theirs in the pooled
    positions, from the pool's gradient (:func:`gathered_gradients`).
    """
    inside = {id(r) for _, mids, _ in runs for r in mids}
    wanted = [r for r in records if needs_gradient(r) and id(r) not in inside]
    wanted += [pool for _, mids, pool in runs if any(needs_gradient(r) for r in mids)]
    if wanted:
        grads = torch.autograd.grad(value, [r.y0 for r in wanted])
        for r, g in zip(wanted, grads, strict=True):
            r.g = _kept_gradient(r, g * scale if scale != 1.0 else g)
    for _, mids, pool in runs:
        gathered_gradients(mids, pool)


def _convolution(r: Record) -> bool:
    return isinstance(r.layer.module, (nn.Conv1d, nn.Conv2d))


@contextmanager
def widened_masks(records: list[Record], dtype: torch.dtype) -> Iterator[None]:
    """ReLU's bool masks ``d1`` as ``dtype`` while a batch's columns run.

    The records keep a bool mask (a quarter of float32's memory, e.g. while ``cache="forward"``
    keeps them), but multiplying by a bool tensor is about three times slower than by one of
    the other factor's dtype (0.94 against 0.32 ms for 10^6 float32 numbers, 2 threads), and
    every column multiplies by each mask twice: the masks are converted once per batch.
    """
    bools = [(r, r.d1) for r in records if r.d1 is not None and r.d1.dtype == torch.bool]
    for r, d1 in bools:
        r.d1 = d1.to(dtype)
    try:
        yield
    finally:
        for r, d1 in bools:
            r.d1 = d1


def chunk_columns(records: list[Record], out: torch.Tensor, k: int, chunk_bytes: int) -> int:
    """Columns per chunk: ``chunk x`` the largest activation (or output) within ``chunk_bytes``."""
    sizes = [r.x0.numel() for r in records] + [r.y0.numel() for r in records if r.y0 is not None]
    largest = max([*sizes, out.numel()]) * out.element_size()
    return max(1, min(k, chunk_bytes // max(1, largest)))


def forward_tangents(
    records: list[Record],
    cols: Tensors,
    k: int,
    visit: Callable[[Record, torch.Tensor | None], None] | None = None,
) -> torch.Tensor | None:
    """The first-order tangent ``(k, n, ...)`` of the output for the columns ``cols``.

    ``visit(r, x1)`` is called with each layer's record and the tangent of its input (``None``
    up to the first probed layer) before the layer is applied.
    """
    x1: torch.Tensor | None = None
    late_bias: torch.Tensor | None = None
    for r in records:
        if visit is not None:
            visit(r, x1)
        if r.layer.has_params and x1 is not None and r.scale is not None and r.weights:
            x1 = batch_norm_tangent(r, x1, cols)  # batch norm with probed parameters, fused
        elif r.layer.has_params:
            y1 = None if x1 is None else input_tangent(r, x1)
            if r.weights:
                parts = {s: cols[q] for s, q in r.weights.items()}
                if r.gather is not None and "weight" in parts and _convolution(r):
                    late_bias = parts.pop("bias", None)  # added at the pooled positions only
                t = weight_tangent(r, parts, k)
                y1 = t if y1 is None else y1.add_(t)
            x1 = y1
        elif x1 is not None and not r.absorbed:
            x1 = module_tangent(r, x1)
        if r.gather is not None and x1 is not None:
            x1 = pick(x1, r.gather.index, r.gather.pool_dims)
            if late_bias is not None:  # (k, C) on (k, n, C, *pooled)
                x1.add_(late_bias.reshape(k, 1, -1, *([1] * (x1.dim() - 3))))
                late_bias = None
        elif x1 is not None:
            x1 = x1.contiguous()  # (a weight tangent alone may be a transposed view)
    return x1
