"""First-order tangents through a layer chain: the forward machinery of the chain routes.

A batch's forward pass through a chain (:func:`~.chain.chain_layers`) is recorded layer by layer
(:func:`record_forward`: each layer's input, batch-norm ``x_hat``, activation derivatives
``s'`` and ``s''``, max-pooling positions), and the tangents ``x1 = d x / dt`` of ``k`` columns
``v`` are pushed through it (``W x1 + V x0`` for a layer with parameters). Both chain routes use
it: the Taylor-mode quadratic forms (:mod:`.taylor`) and the products written out layer by layer
(:mod:`.chain_products`).

Two rewrites make the tangents cheap on image networks. Max pooling after position-wise layers
(batch norm, activations) is taken first (:func:`gather_early`), so those layers act on the
pooled positions only. Convolutions with short patches (``in_channels x kernel <=
NARROW_PATCH``, the first layer of an image network) take the columns' weight tangents ``V x0``
as matrix products with the unfolded input, which beats a convolution with three input
channels several times over.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from .chain import (
    SMOOTH_ELEMENTWISE_MODULES,
    Layer,
    batch_norm_scale,
    channel,
    conv_unfold,
    layer_forward,
)

__all__ = [
    "NARROW_PATCH",
    "TANGENT_CHUNK_BYTES",
    "Record",
    "batch_norm_tangent",
    "chunk_columns",
    "forward_tangents",
    "gather_early",
    "gathered_gradients",
    "input_tangent",
    "layer_gradients",
    "module_tangent",
    "needs_gradient",
    "pick",
    "record_forward",
    "stacked",
    "weight_tangent",
]

Tensors = dict[str, torch.Tensor]

#: bytes of a chunk's largest tangent (``chunk x`` the largest activation): probes are taken in
#: chunks of at most this size
TANGENT_CHUNK_BYTES = 16 * 2**20
#: convolutions with at most this many numbers per patch (``in_channels x kernel``) take the
#: probes' weight tangents as matrix products with the unfolded input
NARROW_PATCH = 64

_RELU_LIKE = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh)
_ELEMENTWISE = (*_RELU_LIKE, *SMOOTH_ELEMENTWISE_MODULES)
_MAX_POOLS = {
    nn.MaxPool1d: (F.max_pool1d, 1),
    nn.MaxPool2d: (F.max_pool2d, 2),
    nn.MaxPool3d: (F.max_pool3d, 3),
    nn.AdaptiveMaxPool1d: (F.adaptive_max_pool1d, 1),
    nn.AdaptiveMaxPool2d: (F.adaptive_max_pool2d, 2),
    nn.AdaptiveMaxPool3d: (F.adaptive_max_pool3d, 3),
}
_IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
#: elementwise modules increasing for every setting (the others are checked in ``_monotone``)
_INCREASING = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.SELU, nn.Softsign, nn.LogSigmoid, nn.Hardsigmoid)
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


@dataclass
class Record:
    """A layer of the batch's forward pass: what the probes' tangents need from it."""

    layer: Layer
    p: Tensors  # the layer's parameters and buffers ({short name: tensor})
    x0: torch.Tensor  # its input (detached)
    y0: torch.Tensor | None  # its output, in the graph when its gradient is needed
    weights: Tensors  # {short name: qualified name} of its parameters with a probe part
    d1: torch.Tensor | None = None  # elementwise activations: s'(x0)
    d2: torch.Tensor | None = None  # smooth activations: s''(x0)
    index: torch.Tensor | None = None  # max pooling: the argmax positions
    pool_dims: int = 0  # max pooling: its number of spatial dimensions
    gather: Record | None = None  # a max pooling whose positions its output tangent takes
    absorbed: bool = False  # max pooling already applied (see gather_early)
    scale: torch.Tensor | None = None  # batch norm: gamma * rsqrt(var + eps), per channel
    x_hat: torch.Tensor | None = None  # batch norm with a probed gamma: the normalised input
    patches: torch.Tensor | None = None  # narrow convolutions: the unfolded input (n, C k, L)
    g: torch.Tensor | None = None  # the gradient of the batch loss at its output
    tangent_in: bool = True  # whether its input has a tangent (False up to the first probed layer)
    pullback: Any = None  # parameter-free modules: the vector-Jacobian product at x0


def _pointwise(r: Record) -> bool:
    """Whether the layer acts position by position (batch norm, elementwise activations)."""
    if r.layer.has_params:
        return r.scale is not None
    return r.d1 is not None or isinstance(r.layer.module, _IDENTITIES)


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
        while i >= 0 and records[i].tangent_in and _pointwise(records[i]):
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
            r.g = running
        if not any(needs_gradient(q) for q in mids[:i]):
            return
        if r.d1 is not None:
            running = running * r.d1
        elif r.scale is not None:
            running = running * r.scale


def pick(t: torch.Tensor, index: torch.Tensor, dims: int) -> torch.Tensor:
    """``t`` ``(..., n, C, *spatial)`` at the positions ``index`` ``(n, C, *pooled)``."""
    flat = index.flatten(-dims)
    lead = t.shape[: t.dim() - index.dim()]
    picked = t.flatten(-dims).gather(-1, flat.expand(*lead, *flat.shape))
    return picked.reshape(*lead, *index.shape)


def needs_gradient(r: Record) -> bool:
    """Whether the layer has a second-order source (a probed weight, or a smooth activation)."""
    if not r.tangent_in:
        return False
    if r.layer.has_params:
        return any(short != "bias" for short in r.weights)
    return r.d2 is not None


def record_forward(
    layers: list[Layer],
    tensors: Tensors,
    probes: Tensors,
    inputs: torch.Tensor,
    graph: bool = True,
) -> tuple[list[Record], torch.Tensor]:
    """The batch's forward pass, recording each layer.

    The graph starts at the output of the first probed layer (no tangent reaches the layers
    before it, which run without autograd); without ``graph`` there is none. A max pooling
    after monotone position-wise layers is taken before them (:func:`_pool_first`).
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError("the chain routes need batches whose inputs are a tensor")
    records: list[Record] = []
    state = _Forward(tensors, probes, graph)
    h, i = inputs, 0
    with torch.enable_grad() if graph else torch.no_grad():
        while i < len(layers):
            record, h = state.layer(layers[i], h)
            i += 1
            if record is None:
                continue
            records.append(record)
            if state.started and not _pointwise(record):
                i, h = _pool_first(state, layers, i, record, records, h)
    return records, h


