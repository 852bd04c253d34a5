"""Hessian and output-space (GGN, Fisher) products of a layer chain, written out layer by layer.

For a chain of layers (:func:`~.chain.chain_layers`) the product ``C v`` of one batch is the
tangent of a backward pass along ``v`` (Pearlmutter's R-operator, written per layer instead of
differentiating autograd's backward graph):

1. the first-order tangents ``x1`` of every layer's input (:mod:`.chain_tangents`);
2. at the output, ``dg_out = W(f, f1)``: ``H_out f1`` for the Hessian and the GGN, the Fisher's
   weights for the Fisher (``_output_weights`` of the operator);
3. backwards through every layer ``y = layer(x; w)`` with cotangent ``g_y`` (the gradient at
   its output) and its tangent ``dg_y``, by the per-layer rules of :mod:`.chain_backward`
   (e.g. ``dg_x = W^T dg_y + V^T g_y`` and ``dg_W = dg_y x0^T + g_y x1^T`` for a linear layer).

The terms with ``g_y`` are the Hessian's residual (section 3 of the paper); without them the
recursion is ``J^T W J v``, the GGN or Fisher product. ``dg_W`` of every layer is the product's
part for that layer's weight. Max pooling after position-wise layers is taken first (as in
:mod:`.chain_tangents`), so batch norm and activations there work on the pooled positions only, and
convolutions with short patches (the first layer of an image network) use matrix products with
the unfolded input. Exact, like autograd's products (tested against them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .batches import Batch
from .chain import Layer, chain_layers
from .chain_backward import (
    input_cotangent,
    joint_conv_backward,
    module_cotangent,
    parameter_products,
    residual_weight,
    spread_pooled,
)
from .chain_forward import MAX_POOL_MODULES, Record, record_forward
from .chain_tangents import (
    TANGENT_CHUNK_BYTES,
    chunk_columns,
    forward_tangents,
    gather_early,
    layer_gradients,
    widened_masks,
)
from .losses import OutputLoss
from .memory import available_memory, held_bytes

if TYPE_CHECKING:
    from .base import CurvatureOperator
    from .products import Block

__all__ = [
    "CONVOLUTION_MIN_COLUMNS",
    "ENABLED",
    "HESSIAN_MIN_COLUMNS",
    "OUTPUT_SPACE_MIN_COLUMNS",
    "chain_of",
    "chain_products",
    "min_columns",
    "operator_chain_products",
]

Tensors = dict[str, torch.Tensor]
OutputWeights = Callable[[torch.Tensor, torch.Tensor, Batch], tuple[torch.Tensor, torch.Tensor]]


def chain_products(
    layers: list[Layer],
    tensors: Tensors,
    blocks: list[Tensors],
    batch: Batch,
    objective: OutputLoss,
    output_weights: OutputWeights,
    second_order: bool,
    chunk_bytes: int = TANGENT_CHUNK_BYTES,
    prepared: Prepared | None = None,
) -> tuple[list[Tensors], torch.Tensor]:
    """The products ``n_b C_b V`` of every block of columns on one batch, and its loss.

    Args:
        layers: the chain.
        tensors: every parameter and buffer by qualified name.
        blocks: per block ``{name: (k, *shape)}``, the columns' parts of the selected parameters.
        batch: one batch (inputs a tensor).
        objective: the loss (its gradients at the layers give the Hessian's residual terms).
        output_weights: ``(f, f1 (k, n, ...), batch) -> (W, loss)`` with ``W = n_b H_out f1``
            (or the Fisher's weights), as the operators' ``_output_weights``.
        second_order: add the Hessian's residual terms (the Hessian) or not (GGN, Fisher).
        chunk_bytes: bound of a chunk's largest tangent (columns are taken in chunks).
        prepared: the batch's forward pass from :func:`prepare_forward` (``None``: run it).

    Returns:
        Per block ``{name: (k, *shape)}`` (the names of ``blocks``), and the batch's mean loss.
    """
    if prepared is None:
        prepared = prepare_forward(layers, tensors, blocks[0], batch, objective, second_order)
    records, out, value = prepared.records, prepared.output, prepared.value
    results = []
    spread: dict[int, torch.Tensor] = {}  # the batch's zeros of spread_pooled, by pool
    with widened_masks(records, out.dtype):
        for block in blocks:
            k = next(iter(block.values())).shape[0]
            chunk = chunk_columns(records, out, k, chunk_bytes)
            parts: dict[str, list[torch.Tensor]] = {}
            for a in range(0, k, chunk):
                b = min(k, a + chunk)
                cols = {name: t[a:b] for name, t in block.items()}
                got, value_w = _chunk_products(
                    records, cols, b - a, out, batch, output_weights, spread
                )
                value = value_w if value is None else value
                for name, t in got.items():
                    parts.setdefault(name, []).append(t)
            results.append(
                {name: torch.cat(ts) if len(ts) > 1 else ts[0] for name, ts in parts.items()}
            )
    assert value is not None
    return results, value.detach()


@dataclass
class Prepared:
    """A batch's forward pass (and the Hessian's backward pass to the activations)."""

    records: list[Record]
    output: torch.Tensor  # the network's output (detached)
    value: torch.Tensor | None  # the batch's mean loss (the Hessian's; None for GGN and Fisher)


def prepare_forward(
    layers: list[Layer],
    tensors: Tensors,
    probes: Tensors,
    batch: Batch,
    objective: OutputLoss,
    second_order: bool,
) -> Prepared:
    """What every column of a batch shares: its recorded forward pass.

    For the Hessian (``second_order``) also the gradients at the layers' outputs. The graph
    is gone afterwards (:func:`_slim`), so the result can be kept between products.
    """
    records, output = record_forward(layers, tensors, probes, batch.inputs, graph=second_order)
    value = None
    if second_order:
        value = objective(output, batch.targets)
        layer_gradients(records, gather_early(records), value, scale=batch.n)
        value = value.detach()
    else:
        gather_early(records)
    _slim(records)
    return Prepared(records, output.detach(), value)


def _slim(records: list[Record]) -> None:
    """Drop what the columns never read once the forward (and gradient) pass is done.

    The layers' outputs ``y0`` (the columns read only their shapes) and the inputs of
    elementwise activations and of max pools taken first (they read ``d1``, ``d2`` and the
    positions) become shape-only views of one element: with the graph gone, their storage is
    freed unless another record holds it (e.g. a convolution's output before batch norm; on
    VGG-16 a third of the recorded pass).
    """
    for r in records:
        if r.y0 is not None:
            r.y0 = _shape_only(r.y0)
        if r.d1 is not None or r.absorbed:
            r.x0 = _shape_only(r.x0)


def _shape_only(t: torch.Tensor) -> torch.Tensor:
    """A tensor of ``t``'s shape, dtype and device that holds one element (no graph)."""
    return t.detach().new_zeros(()).expand(t.shape)


def _chunk_products(
    records: list[Record],
    cols: Tensors,
    k: int,
    out: torch.Tensor,
    batch: Batch,
    output_weights: OutputWeights,
    spread: dict[int, torch.Tensor],
) -> tuple[Tensors, torch.Tensor]:
    """``{name: (k, *shape)}`` of one chunk of columns, and the batch loss.

    ``spread``: the batch's zeros of :func:`spread_pooled`, kept between its chunks.
    """
    # The Hessian's residual needs each layer's input tangent x1 where the layer has a gradient
    # g: its weight term g x1^T is formed as soon as x1 is (parameters' size), so x1 is not
    # kept for the backward; only smooth activations keep theirs (s''(x0) x1 g).
    inputs: list[torch.Tensor | None] = []
    residuals: list[torch.Tensor | None] = []

    def visit(r: Record, x1: torch.Tensor | None) -> None:
        keep = x1 is not None and r.g is not None
        inputs.append(x1 if keep and r.d2 is not None else None)
        residuals.append(residual_weight(r, x1) if keep and r.layer.has_params else None)

    f1 = forward_tangents(records, cols, k, visit)
    assert f1 is not None
    dg, value = output_weights(out, f1, batch)  # (k, n, ...), n_b-scaled
    products: Tensors = {}
    for i in range(len(records) - 1, -1, -1):  # back to the first probed layer
        r, x1 = records[i], inputs[i]
        pooled = None
        if r.gather is not None:  # the pooled positions back to the full output
            pooled = dg
            dg = spread_pooled(dg, r.gather, r.y0, spread)
        if r.layer.has_params:
            need_input = i > 0 and r.tangent_in
            joint = joint_conv_backward(r, dg) if need_input else None
            parts = parameter_products(r, dg, residuals[i], joint, pooled)
            for short, grad in parts.items():
                products[r.weights[short]] = grad
            if need_input:
                dg = input_cotangent(r, dg, cols, joint)
        elif not r.absorbed:
            dg = module_cotangent(r, dg, x1)
        if not r.tangent_in:
            break
    return products, value


#: switch for the chain route of the products (tests and benchmarks compare it with autograd's)
ENABLED = True
#: the Hessian takes the chain route for passes of at least this many columns (chains without a
#: convolution): on the MLP of ``benchmarks/hvp.py`` 1.93 against 2.11 gradients per column for
#: autograd's reverse-over-reverse at 4 columns, but 5.9 against 3.5 at one column, where the
#: route's per-batch Python work outweighs its millisecond batches
HESSIAN_MIN_COLUMNS = 4
#: the GGN and Fisher take it for passes of at least this many columns (chains without a
#: convolution): on that MLP 1.46 against 1.67 at 4 columns, 4.5 against 3.6 at one
OUTPUT_SPACE_MIN_COLUMNS = 4
#: chains with a convolution take it from this many columns (the Hessian always; the GGN and
#: Fisher where the chain has a max pool): on the CNN of ``benchmarks/hvp.py`` one GGN column
#: cost 1.26-1.31 gradients against 1.42 by autograd, one Hessian column 1.77-1.94 against
#: 1.99-2.02 (the convolutions outweigh the per-batch work)
CONVOLUTION_MIN_COLUMNS = 1
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d)


