"""The recorded forward pass of a layer chain: what the chain routes keep from it per batch.

A batch's forward pass through a chain (:func:`~.chain.chain_layers`) is run layer by layer
(:func:`record_forward`), recording each layer's input, batch norm's scale and ``x_hat``, the
activations' derivatives ``s'`` and ``s''`` and max pooling's positions (:class:`Record`). The
tangents of :mod:`.chain_tangents` and the products of :mod:`.chain_products` are computed from
these records.

Max pooling after batch norm and monotone activations is taken first (:func:`_pool_first`):
its positions are the maxima of the preceding convolution's output times the sign of batch
norm's scale, and batch norm and the activation run on the pooled positions only. Narrow
convolutions (the first layer of an image network) compute their output from their unfolded
input, which the tangents need anyway.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp
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
    "MAX_POOL_MODULES",
    "NARROW_PATCH",
    "Record",
    "pick",
    "pointwise",
    "record_forward",
]

Tensors = dict[str, torch.Tensor]

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
#: the max-pooling modules whose positions the forward pass records (and may take first)
MAX_POOL_MODULES: tuple[type[nn.Module], ...] = tuple(_MAX_POOLS)
_IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
#: elementwise modules increasing for every setting (the others are checked in ``_monotone``)
_INCREASING = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.SELU, nn.Softsign, nn.LogSigmoid, nn.Hardsigmoid)


@dataclass
class Record:
    """A layer of the batch's forward pass: what the probes' tangents need from it."""

    layer: Layer
    p: Tensors  # the layer's parameters and buffers ({short name: tensor})
    x0: torch.Tensor  # its input (detached)
    y0: torch.Tensor | None  # its output, in the graph when its gradient is needed
    weights: Tensors  # {short name: qualified name} of its parameters with a probe part
    d1: torch.Tensor | None = None  # elementwise activations: s'(x0) (ReLU: a bool mask)
    d2: torch.Tensor | None = None  # smooth activations: s''(x0)
    index: torch.Tensor | None = None  # max pooling: the argmax positions
    pool_dims: int = 0  # max pooling: its number of spatial dimensions
    gather: Record | None = None  # a max pooling whose positions its output tangent takes
    absorbed: bool = False  # max pooling already applied (see gather_early)
    scale: torch.Tensor | None = None  # batch norm: gamma * rsqrt(var + eps), per channel
    x_hat: torch.Tensor | None = None  # batch norm with a probed gamma: the normalised input
    patches: torch.Tensor | None = None  # narrow convolutions: the unfolded input (n, C k, L)
    # the gradient of the batch loss at its output (batch norm: times rsqrt(running_var + eps);
    # smooth activations: times s''(x0): the factor each of their terms takes, once per batch)
    g: torch.Tensor | None = None
    tangent_in: bool = True  # whether its input has a tangent (False up to the first probed layer)
    pullback: Any = None  # parameter-free modules: the vector-Jacobian product at x0


def pointwise(r: Record) -> bool:
    """Whether the layer acts position by position (batch norm, elementwise activations)."""
    if r.layer.has_params:
        return r.scale is not None
    return r.d1 is not None or isinstance(r.layer.module, _IDENTITIES)


def pick(t: torch.Tensor, index: torch.Tensor, dims: int) -> torch.Tensor:
    """``t`` ``(..., n, C, *spatial)`` at the positions ``index`` ``(n, C, *pooled)``."""
    flat = index.flatten(-dims)
    lead = t.shape[: t.dim() - index.dim()]
    picked = t.flatten(-dims).gather(-1, flat.expand(*lead, *flat.shape))
    return picked.reshape(*lead, *index.shape)


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
            # (only a narrow convolution asks whether a pooling taken first follows it)
            pooled_next = _narrow(layers[i].module) and _pool_run(layers, i + 1) is not None
            record, h = state.layer(layers[i], h, pooled_next)
            i += 1
            if record is None:
                continue
            records.append(record)
            if state.started and not pointwise(record):
                i, h = _pool_first(state, layers, i, record, records, h)
    return records, h


@dataclass
class _Forward:
    """The forward pass's state: the tensors, the probes, and whether the graph has started."""

    tensors: Tensors
    probes: Tensors
    graph: bool
    started: bool = False

    def layer(
        self, layer: Layer, h: torch.Tensor, pooled_next: bool = False
    ) -> tuple[Record | None, torch.Tensor]:
        """The layer's output for input ``h``, and its record (``None`` before the graph).

        ``pooled_next``: a max pooling taken first follows (:func:`_pool_first`); a narrow
        convolution then gives its output in the layout the pooling runs in.
        """
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
                    # (no gradient passes through its input)
                    h = _patch_forward(record, pooled_next and h.device.type == "cpu")
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
    (every position is then a tie with a non-zero derivative for ``gamma``). When no gradient
    is needed at the convolution's output (its input has no tangent, e.g. the first layer),
    the graph starts at the pooled values; a narrow convolution then gives its output in the
    pooling's channels-last layout (:func:`_patch_forward`), so it is never copied.

    Returns:
        The index of the next layer and its input (``h``, in the default layout, when not
        taken).
    """
    j = _pool_run(layers, i)
    if j is None:
        return i, h.contiguous()
    sign: torch.Tensor | None = None
    for layer in layers[i:j]:
        if layer.has_params:  # batch norm: the sign of its per-channel scale
            p = layer.tensors(state.tensors)
            scale = torch.rsqrt(p["running_var"] + layer.module.eps)
            if "weight" in p:
                scale = scale * p["weight"].detach()
            s = torch.sign(scale)
            sign = s if sign is None else sign * s
    flip = None
    if sign is not None:
        if not bool((sign != 0).all()):
            return i, h.contiguous()
        if bool((sign < 0).any()):
            flip = channel(sign.to(h.dtype), h)
    m, dims = layers[j].module, _MAX_POOLS[type(layers[j].module)][1]
    # the gradient at the producer's output is needed only through a tangent at its input
    # (its term g x1^T): without one the graph starts at the pooled positions
    through = h.requires_grad and producer.tangent_in
    with torch.no_grad():
        x = h if flip is None else h * flip
        values, index = _max_pool_with_index(m, x, keep_layout=True)  # (no copy of h)
    index = index.contiguous()
    if through:  # a gather, whose backward took 2 ms where the pool's took 7.5
        pooled = pick(h, index, dims)
    else:
        pooled = values if flip is None else values * flip
        pooled = pooled.contiguous().requires_grad_(h.requires_grad)
    for layer in layers[i:j]:
        record, pooled = state.layer(layer, pooled)
        assert record is not None
        records.append(record)
    pool = Record(layers[j], {}, pooled.detach(), pooled, {}, index=index, absorbed=True)
    pool.pool_dims = dims
    producer.gather = pool
    records.append(pool)
    return j + 1, pooled


def _pool_run(layers: list[Layer], i: int) -> int | None:
    """The index ``j > i`` of a max pooling after monotone position-wise ``layers[i:j]``."""
    j = i
    while j < len(layers) and _monotone(layers[j]):
        j += 1
    if j == i or j == len(layers) or type(layers[j].module) not in _MAX_POOLS:
        return None
    return j


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


def _patch_forward(r: Record, channels_last: bool = False) -> torch.Tensor:
    """A narrow convolution's output ``W x0 + b`` as a matrix product with its patches.

    1 against 10 ms (3 to 32 channels, 3 x 3 kernels, 128 images of 32 x 32).
    ``channels_last`` (2-D): the output in that layout, as the product ``patches^T W^T``
    gives it, for a max pooling that runs in it (:func:`_max_pool_with_index`): no copy of
    the output (8 ms for 128 x 32 x 32 x 32).
    """
    assert r.patches is not None
    m, W = r.layer.module, r.p["weight"]
    n, out, spatial = r.x0.shape[0], W.shape[0], _conv_output_shape(m, r.x0)
    if channels_last and len(spatial) == 2:
        y = torch.matmul(r.patches.transpose(1, 2), W.reshape(out, -1).t())  # (n, L, out)
        if "bias" in r.p:
            y.add_(r.p["bias"])
        return y.view(n, *spatial, out).permute(0, 3, 1, 2)
    y = torch.matmul(W.reshape(out, -1), r.patches)  # (n, out, L)
    if "bias" in r.p:
        y.add_(r.p["bias"].unsqueeze(-1))
    return y.reshape(n, out, *spatial)


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
        return x0 > 0, None  # a bool mask: a quarter of a float32 one (products promote it)
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


def _max_pool_with_index(
    m: nn.Module, x: torch.Tensor, keep_layout: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max pooling ``m`` of ``x`` and the positions (in the flattened spatial dimensions) taken.

    2-D pooling on CPU runs in the channels-last layout: 9 against 20 ms for a batch of 128 x 32
    channels of 32 x 32 and 2 x 2 windows (4 against 10 ms at 64 x 16 x 16), layout changes
    included, with the same values and positions (ties too). ``keep_layout``: both stay in
    the channels-last layout (no copy; the caller takes what it reads).
    """
    fn, _ = _MAX_POOLS[type(m)]
    channels_last = x.dim() == 4 and x.device.type == "cpu"
    if channels_last:  # 2 to 3 times faster on CPU (same values and positions), see docstring
        x = x.contiguous(memory_format=torch.channels_last)
    if "Adaptive" in type(m).__name__:
        y, index = fn(x, m.output_size, return_indices=True)
    else:
        y, index = fn(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True)
    if channels_last and not keep_layout:
        y, index = y.contiguous(), index.contiguous()
    return y, index
