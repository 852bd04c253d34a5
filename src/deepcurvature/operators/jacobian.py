"""Products with the Jacobian ``J = d f / d theta`` of the network output on one batch.

The GGN and Fisher products (paper section 5, footnote 3) are ``J^T M J V`` for an output-space
matrix ``M``: forward-mode ``J V`` (``torch.func.jvp``, ``vmap``-ed over the ``k`` tangents of a
block), then reverse-mode ``J^T W`` (``torch.autograd.grad``, batched over the ``k`` cotangents).
The forward pass is run ONCE per batch and block: the primal computation inside ``jvp`` is
recorded by autograd (the selected parameters are leaves that require grad), so the backward pass
reuses it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jvp, vmap

__all__ = ["LinearisedOutput"]

Tensors = dict[str, torch.Tensor]


class LinearisedOutput:
    """The output ``f`` of one batch, ``J V`` for a block of tangents, and ``J^T W`` on demand.

    Args:
        forward: ``forward(params) -> output`` ``(n_b, ...)``.
        leaves: parameter values ``{name: tensor}`` that require grad (autograd leaves).
        tangents: ``{name: (k, *shape)}``.
        single: ``{name: (*shape)}`` for one column (``k == 1``: no ``vmap``), else ``None``.

    Attributes:
        output: ``f``, detached, ``(n_b, ...)``.
        jv: ``J V``, detached, ``(k, n_b, ...)``.
    """

    def __init__(
        self,
        forward: Callable[[Tensors], torch.Tensor],
        leaves: Tensors,
        tangents: Tensors,
        single: Tensors | None = None,
    ) -> None:
        self._leaves = list(leaves.values())
        self.single = single is not None
        with torch.enable_grad():
            if single is not None:
                out, jv = jvp(forward, (leaves,), (single,))
                jv = jv.unsqueeze(0)
            else:
                out, jv = vmap(lambda v: jvp(forward, (leaves,), (v,)), out_dims=(None, 0))(
                    tangents
                )
        self._out = out
        self.output = out.detach()
        self.jv = jv.detach()

    def vjp(self, W: torch.Tensor) -> list[torch.Tensor | None]:
        """``J^T W`` for cotangents ``W`` ``(k, n_b, ...)``.

        Returns one tensor per leaf, ``(k, *shape)`` (``(*shape)`` for a single column), ``None``
        where the output does not depend on it.
        """
        out, self._out = self._out, None  # the graph is used once
        if not out.requires_grad:  # the output does not depend on the selected parameters
            return [None] * len(self._leaves)
        if self.single:
            return list(torch.autograd.grad(out, self._leaves, W[0], allow_unused=True))
        return list(
            torch.autograd.grad(out, self._leaves, W, allow_unused=True, is_grads_batched=True)
        )