@dataclass
class _Forward:
    """The forward pass's state: the tensors, the probes, and whether the graph has started."""

    tensors: Tensors
    probes: Tensors
    graph: bool
    started: bool = False

    def layer(self, layer: Layer, h: torch.Tensor) -> tuple[Record | None, torch.Tensor]:
        """The layer's output for input ``h``, and its record (``None`` before the graph)."""
        x0 = h.detach()
        if layer.has_params:
            p = layer.tensors(self.tensors)
            weights = {s: layer.qualified(s) for s in p if layer.qualified(s) in self.probes}
            record = Record(layer, p, x0, None, weights, tangent_in=self.started)
            if _narrow(layer.module) and "weight" in weights:
                record.patches = conv_unfold(layer.module, x0)
            with torch.no_grad() if not self.started else nullcontext():
                if isinstance(layer.module, _BatchNorm):
                    h = _batch_norm_forward(record, h)
                elif record.patches is not None and not self.started:
                    h = _patch_forward(record)  # (no gradient passes through its input)
                else:
                    h = layer_forward(layer, p, h)
            if not self.started and weights:
                h.requires_grad_(self.graph)
                self.started = True
            record.y0 = h
            return record, h
        m = _out_of_place(layer.module)
        if not self.started:
            with torch.no_grad():
                return None, m(h)
        record = Record(layer, {}, x0, None, {})
        if isinstance(m, _ELEMENTWISE):
            record.d1, record.d2 = _derivatives(m, x0)
        if type(m) in _MAX_POOLS:  # the pooled values and their positions in one call
            h, record.index = _max_pool_with_index(m, h)
            record.pool_dims = _MAX_POOLS[type(m)][1]
        else:
            h = m(h)
        record.y0 = h
        return record, h


