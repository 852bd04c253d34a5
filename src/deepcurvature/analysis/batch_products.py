"""The loss, gradient and curvature products ``H_b V`` of one mini-batch, in one pass."""

from __future__ import annotations

from typing import Any

import torch
from torch.func import grad, jvp, vjp, vmap
from torch.utils._pytree import tree_map

from ..operators.base import CurvatureOperator
from ..operators.batches import Batch
from ..operators.missing_derivatives import lacks_forward_mode

Tensors = dict[str, torch.Tensor]


def _detach(out: Any) -> Any:
    """``out`` detached: a tensor, or every tensor of a dict / ``ModelOutput`` output."""
    if isinstance(out, torch.Tensor):
        return out.detach()
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, out)


def _is_classification(out: torch.Tensor | None, y: torch.Tensor) -> bool:
    if out is None:
        return False
    return (
        out.ndim >= 2
        and not y.is_floating_point()
        and tuple(y.shape) == tuple(out.shape[:1]) + tuple(out.shape[2:])
    )


class _BatchEvaluator:
    """Loss, gradient ``(P,)`` and curvature block ``H_b V`` ``(P, k)`` of one batch's mean loss."""

    def __init__(self, op: CurvatureOperator, matrix: str, V: torch.Tensor) -> None:
        self.op, self.matrix = op, matrix
        self.state, self.fixed = op.functional_state()
        self.tangents = op.layout.columns_to_dict(V)
        self.k = V.shape[1]
        self.reverse = False  # the Hessian by reverse-over-reverse (see _hessian)

    def __call__(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        if self.matrix == "hessian":
            g, hv, value, out = self._hessian(batch)
        else:
            g, hv, value, out = self._ggn(batch)
        layout = self.op.layout
        return value, layout.flatten(g), layout.dict_to_columns(hv), out

    def _hessian(self, batch: Batch):
        """The batch's gradient and ``H_b V``: forward-over-reverse, or reverse-over-reverse.

        The built-in losses torch cannot differentiate in forward mode are written out
        (``OutputLoss.forward_ad_safe``); reverse-over-reverse where the model or a custom loss
        still has no forward-mode derivative of its gradient (e.g. ``F.huber_loss``): decided on
        the first batch, kept for the rest.
        """
        op, fixed = self.op, self.fixed

        def loss(p: Tensors):
            out = op.batch_output(p, fixed, batch)
            value = op.objective.forward_ad_safe(out, batch.targets)
            return value, (value.detach(), _detach(out))

        gradient = grad(loss, has_aux=True)
        if not self.reverse:
            try:
                return self._forward_over_reverse(gradient)
            except NotImplementedError as error:
                if not lacks_forward_mode(error):
                    raise
                self.reverse = True
        g, pullback, (value, out) = vjp(gradient, self.state, has_aux=True)
        hv = vmap(lambda v: pullback(v)[0])(self.tangents)  # H symmetric: the VJP is H v
        return g, hv, value, out

    def _forward_over_reverse(self, gradient: Any):
        def products(v: Tensors):
            g, hv, aux = jvp(gradient, (self.state,), (v,), has_aux=True)
            return g, hv, aux

        if self.k == 1:  # plain jvp: cheaper than a vmap over one tangent
            g, hv, (value, out) = products({n: t[0] for n, t in self.tangents.items()})
            return g, {n: t.unsqueeze(0) for n, t in hv.items()}, value, out
        g, hv, (value, out) = vmap(products, out_dims=(None, 0, None))(self.tangents)
        return g, hv, value, out

    def _ggn(self, batch: Batch):
        op, fixed = self.op, self.fixed
        leaves = {n: t.detach().requires_grad_() for n, t in self.state.items()}

        def forward(p: Tensors) -> torch.Tensor:
            # a tensor, or the TypeError of the GGN operator (a custom loss of a dict output)
            return op._output_tensor(p, fixed, batch)

        with torch.enable_grad():
            out, jv = vmap(lambda v: jvp(forward, (leaves,), (v,)), out_dims=(None, 0))(
                self.tangents
            )
        y, f = batch.targets, out.detach()
        with torch.no_grad():
            value = op.objective(f, y)
        W = op.objective.hessian_product(f, y, jv.detach())  # (k, n, ...)
        G = op.objective.output_gradient(f, y)  # (n, ...)
        cot = torch.cat([G.unsqueeze(0), W.to(G.dtype)])  # gradient and k GGN columns at once
        if out.requires_grad:
            grads = torch.autograd.grad(
                out, list(leaves.values()), cot, is_grads_batched=True, allow_unused=True
            )
        else:  # the output does not depend on the selected parameters
            grads = (None,) * len(leaves)
        full = {
            n: g
            if g is not None
            else torch.zeros((self.k + 1, *t.shape), dtype=t.dtype, device=t.device)
            for (n, t), g in zip(leaves.items(), grads, strict=True)
        }
        g = {n: t[0] for n, t in full.items()}
        hv = {n: t[1:] for n, t in full.items()}
        return g, hv, value, f
