"""Quadratic forms ``z^T H z`` of the Hessian by second-order Taylor mode through a layer chain.

Hutchinson's estimator (equation 23 of the paper) needs the numbers ``z^T H z`` only, not the
products ``H z``. Along the line ``theta + t z`` the loss of a batch is ``L(f(theta + t z))``,
and its second derivative at ``t = 0`` is

    z^T H z = f1^T H_out f1 + g_out^T f2,

with ``f1 = J z`` the first-order tangent of the output, ``f2`` its second-order one, ``H_out`` and
``g_out`` the Hessian and gradient of the loss with respect to the output. In a chain of layers
``y = layer(x; w)``, ``f2`` has a source in every layer that is not linear in ``(x, w)`` jointly:

* a layer with parameters (linear, convolution, batch norm with running statistics) is bilinear
  in its input and its weight: ``y2 = W x2 + 2 V x1`` (``V`` the weight's part of ``z``, ``x1``
  the input's first-order tangent; the bias adds no second-order term);
* a smooth elementwise activation ``s``: ``y2 = s'(x) x2 + s''(x) x1^2``;
* a piecewise-linear module (ReLU-type, pooling, reshaping): ``y2 = m'(x) x2`` almost everywhere.

``f2`` is linear in these sources, so instead of carrying it forward,
``g_out^T f2 = sum_l <g_l, source_l>`` with ``g_l = dL/dy_l`` the gradient at the layer's
output, which one backward pass to the activations gives for every probe at once:

    z^T H z = f1^T H_out f1 + sum_{layers with weights} 2 <g_l, V_l x1_l>
              + sum_{smooth activations} <g_l, s''(x_l) x1_l^2>.

Per probe and layer this costs three products of the layer's size (``W x1`` and ``V x0`` for the
tangent, ``V^T g_l`` for the source; the first layer one) against about six for a Hessian-vector
product (two for the tangent, four for the tangent's backward pass); the probes of a chunk are
evaluated together (``(k * n, ...)`` batches and ``k`` times wider convolutions). Exact, like a
Hessian-vector product (tested against ``z^T (H z)`` and ``torch.func.hessian``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from .batches import Batch
from .chain import (
    SMOOTH_ELEMENTWISE_MODULES,
    Layer,
    batch_norm_scale,
    channel,
    conv_unfold,
    layer_forward,
)
from .losses import OutputLoss

__all__ = ["TAYLOR_CHUNK_BYTES", "taylor_quadratic_forms"]

Tensors = dict[str, torch.Tensor]

#: bytes of a chunk's largest tangent (``chunk x`` the largest activation): probes are taken in
#: chunks of at most this size
TAYLOR_CHUNK_BYTES = 16 * 2**20
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
class _Record:
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
    gather: _Record | None = None  # a max pooling whose positions its output tangent takes
    absorbed: bool = False  # max pooling already applied (see _gather_early)
    scale: torch.Tensor | None = None  # batch norm: gamma * rsqrt(var + eps), per channel
    x_hat: torch.Tensor | None = None  # batch norm with a probed gamma: the normalised input
    patches: torch.Tensor | None = None  # narrow convolutions: the unfolded input (n, C k, L)
    g: torch.Tensor | None = None  # the gradient of the batch loss at its output
    tangent_in: bool = True  # whether its input has a tangent (False up to the first probed layer)


def taylor_quadratic_forms(
    layers: list[Layer],
    tensors: Tensors,
    probes: Tensors,
    batch: Batch,
    objective: OutputLoss,
    chunk_bytes: int = TAYLOR_CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_b z_j^T H_b z_j`` for every probe ``j`` of one batch, and the batch's mean loss.

    Args:
        layers: the chain (:func:`~.chain.chain_layers`).
        tensors: every parameter and buffer of the model by qualified name.
        probes: ``{name: (k, *shape)}``, the probes' parts of the selected parameters.
        batch: one batch; its inputs must be a tensor.
        objective: the loss.
        chunk_bytes: bound of a chunk's largest tangent (probes are taken in chunks).

    Returns:
        ``((k,) float64, scalar)``: the quadratic forms of the batch's summed loss
        ``n_b * L_b`` (``H_b`` the Hessian of its mean loss ``L_b``) and ``L_b`` (detached).
    """
    k = next(iter(probes.values())).shape[0]
    records, output = _forward(layers, tensors, probes, batch.inputs)
    value = objective(output, batch.targets)
    runs = _gather_early(records)
    inside = {id(r) for _, mids, _ in runs for r in mids}
    wanted = [r for r in records if _needs_gradient(r) and id(r) not in inside]
    wanted += [pool for _, mids, pool in runs if any(_needs_gradient(r) for r in mids)]
    if wanted:
        grads = torch.autograd.grad(value, [r.y0 for r in wanted])
        for r, g in zip(wanted, grads, strict=True):
            r.g = g
    for _, mids, pool in runs:
        _gathered_gradients(mids, pool)
    out = output.detach()
    largest = max((r.x0.numel() for r in records), default=out.numel())
    largest = max(largest, out.numel()) * out.element_size()
    chunk = max(1, min(k, chunk_bytes // max(1, largest)))
    forms = torch.zeros(k, dtype=torch.float64, device=out.device)
    for a in range(0, k, chunk):
        b = min(k, a + chunk)
        part = {name: t[a:b] for name, t in probes.items()}
        forms[a:b] = _chunk_forms(records, part, b - a, out, batch, objective)
    return forms * batch.n, value.detach()


def _pointwise(r: _Record) -> bool:
    """Whether the layer acts position by position (batch norm, elementwise activations)."""
    if r.layer.has_params:
        return r.scale is not None
    return r.d1 is not None or isinstance(r.layer.module, _IDENTITIES)


def _gather_early(records: list[_Record]) -> list[tuple[_Record, list[_Record], _Record]]:
    """Move max pooling before the position-wise layers that precede it.

    In ``conv -> batch norm -> ReLU -> max pool`` the tangent is needed at the pooled positions
    only, and every position-wise operation commutes with taking positions: the convolution's
    output tangent is gathered at once and batch norm and the activation act on a tensor
    ``prod(kernel)`` times smaller (their per-position tensors ``x_hat``, ``s'``, ``s''`` are
    gathered once per batch). Their second-order sources ``<g, .>`` need the gradients in the
    pooled positions, which :func:`_gathered_gradients` forms from the gradient at the pool's
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
        index, dims = pool.index, pool.pool_dims
        for r in mids:
            r.x_hat = None if r.x_hat is None else _pick(r.x_hat, index, dims)
            r.d1 = None if r.d1 is None else _pick(r.d1, index, dims)
            r.d2 = None if r.d2 is None else _pick(r.d2, index, dims)
        records[i].gather = pool
        pool.absorbed = True
        runs.append((records[i], mids, pool))
    return runs


def _gathered_gradients(mids: list[_Record], pool: _Record) -> None:
    """The gradients at the outputs of the position-wise layers ``mids``, in pooled positions.

    From the gradient at the pool's output backwards: through an activation times ``s'``,
    through batch norm times its per-channel scale.
    """
    running = pool.g
    for i in range(len(mids) - 1, -1, -1):
        r = mids[i]
        if running is None:
            return
        if _needs_gradient(r):
            r.g = running
        if not any(_needs_gradient(q) for q in mids[:i]):
            return
        if r.d1 is not None:
            running = running * r.d1
        elif r.scale is not None:
            running = running * r.scale


def _pick(t: torch.Tensor, index: torch.Tensor, dims: int) -> torch.Tensor:
    """``t`` ``(..., n, C, *spatial)`` at the positions ``index`` ``(n, C, *pooled)``."""
    flat = index.flatten(-dims)
    lead = t.shape[: t.dim() - index.dim()]
    picked = t.flatten(-dims).gather(-1, flat.expand(*lead, *flat.shape))
    return picked.reshape(*lead, *index.shape)


def _needs_gradient(r: _Record) -> bool:
    """Whether the layer has a second-order source (a probed weight, or a smooth activation)."""
    if not r.tangent_in:
        return False
    if r.layer.has_params:
        return any(short != "bias" for short in r.weights)
    return r.d2 is not None


def _forward(
    layers: list[Layer], tensors: Tensors, probes: Tensors, inputs: torch.Tensor
) -> tuple[list[_Record], torch.Tensor]:
    """The batch's forward pass, recording each layer.

    The graph starts at the output of the first probed layer (no tangent reaches the layers
    before it, which run without autograd).
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError("the Taylor-mode quadratic forms need batches whose inputs are a tensor")
    records: list[_Record] = []
    started = False
    h = inputs
    with torch.enable_grad():
        for layer in layers:
            x0 = h.detach()
            if layer.has_params:
                p = layer.tensors(tensors)
                weights = {s: layer.qualified(s) for s in p if layer.qualified(s) in probes}
                record = _Record(layer, p, x0, None, weights, tangent_in=started)
                if isinstance(layer.module, _BatchNorm):
                    _batch_norm_record(record)
                elif _narrow(layer.module) and "weight" in weights:
                    record.patches = conv_unfold(layer.module, x0)
                if started:
                    h = layer_forward(layer, p, h)
                else:
                    with torch.no_grad():
                        h = layer_forward(layer, p, h)
                    if weights:
                        h.requires_grad_()
                        started = True
                record.y0 = h
                records.append(record)
                continue
            m = _out_of_place(layer.module)
            if not started:
                with torch.no_grad():
                    h = m(h)
                continue
            record = _Record(layer, {}, x0, None, {})
            if isinstance(m, _ELEMENTWISE):
                ones = torch.ones_like(x0)
                if isinstance(m, SMOOTH_ELEMENTWISE_MODULES):

                    def first(x: torch.Tensor, m: nn.Module = m, ones: torch.Tensor = ones):
                        return jvp(m, (x,), (ones,))[1]

                    record.d1, record.d2 = jvp(first, (x0,), (ones,))
                else:
                    record.d1 = jvp(m, (x0,), (ones,))[1]
            elif type(m) in _MAX_POOLS:
                record.index = _max_pool_index(m, x0)
                record.pool_dims = _MAX_POOLS[type(m)][1]
            h = m(h)
            record.y0 = h
            records.append(record)
    return records, h


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


def _batch_norm_record(r: _Record) -> None:
    """What the tangents of a batch-norm layer reuse: its per-channel scale and ``x_hat``."""
    m, p, x0 = r.layer.module, r.p, r.x0
    scale = batch_norm_scale(m, p, x0)
    if "weight" in r.weights:
        r.x_hat = (x0 - channel(p["running_mean"], x0)) * scale
    r.scale = scale * channel(p["weight"], x0) if "weight" in p else scale


def _out_of_place(m: nn.Module) -> nn.Module:
    """``m``, or a shallow copy of it that computes out of place.

    (``inplace=True`` would overwrite the recorded activations or the caller's data.)
    """
    if getattr(m, "inplace", False):
        m = copy.copy(m)
        m.inplace = False
    return m


def _max_pool_index(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The positions (within the flattened spatial dimensions) that max pooling ``m`` takes."""
    fn, _ = _MAX_POOLS[type(m)]
    if "Adaptive" in type(m).__name__:
        _, index = fn(x, m.output_size, return_indices=True)
    else:
        _, index = fn(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True)
    return index


def _chunk_forms(
    records: list[_Record],
    probes: Tensors,
    k: int,
    out: torch.Tensor,
    batch: Batch,
    objective: OutputLoss,
) -> torch.Tensor:
    """``(k,)`` float64 ``z^T H_b z`` (of the batch's mean loss) for a chunk of probes."""
    forms = torch.zeros(k, dtype=torch.float64, device=out.device)
    x1: torch.Tensor | None = None  # (k, n, ...): the first-order tangent of the current input
    for r in records:
        if r.layer.has_params and x1 is not None and r.scale is not None and r.weights:
            x1 = _batch_norm_tangent(r, x1, probes, forms)  # batch norm, fused
        elif r.layer.has_params:
            y1 = None if x1 is None else _input_tangent(r, x1)
            if r.weights:
                t = _weight_tangent(r, {s: probes[q] for s, q in r.weights.items()}, k)
                y1 = t if y1 is None else y1.add_(t)
                if x1 is not None and r.g is not None:
                    forms += 2.0 * _bilinear_source(r, x1, probes)
            x1 = y1
        elif x1 is not None and not r.absorbed:
            if r.d2 is not None and r.g is not None:
                forms += ((r.g * r.d2).unsqueeze(0) * x1 * x1).flatten(1).sum(1).double()
            x1 = _module_tangent(r, x1)
        if r.gather is not None and x1 is not None:
            x1 = _pick(x1, r.gather.index, r.gather.pool_dims)
    if x1 is None:
        return forms
    hx = objective.hessian_product(out, batch.targets, x1)
    return forms + (x1 * hx).flatten(1).sum(1).double()


def _batch_norm_tangent(
    r: _Record, x1: torch.Tensor, probes: Tensors, forms: torch.Tensor
) -> torch.Tensor:
    """``x1 * scale + dot gamma * x_hat + dot beta`` in two passes; adds the source to ``forms``."""
    k = x1.shape[0]
    shape = (k, 1, -1, *([1] * (x1.dim() - 3)))
    if "weight" in r.weights and r.g is not None:
        forms += 2.0 * _bilinear_source(r, x1, probes)
    if "bias" in r.weights:
        y = torch.addcmul(probes[r.weights["bias"]].reshape(shape), x1, r.scale)
    else:
        y = x1 * r.scale
    if "weight" in r.weights:
        assert r.x_hat is not None
        y.addcmul_(r.x_hat.unsqueeze(0), probes[r.weights["weight"]].reshape(shape))
    return y


def _stacked(x1: torch.Tensor) -> torch.Tensor:
    return x1.reshape(-1, *x1.shape[2:])


def _input_tangent(r: _Record, x1: torch.Tensor) -> torch.Tensor:
    """``W x1``: the layer's Jacobian with respect to its input applied to ``(k, n, ...)``."""
    m, p, k = r.layer.module, r.p, x1.shape[0]
    if isinstance(m, nn.Linear):
        return F.linear(x1, p["weight"])
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        y = conv(_stacked(x1), p["weight"], None, m.stride, m.padding, m.dilation)
        return y.reshape(k, -1, *y.shape[1:])
    assert r.scale is not None
    return x1 * r.scale


def _weight_tangent(r: _Record, parts: Tensors, k: int) -> torch.Tensor:
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
            y = y.unflatten(1, (k, V.shape[1])).transpose(0, 1)  # (k, n, out, *spatial)
        if "bias" in parts:
            b = parts["bias"].reshape(k, 1, -1, *([1] * (x0.dim() - 2)))
            if y is None:
                w = r.p["weight"]
                spatial = r.y0.shape[2:] if r.y0 is not None else x0.shape[2:]
                y = b.expand(k, x0.shape[0], w.shape[0], *spatial)
            else:
                y = y + b
        assert y is not None
        return y.contiguous()
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


def _bilinear_source(r: _Record, x1: torch.Tensor, probes: Tensors) -> torch.Tensor:
    """``<g, V x1>`` per probe ``(k,)`` float64: the layer's second-order source (halved)."""
    m, g, k = r.layer.module, r.g, x1.shape[0]
    assert g is not None
    if "weight" not in r.weights:
        return torch.zeros(k, dtype=torch.float64, device=x1.device)
    V = probes[r.weights["weight"]]
    if isinstance(m, nn.Linear):
        # <g, x1 V^T> = <V, g^T x1>: (out, M) @ (k, M, in)
        gm = g.reshape(-1, g.shape[-1])
        gx = torch.matmul(gm.T, x1.reshape(k, -1, x1.shape[-1]))
        return (gx * V).flatten(1).sum(1).double()
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        # <g, conv(x1_j, V_j)> = <V_j, dL/dW of conv(x1_j, W) with output gradient g>: one
        # weight gradient per probe (its input is the probe's tangent), no tensor of x1's size
        d = x1.dim() - 3
        forms = torch.empty(k, dtype=torch.float64, device=x1.device)
        for j in range(k):
            dw = torch.ops.aten.convolution_backward(
                g,
                x1[j],
                V[j],
                None,
                m.stride,
                m.padding,
                m.dilation,
                False,
                [0] * d,
                1,
                [False, True, False],
            )[1]
            forms[j] = torch.vdot(dw.reshape(-1), V[j].reshape(-1)).double()
        return forms
    # batch norm: <g, gamma_dot * scale * x1> per channel
    gs = g * batch_norm_scale(m, r.p, r.x0)
    dims = [1, *range(3, g.dim() + 1)]  # the sample and spatial dimensions of (k, n, C, ...)
    per_channel = (gs.unsqueeze(0) * x1).sum(dims)  # (k, C)
    return (per_channel * V).sum(1).double()


def _module_tangent(r: _Record, x1: torch.Tensor) -> torch.Tensor:
    """The tangent ``m'(x0) x1`` of a parameter-free module, for ``(k, n, ...)``."""
    m, k = r.layer.module, x1.shape[0]
    if r.d1 is not None:
        return x1 * r.d1
    if r.index is not None:
        return _pick(x1, r.index, r.pool_dims)
    if isinstance(m, _LINEAR):
        y = m(_stacked(x1))
        return y.reshape(k, -1, *y.shape[1:])
    if isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
        y = F.pad(_stacked(x1), m.padding)  # the tangent of a constant is zero
        return y.reshape(k, -1, *y.shape[1:])
    if isinstance(m, nn.Flatten) and m.start_dim not in (0, -x1.dim() + 1):
        start = m.start_dim if m.start_dim < 0 else m.start_dim + 1
        end = m.end_dim if m.end_dim < 0 else m.end_dim + 1
        return x1.flatten(start, end)
    x0 = r.x0
    return vmap(lambda t: jvp(m, (x0,), (t,))[1])(x1)