def min_columns(layers: list[Layer], second_order: bool) -> int:
    """The fewest columns per pass for which the chain ``layers`` takes the chain route.

    :data:`CONVOLUTION_MIN_COLUMNS` on chains with a convolution, but for the GGN and Fisher only
    when the chain also has a max pool (taken before batch norm and the activations, which then
    work on the pooled positions: where the route gains on these products). Otherwise
    :data:`HESSIAN_MIN_COLUMNS` for the Hessian (``second_order``) and
    :data:`OUTPUT_SPACE_MIN_COLUMNS` for the GGN and Fisher. On the registry's All-CNN (strided
    convolutions, no max pool; 256 images, 2026-12-07, interleaved) one GGN column cost 1.75
    gradients by the chain route against 1.60 by autograd's (6 repeats), 4 columns 1.52
    against 1.62 per column (4 repeats).
    """
    if any(isinstance(layer.module, _CONVOLUTIONS) for layer in layers):
        if second_order or any(isinstance(layer.module, MAX_POOL_MODULES) for layer in layers):
            return CONVOLUTION_MIN_COLUMNS
        return OUTPUT_SPACE_MIN_COLUMNS
    return HESSIAN_MIN_COLUMNS if second_order else OUTPUT_SPACE_MIN_COLUMNS


