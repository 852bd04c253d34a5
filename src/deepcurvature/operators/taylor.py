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
tangent, ``<V, g_l x1^T>`` for the source; the first layer one) against about six for a
Hessian-vector product (two for the tangent, four for the tangent's backward pass). The tangents
come from :mod:`.chain_tangents` (max pooling taken before the position-wise layers, narrow
convolutions as matrix products), probes in chunks whose largest tangent stays within
``TANGENT_CHUNK_BYTES``. Exact, like a Hessian-vector product (tested against ``z^T (H z)`` and
``torch.func.hessian``).
"""

from __future__ import annotations

import torch
from torch import nn

from .batches import Batch
from .chain import Layer, conv_backward
from .chain_forward import Record, record_forward
from .chain_tangents import (
    TANGENT_CHUNK_BYTES,
    chunk_columns,
    forward_tangents,
    gather_early,
    layer_gradients,
    widened_masks,
)
from .losses import OutputLoss

__all__ = ["taylor_quadratic_forms"]

Tensors = dict[str, torch.Tensor]


def taylor_quadratic_forms(
    layers: list[Layer],
    tensors: Tensors,
    probes: Tensors,
    batch: Batch,
    objective: OutputLoss,
    chunk_bytes: int = TANGENT_CHUNK_BYTES,
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
    records, output = record_forward(layers, tensors, probes, batch.inputs)
    value = objective(output, batch.targets)
    layer_gradients(records, gather_early(records), value)
    out = output.detach()
    chunk = chunk_columns(records, out, k, chunk_bytes)
    forms = torch.zeros(k, dtype=torch.float64, device=out.device)
    with widened_masks(records, out.dtype):
        for a in range(0, k, chunk):
            b = min(k, a + chunk)
            part = {name: t[a:b] for name, t in probes.items()}
            forms[a:b] = _chunk_forms(records, part, b - a, out, batch, objective)
    return forms * batch.n, value.detach()


def _chunk_forms(
    records: list[Record],
    probes: Tensors,
    k: int,
    out: torch.Tensor,
    batch: Batch,
    objective: OutputLoss,
) -> torch.Tensor:
    """``(k,)`` float64 ``z^T H_b z`` (of the batch's mean loss) for a chunk of probes."""
    forms = torch.zeros(k, dtype=torch.float64, device=out.device)

    def sources(r: Record, x1: torch.Tensor | None) -> None:
        """Add the layer's second-order source, from the tangent ``x1`` of its input."""
        if x1 is None or r.g is None:
            return
        if r.layer.has_params:
            forms.add_(_bilinear_source(r, x1, probes), alpha=2.0)
        elif r.d2 is not None and not r.absorbed:
            # (g kept times s'': Record.g)
            forms.add_((r.g.unsqueeze(0) * x1 * x1).flatten(1).sum(1).double())

    f1 = forward_tangents(records, probes, k, sources)
    if f1 is None:
        return forms
    hf = objective.hessian_product(out, batch.targets, f1)
    return forms + (f1 * hf).flatten(1).sum(1).double()


def _bilinear_source(r: Record, x1: torch.Tensor, probes: Tensors) -> torch.Tensor:
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
        forms = torch.empty(k, dtype=torch.float64, device=x1.device)
        for j in range(k):
            dw = conv_backward(m, g, x1[j], V[j], input_grad=False)[1]
            forms[j] = torch.vdot(dw.reshape(-1), V[j].reshape(-1)).double()
        return forms
    # batch norm: <g, gamma_dot * scale * x1> per channel (g kept times scale: Record.g)
    dims = [1, *range(3, g.dim() + 1)]  # the sample and spatial dimensions of (k, n, C, ...)
    per_channel = (g.unsqueeze(0) * x1).sum(dims)  # (k, C)
    return (per_channel * V).sum(1).double()