def _pool_first(
    state: _Forward,
    layers: list[Layer],
    i: int,
    producer: Record,
    records: list[Record],
    h: torch.Tensor,
) -> tuple[int, torch.Tensor]:
    """Take a max pooling ``layers[j]`` before the monotone position-wise layers ``i..j-1``.

    In ``conv -> batch norm -> ReLU -> max pool`` every layer between the convolution and the
    pool is monotone in each channel (batch norm increasing where its scale is positive,
    decreasing where it is negative), so the positions the pool takes are the maxima of the
    convolution's output times that sign: they are found there, and batch norm and the
    activation run on the pooled positions only (a tensor ``prod(kernel)`` times smaller), as
    :func:`gather_early` does for the tangents. Ties the activation makes (ReLU's zeros) pick a
    position whose derivative is zero either way. Not taken when a batch-norm scale is zero
    (every position is then a tie with a non-zero derivative for ``gamma``).

    Returns:
        The index of the next layer and its input (unchanged when not taken).
    """
    j = i
    sign: torch.Tensor | None = None
    while j < len(layers) and _monotone(layers[j]):
        layer = layers[j]
        if layer.has_params:  # batch norm: the sign of its per-channel scale
            p = layer.tensors(state.tensors)
            scale = torch.rsqrt(p["running_var"] + layer.module.eps)
            if "weight" in p:
                scale = scale * p["weight"].detach()
            s = torch.sign(scale)
            sign = s if sign is None else sign * s
        j += 1
    if j == i or j == len(layers) or type(layers[j].module) not in _MAX_POOLS:
        return i, h
    flip = None
    if sign is not None:
        if not bool((sign != 0).all()):
            return i, h
        if bool((sign < 0).any()):
            flip = channel(sign.to(h.dtype), h)
    m, dims = layers[j].module, _MAX_POOLS[type(layers[j].module)][1]
    with torch.no_grad():
        values, index = _max_pool_with_index(m, h if flip is None else h * flip)
    if h.requires_grad:  # a gather: its backward is cheaper than the pool's (7.5 against 2 ms)
        pooled = pick(h, index, dims)
    else:
        pooled = values if flip is None else values * flip
    for layer in layers[i:j]:
        record, pooled = state.layer(layer, pooled)
        assert record is not None
        records.append(record)
    pool = Record(layers[j], {}, pooled.detach(), pooled, {}, index=index, absorbed=True)
    pool.pool_dims = dims
    producer.gather = pool
    records.append(pool)
    return j + 1, pooled


def _monotone(layer: Layer) -> bool:
    """Whether a layer is position-wise and monotone in each channel (see :func:`_pool_first`)."""
    m = layer.module
    if layer.has_params:
        return isinstance(m, _BatchNorm)
    if isinstance(m, _IDENTITIES + _INCREASING):
        return True
    if isinstance(m, nn.LeakyReLU):
        return m.negative_slope >= 0
    if isinstance(m, nn.Hardtanh):  # ReLU6 included
        return m.min_val <= m.max_val
    if isinstance(m, (nn.ELU, nn.CELU)):
        return m.alpha >= 0
    if isinstance(m, nn.Softplus):
        return m.beta > 0
    return False


def _patch_forward(r: Record) -> torch.Tensor:
    """A narrow convolution's output ``W x0 + b`` as a matrix product with its patches.

    1 against 10 ms (3 to 32 channels, 3 x 3 kernels, 128 images of 32 x 32).
    """
    assert r.patches is not None
    m, W = r.layer.module, r.p["weight"]
    y = torch.matmul(W.reshape(W.shape[0], -1), r.patches)  # (n, out, L)
    if "bias" in r.p:
        y.add_(r.p["bias"].unsqueeze(-1))
    return y.reshape(r.x0.shape[0], W.shape[0], *_conv_output_shape(m, r.x0))