def chain_of(op: CurvatureOperator) -> list[Layer]:
    """The operator's model as a chain, or ``[]`` if it is not one.

    Decided once, on the model as given: during a pass the evaluation context swaps some
    ``forward`` methods (batch-norm folding), which :func:`~.chain.chain_layers` refuses.
    """
    chain = op.__dict__.get("_chain_layers")
    if chain is None:
        chain = chain_layers(op.model, op.bn_mode) or []
        op.__dict__["_chain_layers"] = chain
    return chain


def operator_chain_products(
    op: CurvatureOperator,
    blocks: list[Block],
    fixed: Tensors,
    batch: Batch,
    output_weights: OutputWeights,
    second_order: bool,
) -> tuple[list[list[torch.Tensor | None]], torch.Tensor] | None:
    """:func:`chain_products` in the operators' per-batch format (see ``_batch_products``).

    ``None`` when the operator's ``product_route`` is not ``"chain"`` (not a chain, ``compile``,
    the Hessian's forward engine, :data:`ENABLED` off), the batch's inputs are not a tensor,
    or the pass has fewer columns than :data:`CONVOLUTION_MIN_COLUMNS` (chains with a
    convolution), :data:`HESSIAN_MIN_COLUMNS` (``second_order``) or
    :data:`OUTPUT_SPACE_MIN_COLUMNS`.
    """
    if op.product_route != "chain" or not isinstance(batch.inputs, torch.Tensor):
        return None
    layers = chain_of(op)
    if sum(b.k for b in blocks) < min_columns(layers, second_order):
        return None
    tensors = op._tensors(blocks[0].state, fixed)
    prepared = None
    if op.cache == "forward":
        prepared = _kept_forward(op, layers, tensors, blocks[0], fixed, batch, second_order)
    results, value = chain_products(
        layers,
        tensors,
        [b.tangents for b in blocks],
        batch,
        op.objective,
        output_weights,
        second_order,
        prepared=prepared,
    )
    names = op.layout.names
    return [[r.get(n) for n in names] for r in results], value


