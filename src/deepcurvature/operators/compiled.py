"""Per-batch curvature products through ``torch.compile`` (the operators' ``compile=True``).

With ``compile=True`` an operator evaluates each batch's product with one ``torch.func`` function
compiled by ``torch.compile`` (TorchInductor), instead of the eager autograd passes:

* Hessian: forward-over-reverse, ``jvp(grad(loss))``, ``vmap``-ed over the columns of a block
  (the compiled forward-over-reverse product was faster than the compiled reverse-over-reverse
  one on both networks of ``benchmarks/hvp.py``);
* GGN and Fisher: ``J V`` by ``jvp`` of the output (``vmap``-ed), the output-space weights
  ``W`` (as in the eager product), and ``J^T W`` by ``vjp``.

The products are the same numbers (float64 tests compare them with dense references to 1e-10).
The first product compiles (seconds to a minute, once per operator and block shape, with static
shapes: the last, smaller batch and every other block width compile once more; each operator
compiles its own copy of the function, see :func:`_compile`). Measured on the CPU here
(``benchmarks/hvp.py --quick --threads 1``, noisy, in gradient passes): the MLP on digits, one
HVP 2.3 against 3.75 eager (and 3.4 for a plain double backward), 16 Hessian columns 0.94
against 1.44 per column, one GGN column 2.1 against 3.8: its millisecond batches are dominated
by per-operation overhead and elementwise work that the compiled graph removes or fuses. The
CNN with batch norm: one HVP 2.28 against 2.12, SLOWER, since the eager product uses
convolution, pooling and batch-norm rules (:mod:`.lean`, folded batch norm) that the compiled
``torch.func`` graph does not. On a GPU, where small networks are bound by kernel launches,
expect a gain at least as large as on the CPU for small and medium dense networks, and little
for convolution-dominated ones (measure with ``benchmarks/hvp.py`` there). Not available for the
Monte Carlo Fisher (its targets come from a seeded generator). It stays opt-in.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from torch.func import grad, jvp, vjp, vmap

from .batches import Batch

__all__ = ["compiled_hessian_product", "compiled_linearised_product"]

Tensors = dict[str, torch.Tensor]
#: ``(out, jv, batch) -> (W, value)``: output-space weights ``(k, n_b, ...)`` and the batch loss
Weights = Callable[[torch.Tensor, torch.Tensor, Batch], tuple[torch.Tensor, torch.Tensor]]


def compiled_hessian_product(op: Any) -> Callable[..., tuple[Tensors, torch.Tensor]]:
    """``fn(state, fixed, inputs, targets, n_b, tangents, batched) -> (n_b H_b V, loss)``.

    ``tangents`` is ``{name: (k, *shape)}`` (``batched``) or ``{name: (*shape)}``; the result has
    the same layout. ``op`` is the Hessian operator (its forward pass and loss).
    """

    def product(
        state: Tensors,
        fixed: Tensors,
        inputs: Any,
        targets: torch.Tensor,
        n: int,
        tangents: Tensors,
        batched: bool,
    ) -> tuple[Tensors, torch.Tensor]:
        batch = Batch(inputs, targets, n, 0)

        def scaled_loss(p: Tensors) -> tuple[torch.Tensor, torch.Tensor]:
            value = op.objective.forward_ad_safe(op._forward(p, fixed, batch), targets)
            return value * n, value.detach()

        gradient = grad(scaled_loss, has_aux=True)

        def hvp(v: Tensors) -> tuple[Tensors, torch.Tensor]:
            _, hv, value = jvp(gradient, (state,), (v,), has_aux=True)
            return hv, value

        if batched:
            return vmap(hvp, out_dims=(0, None))(tangents)
        return hvp(tangents)

    return _compile(product)


def compiled_linearised_product(
    op: Any, weights: Weights
) -> Callable[..., tuple[Tensors, torch.Tensor]]:
    """``fn(state, fixed, inputs, targets, n_b, tangents, batched) -> (n_b J^T W, loss)``.

    ``W = weights(f, J V, batch)`` (already scaled by ``n_b``); layouts as in
    :func:`compiled_hessian_product`. For the GGN and the Fisher.
    """

    def product(
        state: Tensors,
        fixed: Tensors,
        inputs: Any,
        targets: torch.Tensor,
        n: int,
        tangents: Tensors,
        batched: bool,
    ) -> tuple[Tensors, torch.Tensor]:
        batch = Batch(inputs, targets, n, 0)

        def forward(p: Tensors) -> torch.Tensor:
            return op._output_tensor(p, fixed, batch)

        if batched:
            out, jv = vmap(lambda v: jvp(forward, (state,), (v,)), out_dims=(None, 0))(tangents)
        else:
            out, jv = jvp(forward, (state,), (tangents,))
            jv = jv.unsqueeze(0)
        W, value = weights(out, jv, batch)
        _, pullback = vjp(forward, state)
        if batched:
            return vmap(pullback)(W)[0], value
        return pullback(W[0])[0], value

    return _compile(product)


def _compile(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(fn)`` with static shapes, on a private copy of ``fn``'s code object.

    Dynamo keeps its compiled versions (at most ``torch._dynamo.config.recompile_limit``, then it
    runs eagerly) per code object; the copy gives every operator its own budget for its batch
    sizes and block widths, instead of sharing one with every other operator of the process.
    """
    own = types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )
    return torch.compile(own, dynamic=False)


def run_compiled(
    op: Any, fn: Callable[..., tuple[Tensors, torch.Tensor]], block: Any, fixed: Tensors, batch: Any
) -> tuple[list[torch.Tensor | None], torch.Tensor]:
    """One block's product on one batch through a compiled ``fn``, in flattening order."""
    batched = block.single is None
    tangents = block.tangents if batched else block.single
    result, value = fn(block.state, fixed, batch.inputs, batch.targets, batch.n, tangents, batched)
    return [result[n] for n in op.layout.names], value.detach()