def _conv_output_shape(m: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """The spatial shape of convolution ``m``'s output for input ``x``."""
    return tuple(
        (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1
        for size, pad, dil, kernel, stride in zip(
            x.shape[2:], m.padding, m.dilation, m.kernel_size, m.stride, strict=True
        )
    )


def _narrow(m: nn.Module) -> bool:
    """Whether ``m`` is a convolution with short patches (``C k <= NARROW_PATCH``).

    E.g. the first layer of an image network. Its probes' tangents ``V x0`` are then matrix
    products with the unfolded input, several times faster than convolutions there (2 against
    14 ms per probe for 3 x 3 x 3 patches, 32 channels and a batch of 128 images of 32 x 32,
    after a 7 ms unfold per batch).
    """
    if not isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return False
    return m.in_channels * math.prod(m.kernel_size) <= NARROW_PATCH


def _batch_norm_forward(r: Record, h: torch.Tensor) -> torch.Tensor:
    """Batch norm's output ``gamma x_hat + beta`` in the forward pass.

    Records its per-channel scale ``gamma * rsqrt(var + eps)`` and (with a probed ``gamma``)
    ``x_hat``.
    """
    m, p, x0 = r.layer.module, r.p, r.x0
    scale = batch_norm_scale(m, p, x0)
    x_hat = (h - channel(p["running_mean"], h)) * scale
    if "weight" in r.weights:
        r.x_hat = x_hat.detach()
    r.scale = scale * channel(p["weight"], x0) if "weight" in p else scale
    if "weight" in p and "bias" in p:
        return torch.addcmul(channel(p["bias"], h), x_hat, channel(p["weight"], h))
    if "weight" in p:
        return x_hat * channel(p["weight"], h)
    return x_hat + channel(p["bias"], h) if "bias" in p else x_hat


def _derivatives(m: nn.Module, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``s'(x0)`` and ``s''(x0)`` (``None`` unless smooth) of an elementwise module.

    By forward mode with unit tangents (some second derivatives need autograd switched on).
    """
    if type(m) is nn.ReLU:
        return (x0 > 0).to(x0.dtype), None
    if type(m) is nn.LeakyReLU:
        return torch.where(x0 > 0, x0.new_ones(()), x0.new_full((), m.negative_slope)), None
    ones = torch.ones_like(x0)
    with torch.enable_grad():
        if not isinstance(m, SMOOTH_ELEMENTWISE_MODULES):
            return jvp(m, (x0,), (ones,))[1], None

        def first(x: torch.Tensor) -> torch.Tensor:
            return jvp(m, (x,), (ones,))[1]

        d1, d2 = jvp(first, (x0,), (ones,))
    return d1.detach(), d2.detach()


def _out_of_place(m: nn.Module) -> nn.Module:
    """``m``, or a shallow copy of it that computes out of place.

    (``inplace=True`` would overwrite the recorded activations or the caller's data.)
    """
    if getattr(m, "inplace", False):
        m = copy.copy(m)
        m.inplace = False
    return m


def _max_pool_with_index(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max pooling ``m`` of ``x`` and the positions (in the flattened spatial dimensions) taken.

    2-D pooling on CPU runs in the channels-last layout: 9 against 20 ms for a batch of 128 x 32
    channels of 32 x 32 and 2 x 2 windows (4 against 10 ms at 64 x 16 x 16), layout changes
    included, with the same values and positions (ties too).
    """
    fn, _ = _MAX_POOLS[type(m)]
    channels_last = x.dim() == 4 and x.device.type == "cpu"
    if channels_last:  # 2 to 3 times faster on CPU (same values and positions), see docstring
        x = x.contiguous(memory_format=torch.channels_last)
    if "Adaptive" in type(m).__name__:
        y, index = fn(x, m.output_size, return_indices=True)
    else:
        y, index = fn(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True)
    if channels_last:
        y, index = y.contiguous(), index.contiguous()
    return y, index


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
            r.g = g * scale if scale != 1.0 else g
    for _, mids, pool in runs:
        gathered_gradients(mids, pool)


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
    for r in records:
        if visit is not None:
            visit(r, x1)
        if r.layer.has_params and x1 is not None and r.scale is not None and r.weights:
            x1 = batch_norm_tangent(r, x1, cols)  # batch norm with probed parameters, fused
        elif r.layer.has_params:
            y1 = None if x1 is None else input_tangent(r, x1)
            if r.weights:
                t = weight_tangent(r, {s: cols[q] for s, q in r.weights.items()}, k)
                y1 = t if y1 is None else y1.add_(t)
            x1 = y1
        elif x1 is not None and not r.absorbed:
            x1 = module_tangent(r, x1)
        if r.gather is not None and x1 is not None:
            x1 = pick(x1, r.gather.index, r.gather.pool_dims)
        elif x1 is not None:
            x1 = x1.contiguous()  # (a weight tangent alone may be a transposed view)
    return x1