def _kept_forward(
    op: CurvatureOperator,
    layers: list[Layer],
    tensors: Tensors,
    block: Block,
    fixed: Tensors,
    batch: Batch,
    second_order: bool,
) -> Prepared:
    """The batch's :class:`Prepared` forward pass, kept on the operator (``cache="forward"``).

    Valid while the batch (the operator keeps its batches with this cache) and the parameters
    (the same copies of ``ModelState`` while no parameter or buffer changed) are the same:
    the entry holds both and is compared by identity, so neither can be replaced unnoticed.
    """
    kept: dict[int, tuple[Batch, Tensors, Tensors, Prepared]] = op.__dict__.setdefault(
        "_kept_forwards", {}
    )
    entry = kept.get(batch.index)
    if entry is not None and entry[0] is batch and entry[1] is block.state and entry[2] is fixed:
        return entry[3]
    prepared = prepare_forward(layers, tensors, block.tangents, batch, op.objective, second_order)
    if batch.index not in kept:  # a new batch: will the forward passes of the rest fit?
        _check_kept_memory(op, kept, prepared, tensors)
    kept[batch.index] = (batch, block.state, fixed, prepared)
    return prepared


#: ``cache="forward"`` is refused when the forward passes still to be kept would need more than
#: this fraction of the device's available memory
KEPT_MEMORY_FRACTION = 0.8


def _check_kept_memory(
    op: CurvatureOperator, kept: dict, prepared: Prepared, tensors: Tensors
) -> None:
    """Refuse (``ValueError``, kept passes dropped) a forward cache that would not fit.

    Projected from this batch's pass (``held_bytes``, parameters excluded) times the batches
    not kept yet (all of them when the data set's length is known, else this one).
    """
    each = held_bytes(prepared, exclude=tensors.values())
    count = op.source.num_batches
    remaining = max(1, count - len(kept) - 1) if count is not None else 1
    have = available_memory(op.device)
    if have is None or each * remaining <= KEPT_MEMORY_FRACTION * have:
        return
    kept.clear()  # give back what was kept
    whole = f", {_gib(each * count)} for the {count} batches" if count is not None else ""
    raise ValueError(
        f"keeping each batch's forward pass (cache='forward') needs about {_gib(each)} per "
        f"batch{whole}, but {_gib(have)} of {op.device.type} memory is available: keep the "
        "batches only (cache=True) or nothing (cache=False), or use fewer samples"
    )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
